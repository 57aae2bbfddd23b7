"""LoRA application modes: four ways to add the same low-rank delta, four results.

- dynamic: PEFT adapter layers, delta added at run time in the base dtype, scale = adapter weight
  (reference server, diffusers ``set_adapters``).
- fused: PEFT merges delta into the weights (``fuse_lora``); the engine restores the exact base after.
- branch: AI Toolkit's unmerged forward (quantized bases, or a batch with mixed multipliers).
- merged_fp32: AI Toolkit's merge into an unquantized base, written back in the base dtype.

The registered functions apply a mode to a pipeline through ``parity.engine.lora.LoraApplier``
and return the callable that undoes it; ``lora_merged_fp32`` and ``lora_branch`` are AI Toolkit's
numerics, operation for operation (ostris/ai-toolkit 27a03a9, ``toolkit/network_mixins.py``,
``toolkit/lora_special.py``). ``alpha_scale`` is AI Toolkit's ``self.scale``
(alpha / rank, 1.0 when the file has no alpha keys, as AI Toolkit's own PEFT-format files);
``scale`` is the network multiplier.
"""
from __future__ import annotations

from typing import Callable

import torch

from .registry import describe_family, register

describe_family("lora_mode", "how a LoRA's delta is combined with the base weights")


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


# --- the modes: each applies (file, scale) items to a LoraApplier and returns its undo ----------------


@register("lora_mode", "dynamic")
def apply_dynamic(target, items) -> Callable[[], None]:
    """PEFT adapters weighted at run time in the base dtype (reference server, diffusers set_adapters)."""
    target.set_adapters(items)
    return lambda: None


@register("lora_mode", "fused")
def apply_fused(target, items) -> Callable[[], None]:
    """PEFT fuse_lora into the weights; undone by copying the weights back (unfusing in bf16 is not exact)."""
    names = target.set_adapters(items)
    restore = target.snapshot({m for lora, _ in items for m in lora.modules})
    target.adapters_unknown()  # until unfused below, whatever happens

    def undo() -> None:
        target.pipe.unfuse_lora(components=["transformer"])  # clears PEFT's merged flags, also after a partial fuse
        restore()

    try:
        target.pipe.fuse_lora(components=["transformer"], lora_scale=1.0, adapter_names=names)
    except BaseException:
        undo()
        raise
    return undo


@register("lora_mode", "merged_fp32")
def apply_merged_fp32(target, items) -> Callable[[], None]:
    """AI Toolkit on an unquantized base: merged in float32, written in the base dtype, snapshot restored."""
    restore = target.snapshot({m for lora, _ in items for m in lora.modules})
    with torch.no_grad():
        for lora, scale in items:
            for module, (down, up) in lora.modules.items():
                linear = target.linear(module)
                d, u = down.to(linear.weight.device), up.to(linear.weight.device)
                linear.weight.copy_(lora_merged_fp32(linear.weight, d, u, float(scale), lora.alpha_scale(module)))
    return restore


@register("lora_mode", "branch")
def apply_branch(target, items) -> Callable[[], None]:
    """AI Toolkit on a quantized base or mixed multipliers: a float32 side branch as a forward hook."""
    hooks = []
    for lora, scale in items:
        for module, (down, up) in lora.modules.items():
            linear = target.linear(module)
            d, u = down.to(linear.weight.device), up.to(linear.weight.device)
            hooks.append(linear.register_forward_hook(
                lambda mod, args, out, d=d, u=u, s=float(scale), a=lora.alpha_scale(module):
                lora_branch(args[0], out, d, u, s, a)))
    return lambda: [hook.remove() for hook in hooks]
