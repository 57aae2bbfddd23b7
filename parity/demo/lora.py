"""The demo LoRA: PEFT adapters on AI Toolkit's target modules, saved in AI Toolkit's key format.

Why mirror AI Toolkit: the saved files are handed to AI Toolkit's own trainer code (the genuine-
preview tool loads them with ``network.load_weights``) and to the parity harness as the LoRA of a
real run, so they must look exactly like what AI Toolkit writes for ``arch: flux_kontext``:
- targets: every ``nn.Linear`` whose qualified name contains ``transformer_blocks`` (double and
  single blocks: attention, feed-forward, norm1.linear / norm.linear, proj_mlp, the blocks'
  proj_out), nothing outside the blocks;
- keys ``transformer.<module>.lora_A.weight`` (rank x in) and ``.lora_B.weight`` (out x rank),
  no alpha keys (alpha = rank, scale 1: ``network: linear 4, linear_alpha 4`` in the run configs);
- float32 values (what AI Toolkit samples with; its own saves are float16 copies).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

RANK = 4
ALPHA = 4
ADAPTER = "zxq"


def target_modules(transformer) -> list[str]:
    """AI Toolkit's rule for Flux: the Linear layers inside transformer_blocks / single_transformer_blocks."""
    return sorted(name for name, module in transformer.named_modules()
                  if isinstance(module, torch.nn.Linear) and "transformer_blocks" in name)


def add_lora(transformer, *, seed: int, rank: int = RANK, alpha: int = ALPHA) -> list[torch.nn.Parameter]:
    """A fresh PEFT adapter (A random, B zero: the network starts as the base model); returns its parameters."""
    from peft import LoraConfig

    transformer.requires_grad_(False)
    torch.manual_seed(seed)
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=target_modules(transformer),
                                       init_lora_weights=True), adapter_name=ADAPTER)
    params = [p for n, p in transformer.named_parameters() if ".lora_" in n]
    for p in params:
        p.requires_grad_(True)
    return params


def aitk_state_dict(transformer) -> dict[str, torch.Tensor]:
    """The adapter's current values under AI Toolkit's saved key names, float32."""
    from peft.utils import get_peft_model_state_dict

    sd = get_peft_model_state_dict(transformer, adapter_name=ADAPTER)
    return {f"transformer.{k}": v.detach().float().contiguous().clone() for k, v in sorted(sd.items())}


def save_aitk_lora(path: str | Path, state: dict[str, torch.Tensor], *, step: int, name: str) -> None:
    """safetensors with the metadata fields AI Toolkit writes that a reader may look at."""
    from safetensors.torch import save_file

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={
        "format": "pt",
        "ss_base_model_version": "flux.1_kontext",
        "name": name,
        "training_info": json.dumps({"step": step, "epoch": 0}),
        "note": (f"float32 LoRA values at training step {step} of the kontext-parity demo (parity.demo, PEFT, "
                 f"rank {RANK}, alpha {ALPHA}), in AI Toolkit's saved key format"),
    })
