"""Weight quantization of a loaded pipeline: what a system stores its transformer weights as.

Each alternative is a description (``Quantization``) of what a freshly loaded pipeline becomes once
(cases that need another one get their own pipeline variant); the engine applies it and the arithmetic
lives in ``parity.engine.quantize``. The fp8 alternatives are ComfyUI's UNETLoader ``weight_dtype`` values
and its fp8_scaled checkpoints; the storage they leave on the transformer is what a ComfyUI LoRA patch is
rounded back into (lora_mode patched_fp32).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .registry import describe_family, register

describe_family("quantize", "how the pipeline's weights are stored (quantized) after loading")


@dataclass(frozen=True)
class Quantization:
    """What the weights become: quanto (AI Toolkit), plain or scaled fp8 storage (ComfyUI), or nothing."""

    kind: str  # none | quanto | fp8 | fp8_scaled
    qtype: str | None = None  # quanto's qtype
    fp8: torch.dtype | None = None  # the fp8 storage dtype
    fast: bool = False  # fp8: Linear inputs rounded through fp8 too (ComfyUI _fast)


@register("quantize", "none")
def quantize_none() -> Quantization:
    """Weights as loaded, in the pipeline's dtype."""
    return Quantization("none")


@register("quantize", "qfloat8")
def quantize_qfloat8() -> Quantization:
    """optimum-quanto qfloat8 of the transformer and T5, per-row scales (AI Toolkit's quantize: true)."""
    return Quantization("quanto", qtype="qfloat8")


@register("quantize", "fp8_e4m3fn")
def quantize_fp8_e4m3fn() -> Quantization:
    """Every transformer parameter plainly cast to float8_e4m3fn, computed in the dtype (ComfyUI weight_dtype)."""
    return Quantization("fp8", fp8=torch.float8_e4m3fn)


@register("quantize", "fp8_e5m2")
def quantize_fp8_e5m2() -> Quantization:
    """Every transformer parameter plainly cast to float8_e5m2, computed in the dtype (ComfyUI weight_dtype)."""
    return Quantization("fp8", fp8=torch.float8_e5m2)


@register("quantize", "fp8_e4m3fn_fast")
def quantize_fp8_e4m3fn_fast() -> Quantization:
    """fp8_e4m3fn plus Linear inputs clamped to +-448 and rounded to fp8 (ComfyUI _fast on an fp8 GPU, emulated)."""
    return Quantization("fp8", fp8=torch.float8_e4m3fn, fast=True)


@register("quantize", "fp8_scaled")
def quantize_fp8_scaled() -> Quantization:
    """An fp8_scaled checkpoint: per-tensor scaled e4m3fn Linear weights (absmax/448 assumed), fp8 biases."""
    return Quantization("fp8_scaled", fp8=torch.float8_e4m3fn)
