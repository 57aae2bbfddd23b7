"""The numerical noise floor: how far a case's output moves under numerically equivalent changes.

A bf16 result is exact only on the hardware that drew it: another CPU or GPU picks other kernels,
which sum in another order and round differently (the demo previews come out 0.36-0.70/255 mean,
max 4-8, apart on an AMX-BF16 Xeon). Re-running a case with the same arithmetic in another order on
*this* machine measures that size: an estimator is a pure change of the case (or a torch setting)
that must not change the mathematics, only the rounding. Measured on the demo previews (bf16):

  attention  SDPA kernel swapped (default <-> math): 0.37-0.53 mean, max 3-6, against the cross-CPU
             0.36-0.70 mean, max 4-8; twice it covers every demo preview.
  mkldnn     oneDNN kernels off (CPU): 0.00-0.48 mean; sometimes moves nothing, so it comes second.
  bf16_reduction  cuBLAS reduced-precision bf16 reductions toggled (CUDA only; not measurable here).

Estimators are used in this order, the first N that apply on the device (``--noise-floor N``);
the floor is the worst distance any of them produced. Cases of one floor group (same output size,
steps, dtype, quantization, LoRA modes, attention backend and preview encoding) share one floor
unless the scope is "case": a rerun doubles the compute, and on a real run hundreds of 1 MP previews
of one size and setup have floors of one size.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager

from .case import Case

SCOPES = ("group", "case")


@dataclass(frozen=True)
class Estimator:
    name: str
    doc: str
    applies: Callable[[str], bool]  # device type -> whether it perturbs anything there
    perturb: Callable[[Case], Case]  # the same case, arithmetic reordered
    setting: Callable[[], ContextManager] = contextlib.nullcontext  # a torch setting held during the rerun


def _swap_attention(case: Case) -> Case:
    """Default SDPA <-> its math kernel; any other backend -> the default."""
    return case.replace(attention_backend="_native_math" if case.attention_backend == "native" else "native")


def _mkldnn_off() -> ContextManager:
    import torch

    return torch.backends.mkldnn.flags(enabled=False)


@contextlib.contextmanager
def _toggle_bf16_reduction():
    import torch

    matmul = torch.backends.cuda.matmul
    before = matmul.allow_bf16_reduced_precision_reduction
    matmul.allow_bf16_reduced_precision_reduction = not before
    try:
        yield
    finally:
        matmul.allow_bf16_reduced_precision_reduction = before


ESTIMATORS = (
    Estimator("attention", "attention kernel swapped (SDPA default <-> math)", lambda device: True, _swap_attention),
    Estimator("mkldnn", "oneDNN (mkldnn) kernels off", lambda device: device == "cpu", lambda case: case, _mkldnn_off),
    Estimator("bf16_reduction", "cuBLAS reduced-precision bf16 reductions toggled", lambda device: device == "cuda",
              lambda case: case, _toggle_bf16_reduction),
)


def estimators(count: int, device_type: str) -> list[Estimator]:
    """The first ``count`` estimators that perturb something on this device type."""
    return [e for e in ESTIMATORS if e.applies(device_type)][:max(count, 0)]


def floor_group(case: Case, effective: dict, preview_format: str | None, scope: str = "group") -> str:
    """The key of the cases that share one floor: what sets its size, not the content of the image."""
    if scope == "case":
        return f"case:{case.name}"
    modes = ",".join(sorted({lora.mode for lora in case.loras})) or "none"
    return (f"{effective.get('width')}x{effective.get('height')}|{case.steps} steps|{case.dtype}|{case.quantize}|"
            f"lora {modes}|{case.attention_backend}|preview {preview_format or 'none'}")


def worst(distances: list[dict]) -> dict:
    """The floor from several estimators' distances: the largest change any of them made."""
    out = {}
    for key, better_high in (("mean_abs", False), ("max_abs", False), ("jpeg_excess", False), ("lpips", False),
                             ("ssim", True)):
        values = [d[key] for d in distances if d.get(key) is not None]
        if values:
            out[key] = min(values) if better_high else max(values)
    return out


def measure(engine, case: Case, result, preview, chosen: list[Estimator], lpips_net: str = "alex") -> dict:
    """The floor of one case: rerun it under each estimator and take the worst distance from ``result``,
    measured as the comparison with ``preview`` sees it (``parity.metrics.rerun_distance``)."""
    from .metrics import rerun_distance

    distances = []
    for estimator in chosen:
        with estimator.setting():
            perturbed = engine.run(estimator.perturb(case))
        distances.append(rerun_distance((result.image, result.raw_image), (perturbed.image, perturbed.raw_image),
                                        preview, lpips_net))
    return worst(distances)
