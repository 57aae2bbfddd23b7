"""Lumenfall (OpenAI-compatible gateway) requests for flux.1-kontext-dev (seed 003).

model and prompt required; image (the input to edit, PNG, JPEG or WebP; none: text to image); size
"WxH" (1-14142 px) or "W:H" or "auto"; aspect_ratio (any ratio, mapped to the nearest supported);
resolution tier (auto, 1K; any other tier maps to the nearest listed, 1K); n; seed; output_format
png|jpeg|gif|webp|avif; output_compression; cfg_scale; num_inference_steps; provider fields passed
through (acceleration: only none is reproducible, the others are refused; enable_safety_checker /
disable_safety_checker: an image the checker passes is unchanged; enhance_prompt: a rewritten
prompt cannot be reproduced, so true is refused). Priority: size, then aspect_ratio + resolution.
The 1K table gives pixel sizes; with neither size nor aspect ratio the shape comes from the input
image (size_source lumenfall_1k). The page gives no range for num_inference_steps, cfg_scale or n:
any positive count and non-negative scale is taken, with a note when fal (the provider it lists
first) would refuse it (its flux-kontext-lora endpoint: steps 10-50, guidance 0-20).
"""
from __future__ import annotations

import re

from ..errors import did_you_mean
from ..knobs.sizing import LUMENFALL_1K, nearest_ratio, parse_ratio
from . import (Context, Fields, per_image, quality_or_one, refuse_acceleration, safety_checkers, seed_or_zero,
               set_given)
from .fal import GUIDANCE as FAL_GUIDANCE
from .fal import STEPS as FAL_STEPS

PROFILE = "lumenfall"
API = "Lumenfall flux.1-kontext-dev"
MODELS = ("flux.1-kontext-dev", "fal/flux.1-kontext-dev", "fal/flux.1-kontext-dev-edit",
          "replicate/flux.1-kontext-dev")
OUTPUT_FORMATS = ("png", "jpeg", "gif", "webp", "avif")
MODELLED_FORMATS = ("png", "jpeg", "webp")
MAX_SIDE = 14142
INPUT_FORMATS = ("PNG", "JPEG", "WEBP")  # image: "Supports PNG, JPEG, WebP."
TIER = re.compile(r"^(\d+(\.\d+)?)[kK]?$")
SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def convert(body: Fields, ctx: Context) -> list[dict]:
    model = body.string("model", required=True)
    if model not in MODELS:
        raise ctx.error("model", f'"{model}" is not one of {", ".join(MODELS)}{did_you_mean(model, MODELS)}')
    case = {"profile": PROFILE, "prompt": body.string("prompt", required=True)}
    image, where = _input_image(body, ctx)
    case.update(_size(body, ctx, has_image=image is not None))
    steps, guidance = body.integer("num_inference_steps", lo=1), body.number("cfg_scale", lo=0)
    for key, value, (lo, hi) in (("num_inference_steps", steps, FAL_STEPS), ("cfg_scale", guidance, FAL_GUIDANCE)):
        if value is not None and not lo <= value <= hi:
            ctx.note(f"{key} {value:g} is outside {lo}-{hi}, what fal (the provider listed first) takes; the page "
                     "gives no range, so the case runs it, but the provider may refuse it")
    set_given(case, steps=steps, guidance=guidance)
    output_format = body.choice("output_format", OUTPUT_FORMATS)
    if output_format and output_format not in MODELLED_FORMATS:
        raise ctx.error("output_format", f'"{output_format}" is not modelled by kontext-parity '
                                         f"(one of {', '.join(MODELLED_FORMATS)})")
    set_given(case, output_format=output_format)
    quality = body.integer("output_compression", lo=0, hi=100)
    if quality is not None:  # OpenAI's scale: 100 (its default) is the best quality, so it is a quality
        case["output_quality"] = quality_or_one(quality, ctx, "output_compression")
    refuse_acceleration(body, ctx)
    if body.boolean("enhance_prompt"):
        raise ctx.error("enhance_prompt", "true: the provider rewrites the prompt with a language model before "
                                          "generating, and the rewritten prompt is not returned, so the request "
                                          "cannot be reproduced; send false to compare")
    body.choice("response_format", ("url", "b64_json"))
    safety_checkers(body, "enable_safety_checker", "disable_safety_checker")
    body.boolean("sync_mode")
    count = body.integer("n", lo=1, default=1)
    seed = seed_or_zero(body.integer("seed", lo=0), ctx, "seed")
    body.unknown("is passed through to the provider, not modelled")
    if image is not None:  # media last: the body is valid by now
        case["control_image"] = ctx.image(image, where, formats=INPUT_FORMATS)
    return per_image(case, count, seed, ctx)


def _input_image(body: Fields, ctx: Context) -> tuple[object, str]:
    """The one input image's request value (URL or base64) and its field path; None for text to image."""
    value = body.raw("image")
    if isinstance(value, list):
        if len(value) > 1:
            raise ctx.error("image", f"{len(value)} input images: kontext-parity models one control image")
        return (value[0], "image[0]") if value else (None, "image")
    return value, "image"


def _size(body: Fields, ctx: Context, *, has_image: bool) -> dict:
    """size > aspect_ratio + resolution > resolution alone: width/height, or a size_source."""
    size = body.string("size")
    aspect = body.string("aspect_ratio")
    resolution = body.string("resolution")
    if resolution is not None:
        _tier(resolution, ctx)
    if size is not None and size != "auto":
        match = SIZE.match(size)
        if match:
            width, height = int(match[1]), int(match[2])
            if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
                raise ctx.error("size", f'"{size}": each side must be in [1, {MAX_SIDE}]')
            if min(width, height) < 16:
                raise ctx.error("size", f'"{size}": FLUX.1 Kontext floors each side to 16 px, '
                                        "so a side below 16 gives no image")
            if aspect or resolution:
                ctx.note("size WxH given: aspect_ratio and resolution are ignored, as Lumenfall does")
            return {"size_source": "request", "width": width, "height": height}
        if parse_ratio(size) is None:
            raise ctx.error("size", f'"{size}" is neither "WxH" pixels, "W:H" nor "auto"')
        aspect = size  # "W:H format is equivalent to aspect_ratio"
    if aspect is not None and aspect != "auto":
        ratio = parse_ratio(aspect)
        if ratio is None:
            raise ctx.error("aspect_ratio", f'"{aspect}" is not a ratio "W:H" (e.g. 4:3)')
        key = nearest_ratio(*ratio, LUMENFALL_1K)
        if key != aspect:
            ctx.note(f"aspect ratio {aspect} maps to {key}, the nearest supported")
        width, height = LUMENFALL_1K[key]
        return {"size_source": "request", "width": width, "height": height}
    if has_image:
        return {"size_source": "lumenfall_1k"}
    return {"size_source": "request", "width": 1024, "height": 1024}


def _tier(resolution: str, ctx: Context) -> None:
    if resolution == "auto" or resolution.upper() == "1K":
        return
    if not TIER.match(resolution):
        hint = did_you_mean(resolution, ["auto", "1K"])
        raise ctx.error("resolution", f'"{resolution}" is not a resolution tier{hint}; '
                                      "use auto or 1K (other tiers such as 2K map to 1K)")
    ctx.note(f"resolution {resolution} maps to 1K, the only tier listed for this model")
