"""Sizes: the one size plan of a case, and the snapping rules it is made of.

``size_plan`` is the only place that turns a case into sizes, each step named: the size asked for
(``size_source``: the request, or the control image's), the size handed to the pipeline (``snap``),
the pipeline's ``max_area`` and output size (diffusers' rescale to max_area keeping the aspect, floored
to 16, or to 8 with ComfyUI's ``latent_padding``), and the control image's sizes (as loaded, its first
resize ``control_target``, and the size the VAE encodes, ``control_encode``). The engine, the AI Toolkit
import, the profiles and the tests all read sizes from it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import ParityError
from .registry import describe_family, register

describe_family("snap", "requested width/height -> size passed to the pipeline")
describe_family("size_source", "where the requested width/height come from (the request or the control image)")
describe_family("latent_padding", "which output sizes the latent grid allows, and how odd latent sides meet the 2x2 patches")



def preferred_resolutions() -> tuple[tuple[int, int], ...]:
    """FLUX.1-Kontext-dev's preferred resolutions as (width, height), from diffusers itself."""
    from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS

    return tuple(PREFERRED_KONTEXT_RESOLUTIONS)


def _floor(value: int, divisor: int) -> int:
    return max(divisor, value // divisor * divisor)


def _round(value: int, divisor: int) -> int:
    """Nearest multiple, halves up (Python's round() would send 100 -> 96 under round8)."""
    return max(divisor, (value + divisor // 2) // divisor * divisor)


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


def pipeline_output_size(width: int, height: int, max_area: int, align: int = 16) -> tuple[int, int]:
    """diffusers' Kontext rule: rescale to max_area keeping the requested aspect, floor to 16 (``align``)."""
    aspect = width / height
    out_w = round((max_area * aspect) ** 0.5)
    out_h = round((max_area / aspect) ** 0.5)
    return out_w // align * align, out_h // align * align


@dataclass(frozen=True)
class LatentGrid:
    """How output pixels map to the transformer's tokens (the VAE divides by 8, a patch is 2x2 latents)."""

    pixel_align: int  # output sides are floored to a multiple of this
    pad: Callable[[torch.Tensor], torch.Tensor]  # NCHW latents -> NCHW latents with even sides


def _no_padding(latents: torch.Tensor) -> torch.Tensor:
    return latents


def _circular_padding(latents: torch.Tensor) -> torch.Tensor:
    """An odd side gets one more row/column, copied from the opposite edge (torch's circular padding)."""
    pad_h, pad_w = latents.shape[-2] % 2, latents.shape[-1] % 2
    if not pad_h and not pad_w:
        return latents
    return torch.nn.functional.pad(latents, (0, pad_w, 0, pad_h), mode="circular")


@register("latent_padding", "none")
def grid_none() -> LatentGrid:
    """Sides floored to 16 px, so latents always pack into 2x2 patches (diffusers)."""
    return LatentGrid(16, _no_padding)


@register("latent_padding", "circular")
def grid_circular() -> LatentGrid:
    """Sides floored to 8 px; an odd latent side is circular-padded each step, ids ceil, output cropped (ComfyUI)."""
    return LatentGrid(8, _circular_padding)


def preferred_resolution(width: int, height: int) -> tuple[int, int]:
    """The preferred Kontext resolution nearest in aspect (diffusers' auto-resize)."""
    if width < 1 or height < 1:  # no aspect to match
        raise ParityError(f"a {width}x{height} image has no aspect ratio to match a preferred Kontext resolution")
    aspect = width / height
    _, w, h = min((abs(aspect - w / h), w, h) for w, h in preferred_resolutions())
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


# --- serving systems' own sizing rules (profiles fal, prodia-dev, lumenfall, oxen) ---------------------------

PRODIA_MIN, PRODIA_MAX = 512, 1024  # "512–1040 in multiples of 32": 1040 is no multiple of 32, so 1024 is the top
MAX_SIDE_2048 = 2048  # FLUX.1 Kontext [dev]'s max resolution on Lumenfall (seed 003), served by fal.ai

# Lumenfall's 1K tier (seed 003 "1K 11 sizes"), verbatim, including its 1183 vs 1182 quirks: ratio -> (width, height).
LUMENFALL_1K = {
    "1:1": (1024, 1024), "4:3": (1183, 887), "3:4": (887, 1182), "5:4": (1145, 916), "4:5": (916, 1145),
    "3:2": (1254, 836), "2:3": (836, 1254), "16:9": (1365, 768), "9:16": (768, 1365), "21:9": (1563, 670),
    "9:21": (670, 1564),
}


def parse_ratio(text: str) -> tuple[float, float] | None:
    """'16:9' -> (16.0, 9.0); None unless both sides are positive numbers."""
    parts = str(text).split(":")
    if len(parts) != 2:
        return None
    try:
        w, h = float(parts[0]), float(parts[1])
    except ValueError:
        return None
    return (w, h) if w > 0 and h > 0 and math.isfinite(w / h) else None


def nearest_ratio(width: float, height: float, ratios) -> str:
    """The 'W:H' key of ``ratios`` closest in log-aspect (so 2:1 and 1:2 are equally far from 1:1)."""
    target = math.log(width / height)
    return min(ratios, key=lambda r: abs(math.log(parse_ratio(r)[0] / parse_ratio(r)[1]) - target))


def aspect_ratio_size(ratio: str, area: int = 1024 * 1024) -> tuple[int, int]:
    """BFL's aspect_ratio_to_height_width (flux/util.py): the ratio at ``area`` pixels, each side floored to 16."""
    w, h = parse_ratio(ratio)
    return pipeline_output_size(w, h, area)


def _fit_within(width: int, height: int, limit: int) -> tuple[int, int]:
    scale = min(1.0, limit / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


@register("snap", "prodia")
def snap_prodia(width: int, height: int) -> tuple[int, int]:
    """Prodia Kontext dev: scale into 512-1024 keeping the aspect, round each side to 32, clamp."""
    scale = min(1.0, PRODIA_MAX / max(width, height))
    if min(width, height) * scale < PRODIA_MIN:
        scale = PRODIA_MIN / min(width, height)
    return tuple(min(PRODIA_MAX, max(PRODIA_MIN, _round(round(side * scale), 32))) for side in (width, height))


@register("snap", "max2048")
def snap_max2048(width: int, height: int) -> tuple[int, int]:
    """Lumenfall's clamping: scale down keeping the aspect until no side exceeds 2048 (the pipeline floors to 16)."""
    return _fit_within(width, height, MAX_SIDE_2048)


@register("snap", "floor16_max2048")
def snap_floor16_max2048(width: int, height: int) -> tuple[int, int]:
    """fal match_input: within 2048 per side (aspect kept), then each side floored to 16."""
    w, h = _fit_within(width, height, MAX_SIDE_2048)
    return _floor(w, 16), _floor(h, 16)


@register("size_source", "lumenfall_1k")
def size_from_lumenfall_1k(width: int, height: int, control_size: tuple[int, int] | None) -> tuple[int, int]:
    """Lumenfall's 1K size nearest the control image's aspect (the request's without one)."""
    w, h = control_size if control_size else (width, height)
    return LUMENFALL_1K[nearest_ratio(w, h, LUMENFALL_1K)]


@dataclass(frozen=True)
class SizePlan:
    """Every size of one case, in the order the pipeline meets them (each (width, height))."""

    asked: tuple[int, int]  # what the request asks for (size_source)
    requested: tuple[int, int]  # handed to the pipeline (snap)
    max_area: int  # the pipeline's max_area (the case's, else requested width x height)
    output: tuple[int, int]  # the pipeline's output: max_area rescale keeping the aspect, floored to the grid
    control: tuple[int, int] | None  # the control image as loaded (after EXIF transpose when on)
    control_target: tuple[int, int] | None  # its first resize (control_target; None: left at its own size)
    control_encoded: tuple[int, int] | None  # what the VAE encodes (control_encode)

    @property
    def control_handed(self) -> tuple[int, int] | None:
        """The control image as handed to the pipeline (after its first resize)."""
        return self.control_target or self.control

    def effective(self) -> dict:
        """The sizes as the results table names them."""
        return {"requested_width": self.requested[0], "requested_height": self.requested[1],
                "max_area": self.max_area, "width": self.output[0], "height": self.output[1]}


def size_plan(case, control: tuple[int, int] | None) -> SizePlan:
    """The size plan of ``case`` (a Case) with a control image of size ``control`` (None: no control image)."""
    from .control import control_encode_size
    from .registry import lookup

    asked = tuple(lookup("size_source", case.size_source)(case.width, case.height, control))
    requested = tuple(lookup("snap", case.snap)(*asked))
    max_area = case.max_area if case.max_area is not None else requested[0] * requested[1]
    align = lookup("latent_padding", case.latent_padding)().pixel_align
    output = pipeline_output_size(*requested, max_area, align)
    if output[0] < align or output[1] < align:
        raise ParityError(f'case "{case.name}": output size {output[0]}x{output[1]} is too small ({align} px minimum)')
    target = encoded = None
    if control is not None:
        target = lookup("control_target", case.control_target)(requested, output, asked=asked, image_size=control)
        target = tuple(target) if target is not None and tuple(target) != tuple(control) else None
        encoded = control_encode_size(case, target or control)
    return SizePlan(asked, requested, max_area, output, tuple(control) if control else None, target, encoded)
