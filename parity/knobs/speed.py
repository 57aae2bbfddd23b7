"""Speed knobs: they are meant to change only the time, so they are parity knobs too.

Attention kernels, torch.compile and memory formats reorder floating-point work; in bf16
that moves pixels. A case can turn each on and the report shows what it costs in fidelity.
"""
from __future__ import annotations

from .registry import describe_family, register

describe_family("attention_backend", "diffusers attention dispatcher backend of the transformer")

_BACKENDS = {
    "native": "torch scaled_dot_product_attention, kernel chosen by torch (diffusers' default)",
    "_native_math": "torch SDPA restricted to the math kernel (the reference implementation)",
    "_native_flash": "torch SDPA restricted to its flash kernel",
    "_native_efficient": "torch SDPA restricted to the memory-efficient kernel (CUDA)",
    "_native_cudnn": "torch SDPA restricted to cuDNN (CUDA)",
    "flex": "torch flex_attention (compiled)",
    "flash": "flash-attn package (CUDA)",
    "sage": "SageAttention package (CUDA, quantized attention)",
    "xformers": "xformers memory-efficient attention (CUDA)",
}


def _backend(name: str, doc: str):
    def backend() -> str:
        return name

    backend.__doc__ = doc
    return backend


for _name, _doc in _BACKENDS.items():
    register("attention_backend", _name)(_backend(_name, _doc))
