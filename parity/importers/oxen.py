"""Oxen.ai flux-kontext-dev requests (seed 004: /api/ai/images/edit and /api/ai/queue bodies).

model "flux-kontext-dev", input_image (jpeg, png, gif or webp) and prompt required; aspect_ratio one
of 11 ratios or match_input_image (default 16:9); num_inference_steps 4-50 (28); guidance 0-10 (2.5);
seed; output_format webp|jpg|png (webp); output_quality 0-100 (80); disable_safety_checker (an image
the checker passes is unchanged). The schema
is Replicate's flux-kontext-dev cog's, so a ratio becomes that cog's pixel size and
match_input_image the preferred Kontext resolution nearest the input's aspect.
"""
from __future__ import annotations

from ..errors import did_you_mean
from . import Context, Fields, quality_or_one, safety_checkers, seed_or_zero, set_given

PROFILE = "oxen"
API = "Oxen.ai flux-kontext-dev"
MODEL = "flux-kontext-dev"
# replicate/cog-flux-kontext predict.py ASPECT_RATIOS: ratio -> (width, height)
ASPECT_RATIOS = {
    "1:1": (1024, 1024), "16:9": (1344, 768), "21:9": (1536, 640), "3:2": (1216, 832), "2:3": (832, 1216),
    "4:5": (896, 1088), "5:4": (1088, 896), "3:4": (896, 1152), "4:3": (1152, 896), "9:16": (768, 1344),
    "9:21": (640, 1536),
}
MATCH_INPUT = "match_input_image"
FORMATS = {"webp": "webp", "jpg": "jpeg", "png": "png"}  # Oxen's name -> output_format knob
INPUT_FORMATS = ("JPEG", "PNG", "GIF", "WEBP")  # input_image: "Must be jpeg, png, gif, or webp"
STEPS = (4, 50)
GUIDANCE = (0, 10)
QUALITY = (0, 100)


def convert(body: Fields, ctx: Context) -> list[dict]:
    model = body.string("model", required=True)
    if model != MODEL:
        raise ctx.error("model", f'"{model}" is not {MODEL}{did_you_mean(model, [MODEL])}: '
                                 "this importer reads FLUX.1-Kontext [dev] requests")
    case = {"name": ctx.stem, "profile": PROFILE, "prompt": body.string("prompt", required=True)}
    input_image = body.string("input_image", required=True)
    ratio = body.choice("aspect_ratio", tuple(ASPECT_RATIOS) + (MATCH_INPUT,), default="16:9")
    if ratio == MATCH_INPUT:
        case["size_source"] = "control_preferred"
    else:
        case["width"], case["height"] = ASPECT_RATIOS[ratio]
    set_given(case, steps=body.integer("num_inference_steps", lo=STEPS[0], hi=STEPS[1]),
              guidance=body.number("guidance", lo=GUIDANCE[0], hi=GUIDANCE[1]))
    case["seed"] = seed_or_zero(body.integer("seed", lo=0), ctx, "seed")
    output_format = body.choice("output_format", tuple(FORMATS))
    if output_format:
        case["output_format"] = FORMATS[output_format]
    quality = body.integer("output_quality", lo=QUALITY[0], hi=QUALITY[1])
    if quality is not None:
        case["output_quality"] = quality_or_one(quality, ctx, "output_quality")
    safety_checkers(body, "disable_safety_checker")
    body.unknown()
    case["control_image"] = ctx.image(input_image, "input_image", formats=INPUT_FORMATS)  # media last: body valid
    return [case]
