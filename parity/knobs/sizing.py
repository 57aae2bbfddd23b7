"""Snapping rules: how a requested width/height becomes the size handed to the pipeline.

The pipeline then applies its own ``max_area`` rescale and floors to 16
(``pipeline_output_size``), exactly as diffusers' FluxKontextPipeline does.
"""
from __future__ import annotations

from .registry import describe_family, register

describe_family("snap", "requested width/height -> size passed to the pipeline")
describe_family("size_source", "where the requested width/height come from (the request or the control image)")

# FLUX.1-Kontext-dev's preferred resolutions (diffusers PREFERRED_KONTEXT_RESOLUTIONS), as (width, height).
PREFERRED_KONTEXT_RESOLUTIONS = (
    (672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248),
    (880, 1184), (944, 1104), (1024, 1024), (1104, 944), (1184, 880), (1248, 832),
    (1328, 800), (1392, 752), (1456, 720), (1504, 688), (1568, 672),
)


def _floor(value: int, divisor: int) -> int:
    return max(divisor, value // divisor * divisor)


def _round(value: int, divisor: int) -> int:
    return max(divisor, int(round(value / divisor)) * divisor)


def _make(kind: str, divisor: int):
    op = _floor if kind == "floor" else _round

    def snap(width: int, height: int) -> tuple[int, int]:
        return op(width, divisor), op(height, divisor)

    snap.__doc__ = f"{kind} each side to a multiple of {divisor}"
    return snap


for _kind in ("floor", "round"):
    for _divisor in (8, 16, 32, 64):
        register("snap", f"{_kind}{_divisor}")(_make(_kind, _divisor))


@register("snap", "aitk")
def snap_aitk(width: int, height: int) -> tuple[int, int]:
    """AI Toolkit's sampler: floor to 8 with a 64 px minimum (the pipeline floors to 16 after)."""
    return max(64, width // 8 * 8), max(64, height // 8 * 8)


@register("snap", "none")
def snap_none(width: int, height: int) -> tuple[int, int]:
    """Hand the size over unchanged (the pipeline still floors to 16)."""
    return width, height


def pipeline_output_size(width: int, height: int, max_area: int) -> tuple[int, int]:
    """diffusers' Kontext rule: rescale to max_area keeping the requested aspect, floor to 16."""
    aspect = width / height
    out_w = round((max_area * aspect) ** 0.5)
    out_h = round((max_area / aspect) ** 0.5)
    return out_w // 16 * 16, out_h // 16 * 16


def preferred_resolution(width: int, height: int) -> tuple[int, int]:
    """The preferred Kontext resolution nearest in aspect (diffusers' auto-resize)."""
    aspect = width / height
    _, w, h = min((abs(aspect - w / h), w, h) for w, h in PREFERRED_KONTEXT_RESOLUTIONS)
    return w, h


@register("size_source", "request")
def size_from_request(width: int, height: int, control_size: tuple[int, int] | None) -> tuple[int, int]:
    """The width/height of the request (AI Toolkit, the reference server, diffusers with explicit sizes)."""
    return width, height


@register("size_source", "control")
def size_from_control(width: int, height: int, control_size: tuple[int, int] | None) -> tuple[int, int]:
    """The control image's own size ("match input" services); the request's size without one."""
    return tuple(control_size) if control_size else (width, height)


@register("size_source", "control_preferred")
def size_from_control_preferred(width: int, height: int, control_size: tuple[int, int] | None) -> tuple[int, int]:
    """The preferred Kontext resolution nearest the control image's aspect ("auto" resolution modes)."""
    w, h = control_size if control_size else (width, height)
    return preferred_resolution(w, h)
