"""LoRA application modes: four ways to add the same low-rank delta, four results.

- dynamic: PEFT adapter layers, delta added at run time in the base dtype, scale = adapter weight
  (reference server, diffusers ``set_adapters``).
- fused: PEFT merges delta into the weights (``fuse_lora``); the engine restores the exact base after.
- branch: AI Toolkit's unmerged forward (quantized bases, or a batch with mixed multipliers).
- merged_fp32: AI Toolkit's merge into an unquantized base, written back in the base dtype.
- patched_fp32: ComfyUI's ModelPatcher: merged in float32, rounded back into the stored dtype
  (stochastically into fp8, per fused BFL tensor).

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


def lora_patched_fp32(weight: torch.Tensor, down: torch.Tensor, up: torch.Tensor, strength: float,
                      alpha_scale: float = 1.0) -> torch.Tensor:
    """ComfyUI's LoRA patch of one weight, in float32 and not yet rounded back.

    comfy/weight_adapter/lora.py:161-208: up and down cast to float32, ``weight += (strength * alpha) *
    (up @ down)`` on a float32 copy of the weight (comfy/model_patcher.py:605-612); alpha is alpha/rank,
    1.0 when the file has no alpha.
    """
    return weight.float() + (float(strength) * float(alpha_scale)) * (up.float() @ down.float())


@register("lora_mode", "patched_fp32")
def apply_patched_fp32(target, items) -> Callable[[], None]:
    """ComfyUI LoraLoader: W + (strength*alpha)*(B@A) in float32, rounded to the stored dtype (fp8: stochastic)."""
    modules = {m for lora, _ in items for m in lora.modules}
    storage = getattr(target.transformer, "_parity_storage", None)
    if storage is not None:  # fp8: ComfyUI patches and rounds whole fused BFL tensors, seeded by their key
        from ..engine.bfl_layout import owner_of

        owner = owner_of(storage.layout)
        modules |= {p.module for m in modules if m in owner for p in storage.layout[owner[m]]}
    restore = target.snapshot(modules)
    try:
        with torch.no_grad():
            patched = {}
            for lora, scale in items:
                for module, (down, up) in lora.modules.items():
                    weight = patched.get(module, target.linear(module).weight)
                    d, u = down.to(weight.device), up.to(weight.device)
                    patched[module] = lora_patched_fp32(weight, d, u, float(scale), lora.alpha_scale(module))
            if storage is None:
                for module, weight in patched.items():
                    linear = target.linear(module)
                    linear.weight.copy_(weight.to(linear.weight.dtype))
            else:
                _round_fp8_fused(target, storage, patched)
    except BaseException:
        restore()
        raise
    return restore


def _round_fp8_fused(target, storage, patched: dict) -> None:
    """Round each BFL tensor a patch touched back into fp8, stochastically with the CRC32 of its key as
    seed (comfy/model_patcher.py:41 and :617, comfy/float.py:50-67); scaled fp8 divides by the tensor's
    scale first and multiplies back after (comfy/ops.py set_weight / convert_weight)."""
    import zlib

    from ..engine.bfl_layout import gather, owner_of, scatter
    from ..engine.quantize import stochastic_round_fp8

    owner = owner_of(storage.layout)
    for key in sorted({owner[m] for m in patched if m in owner}):
        pieces = storage.layout[key]
        current = {p.module: patched.get(p.module, target.linear(p.module).weight).float() for p in pieces}
        fused = gather(current, pieces)
        scale = storage.scales.get(key)
        if scale is not None:
            fused = fused / scale
        rounded = stochastic_round_fp8(fused, storage.dtype, zlib.crc32(key.encode()))
        compute = target.linear(pieces[0].module).weight.dtype
        value = rounded.to(compute)
        if scale is not None:
            value = value * torch.tensor(scale, dtype=torch.float32).to(compute)
        for module, weight in scatter(value, pieces, current).items():
            target.linear(module).weight.copy_(weight)
    for module in patched:
        if module not in owner:  # a module with no BFL counterpart: rounded to nearest
            target.linear(module).weight.copy_(patched[module].to(target.linear(module).weight.dtype))
