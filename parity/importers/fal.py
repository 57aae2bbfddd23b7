"""fal.ai fal-ai/flux-kontext-lora requests (seed 001: the endpoint's schema).

image_url and prompt required (the image at most 14142 px per side); num_inference_steps 10-50
(default 30), guidance_scale 0-20 (2.5), num_images 1-4, output_format jpeg|png, loras [{path,
scale}] (any number, merged), acceleration none|regular|high (only none is reproducible: the others
are refused), resolution_mode auto | match_input (default) | 11 ratios, seed, sync_mode,
enable_safety_checker (an image it passes is unchanged). resolution_mode becomes the case's size
knobs: match_input is the fal profile itself (the control image's size), auto the preferred Kontext
resolution nearest the input's aspect, a ratio BFL's 1 MP size for it (see the profile's notes).
"""
from __future__ import annotations

from ..knobs.sizing import aspect_ratio_size
from . import Context, Fields, per_image, refuse_acceleration, safety_checkers, seed_or_zero, set_given

PROFILE = "fal"
API = "fal-ai/flux-kontext-lora"
RATIOS = ("1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21")
RESOLUTION_MODES = ("auto", "match_input") + RATIOS
STEPS = (10, 50)
GUIDANCE = (0, 20)
OUTPUT_FORMATS = ("jpeg", "png")
MAX_IMAGE_SIDE = 14142  # image_url: "Max width: 14142px, Max height: 14142px"


def convert(body: Fields, ctx: Context) -> list[dict]:
    case = {"profile": PROFILE, "prompt": body.string("prompt", required=True)}
    image_url = body.string("image_url", required=True)
    set_given(case, steps=body.integer("num_inference_steps", lo=STEPS[0], hi=STEPS[1]),
              guidance=body.number("guidance_scale", lo=GUIDANCE[0], hi=GUIDANCE[1]))
    mode = body.choice("resolution_mode", RESOLUTION_MODES, default="match_input")
    if mode == "auto":
        case["size_source"] = "control_preferred"
    elif mode in RATIOS:
        case["size_source"] = "request"
        case["width"], case["height"] = aspect_ratio_size(mode)
    loras = body.objects("loras")
    lora_specs = [(lora, lora.string("path", required=True), lora.number("scale", default=1.0)) for lora in loras]
    for lora in loras:
        lora.unknown()
    set_given(case, output_format=body.choice("output_format", OUTPUT_FORMATS))
    refuse_acceleration(body, ctx)
    body.boolean("sync_mode")
    safety_checkers(body, "enable_safety_checker")
    count = body.integer("num_images", lo=1, hi=4, default=1)
    seed = seed_or_zero(body.integer("seed", lo=0), ctx, "seed")
    body.unknown()
    case["control_image"] = ctx.image(image_url, "image_url", max_side=MAX_IMAGE_SIDE)  # media last: body valid
    if lora_specs:
        case["loras"] = [[ctx.file(path, lora.path("path")), scale] for lora, path, scale in lora_specs]
    return per_image(case, count, seed, ctx)

