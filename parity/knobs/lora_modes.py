"""LoRA application modes: four ways to add the same low-rank delta, four results.

- dynamic: PEFT adapter layers, delta added at run time in the base dtype, scale = adapter weight
  (reference server, diffusers ``set_adapters``).
- fused: PEFT merges delta into the weights (``fuse_lora``); the engine restores the exact base after.
- branch: AI Toolkit on a quantized base or with mixed multipliers: a float32 side branch
  x.float() -> A -> B -> *scale, cast to the base dtype and added to the base output.
- merged_fp32: AI Toolkit on an unquantized base: W + scale*(B@A) computed in float32, written
  back in the base dtype.

The functions below are the numerics; ``parity.engine.lora`` applies them to modules.
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
def lora_merged_fp32(weight: torch.Tensor, down: torch.Tensor, up: torch.Tensor, scale: float) -> torch.Tensor:
    """AI Toolkit's merge: float32 sum, written back in the weight's dtype."""
    delta = up.float() @ down.float()
    return (weight.float() + delta * scale).to(weight.dtype)


@register("lora_mode", "branch")
def lora_branch(x: torch.Tensor, base_out: torch.Tensor, down: torch.Tensor, up: torch.Tensor, scale: float):
    """AI Toolkit's side branch: float32 low-rank path added to the base output."""
    low = torch.nn.functional.linear(x.float(), down)
    return base_out + (torch.nn.functional.linear(low, up) * scale).to(base_out.dtype)
