"""Weight quantization of a loaded pipeline: what a system stores its transformer weights as.

Each alternative changes a freshly loaded pipeline once (cases that need another one get their
own pipeline variant); the arithmetic lives in ``parity.engine.quantize``. The fp8 alternatives
are ComfyUI's UNETLoader ``weight_dtype`` values and its fp8_scaled checkpoints; the storage they
leave on the transformer is what a ComfyUI LoRA patch is rounded back into (lora_mode patched_fp32).
"""
from __future__ import annotations

import torch

from .registry import describe_family, register

describe_family("quantize", "how the pipeline's weights are stored (quantized) after loading")


def _store(pipe, storage) -> None:
    pipe.transformer._parity_storage = storage


@register("quantize", "none")
def quantize_none(pipe) -> None:
    """Weights as loaded, in the pipeline's dtype."""


@register("quantize", "qfloat8")
def quantize_qfloat8(pipe) -> None:
    """optimum-quanto qfloat8 of the transformer and T5, per-row scales (AI Toolkit's quantize: true)."""
    from ..engine.quantize import quantize_pipeline

    quantize_pipeline(pipe, "qfloat8")


@register("quantize", "fp8_e4m3fn")
def quantize_fp8_e4m3fn(pipe) -> None:
    """Every transformer parameter plainly cast to float8_e4m3fn, computed in the dtype (ComfyUI weight_dtype)."""
    from ..engine.quantize import store_fp8

    _store(pipe, store_fp8(pipe.transformer, torch.float8_e4m3fn))


@register("quantize", "fp8_e5m2")
def quantize_fp8_e5m2(pipe) -> None:
    """Every transformer parameter plainly cast to float8_e5m2, computed in the dtype (ComfyUI weight_dtype)."""
    from ..engine.quantize import store_fp8

    _store(pipe, store_fp8(pipe.transformer, torch.float8_e5m2))


@register("quantize", "fp8_e4m3fn_fast")
def quantize_fp8_e4m3fn_fast(pipe) -> None:
    """fp8_e4m3fn plus Linear inputs clamped to +-448 and rounded to fp8 (ComfyUI _fast on an fp8 GPU, emulated)."""
    from ..engine.quantize import clamp_inputs_to_fp8, store_fp8

    _store(pipe, store_fp8(pipe.transformer, torch.float8_e4m3fn))
    clamp_inputs_to_fp8(pipe.transformer)


@register("quantize", "fp8_scaled")
def quantize_fp8_scaled(pipe) -> None:
    """An fp8_scaled checkpoint: per-tensor scaled e4m3fn Linear weights (absmax/448 assumed), fp8 biases."""
    from ..engine.quantize import store_fp8_scaled

    _store(pipe, store_fp8_scaled(pipe.transformer))
