"""LoRA application modes: four ways to add the same low-rank delta, four results.

- dynamic: PEFT adapter layers, delta added at run time in the base dtype, scale = adapter weight
  (reference server, diffusers ``set_adapters``).
- fused: PEFT merges delta into the weights (``fuse_lora``); the engine restores the exact base after.
- branch: AI Toolkit's unmerged forward (quantized bases, or a batch with mixed multipliers).
- merged_fp32: AI Toolkit's merge into an unquantized base, written back in the base dtype.

The functions below are the numerics, operation for operation as AI Toolkit runs them
(ostris/ai-toolkit 27a03a9, ``toolkit/network_mixins.py``, ``toolkit/lora_special.py``);
``parity.engine.lora`` applies them to modules. ``alpha_scale`` is AI Toolkit's ``self.scale``
(alpha / rank, 1.0 when the file has no alpha keys, as AI Toolkit's own PEFT-format files);
``scale`` is the network multiplier.
"""
from __future__ import annotations

import torch

from .registry import describe_family, register

describe_family("lora_mode", "how a LoRA's delta is combined with the base weights")


@register("lora_mode", "dynamic")
def lora_dynamic(*_):
    """PEFT adapter at run time, in the base dtype (handled by PEFT's layers)."""
    raise NotImplementedError("dynamic LoRA is applied through PEFT adapter weights")


@register("lora_mode", "fused")
def lora_fused(*_):
    """PEFT fuse_lora into the base weights (handled by PEFT)."""
    raise NotImplementedError("fused LoRA is applied through PEFT fuse_lora")


@register("lora_mode", "merged_fp32")
def lora_merged_fp32(weight: torch.Tensor, down: torch.Tensor, up: torch.Tensor, scale: float,
                     alpha_scale: float = 1.0) -> torch.Tensor:
    """AI Toolkit's merge_in: ``W.float() + m * (B @ A) * (alpha/rank)`` in float32, back to W's dtype.

    network_mixins.py ToolkitModuleMixin.merge_in: up/down cloned as float32, the weight read as
    float32, ``weight + multiplier * (up_weight @ down_weight) * scale`` (left to right), written back
    with ``.to(orig_dtype)`` through ``load_state_dict``. A LoRA whose up or down is all zero is
    skipped (the weight is returned untouched).
    """
    down32, up32 = down.float(), up.float()
    if not up32.any() or not down32.any():
        return weight
    merged = weight.float() + float(scale) * (up32 @ down32) * float(alpha_scale)
    return merged.to(weight.dtype)


def lora_unmerge_aitk(weight: torch.Tensor, down: torch.Tensor, up: torch.Tensor, scale: float,
                      alpha_scale: float = 1.0) -> torch.Tensor:
    """AI Toolkit's merge_out: merge_in with ``-abs(multiplier)``; NOT an exact inverse in bf16.

    Each merge/unmerge cycle rounds to the base dtype twice, so the base drifts (AI Toolkit keeps
    sampling from the drifted weights). ``abs`` also means a negative multiplier is added twice
    instead of removed. The engine never uses this to restore a base (it copies a snapshot back);
    it exists to reproduce a run's history of merges.
    """
    return lora_merged_fp32(weight, down, up, -abs(float(scale)), alpha_scale)


@register("lora_mode", "branch")
def lora_branch(x: torch.Tensor, base_out: torch.Tensor, down: torch.Tensor, up: torch.Tensor, scale: float,
                alpha_scale: float = 1.0) -> torch.Tensor:
    """AI Toolkit's side branch, added to the base module's own output.

    network_mixins.py ToolkitModuleMixin.forward / _call_forward: ``x.to(float32)`` -> lora_down ->
    (dropout: identity in eval) -> lora_up -> ``* scale`` (alpha/rank, float32 tensor) -> ``* multiplier``
    (float32 tensor) -> ``.to(org_forwarded.dtype)`` -> ``org_forwarded + ...``.
    """
    if getattr(x, "_qtype", None) is not None and hasattr(x, "dequantize"):  # a quanto QTensor input
        x = x.dequantize()
    low = torch.nn.functional.linear(x.to(down.dtype), down)
    lora_out = torch.nn.functional.linear(low, up)
    lora_out = lora_out * torch.tensor(float(alpha_scale), dtype=down.dtype, device=lora_out.device)
    lora_out = lora_out * torch.tensor([float(scale)], dtype=down.dtype, device=lora_out.device)
    return base_out + lora_out.to(base_out.dtype)
