"""LoRA application modes: four ways to add the same low-rank delta, four results.

- dynamic: PEFT adapter layers, delta added at run time in the base dtype, scale = adapter weight
  (reference server, diffusers ``set_adapters``).
- fused: PEFT merges delta into the weights (``fuse_lora``); the engine restores the exact base after.
- branch: AI Toolkit's unmerged forward (quantized bases, or a batch with mixed multipliers).
- merged_fp32: AI Toolkit's merge into an unquantized base, written back in the base dtype.
- patched_fp32: ComfyUI's ModelPatcher: merged in float32, rounded back into the stored dtype
  (stochastically into fp8, per fused BFL tensor).

Each registered mode is a pure description (``LoraMode``): which of the engine's three mechanisms it
uses (PEFT adapter layers; weights rewritten and restored from a snapshot after; a forward hook on each
Linear) with which numerics. The engine (``parity.engine.lora.LoraApplier``) owns the state and applies
it. ``lora_merged_fp32`` and ``lora_branch`` are AI Toolkit's numerics, operation for operation
(ostris/ai-toolkit 27a03a9, ``toolkit/network_mixins.py``, ``toolkit/lora_special.py``). ``alpha_scale`` is AI Toolkit's ``self.scale``
(alpha / rank, 1.0 when the file has no alpha keys, as AI Toolkit's own PEFT-format files);
``scale`` is the network multiplier.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .registry import describe_family, register

describe_family("lora_mode", "how a LoRA's delta is combined with the base weights")

MECHANISMS = ("peft", "weights", "forward")


@dataclass(frozen=True)
class LoraMode:
    """How one mode combines LoRAs with the base; the engine applies it and undoes it after the case."""

    mechanism: str  # peft: diffusers' adapter layers | weights: rewrite the weights | forward: a hook per Linear
    fuse: bool = False  # peft: merge the adapters into the weights (fuse_lora)
    merge: Callable | None = None  # weights: (W, down, up, scale, alpha/rank) -> W'; its dtype is what is kept
    # between LoRAs, so a merge that returns W's dtype rounds after each LoRA, one that returns float32 once
    stochastic_fp8: bool = False  # weights: round back into fp8 storage stochastically, per fused BFL tensor
    branch: Callable | None = None  # forward: (x, base output, down, up, scale, alpha/rank) -> output


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


# --- the modes ----------------------------------------------------------------------------------------------


@register("lora_mode", "dynamic")
def mode_dynamic() -> LoraMode:
    """PEFT adapters weighted at run time in the base dtype (reference server, diffusers set_adapters)."""
    return LoraMode("peft")


@register("lora_mode", "fused")
def mode_fused() -> LoraMode:
    """PEFT fuse_lora into the weights; undone by copying the weights back (unfusing in bf16 is not exact)."""
    return LoraMode("peft", fuse=True)


@register("lora_mode", "merged_fp32")
def mode_merged_fp32() -> LoraMode:
    """AI Toolkit on an unquantized base: merged in float32, written in the base dtype, snapshot restored."""
    return LoraMode("weights", merge=lora_merged_fp32)


@register("lora_mode", "branch")
def mode_branch() -> LoraMode:
    """AI Toolkit on a quantized base or mixed multipliers: a float32 side branch as a forward hook."""
    return LoraMode("forward", branch=lora_branch)


def lora_patched_fp32(weight: torch.Tensor, down: torch.Tensor, up: torch.Tensor, strength: float,
                      alpha_scale: float = 1.0) -> torch.Tensor:
    """ComfyUI's LoRA patch of one weight, in float32 and not yet rounded back.

    comfy/weight_adapter/lora.py:161-208: up and down cast to float32, ``weight += (strength * alpha) *
    (up @ down)`` on a float32 copy of the weight (comfy/model_patcher.py:605-612); alpha is alpha/rank,
    1.0 when the file has no alpha.
    """
    return weight.float() + (float(strength) * float(alpha_scale)) * (up.float() @ down.float())


@register("lora_mode", "patched_fp32")
def mode_patched_fp32() -> LoraMode:
    """ComfyUI LoraLoader: W + (strength*alpha)*(B@A) in float32, rounded to the stored dtype (fp8: stochastic)."""
    return LoraMode("weights", merge=lora_patched_fp32, stochastic_fp8=True)
