"""fal.ai fal-ai/flux-kontext-lora requests (seed 001: the endpoint's schema).

image_url and prompt required; num_inference_steps 10-50 (default 30), guidance_scale 0-20 (2.5),
num_images 1-4, output_format jpeg|png, loras [{path, scale}] (any number, merged), acceleration
none|regular|high, resolution_mode auto | match_input (default) | 11 ratios, seed, sync_mode,
enable_safety_checker. resolution_mode becomes the case's size knobs: match_input is the fal
profile itself (the control image's size), auto the preferred Kontext resolution nearest the
input's aspect, a ratio BFL's 1 MP size for it (see the profile's notes).
"""
from __future__ import annotations

from ..knobs.sizing import aspect_ratio_size
from . import Context, Fields, note_acceleration, per_image, seed_or_zero, set_given

PROFILE = "fal"
API = "fal-ai/flux-kontext-lora"
RATIOS = ("1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21")
RESOLUTION_MODES = ("auto", "match_input") + RATIOS


def convert(body: Fields, ctx: Context) -> list[dict]:
    case = {"profile": PROFILE, "prompt": body.string("prompt", required=True)}
    image_url = body.string("image_url", required=True)
    set_given(case, steps=body.integer("num_inference_steps", lo=10, hi=50),
              guidance=body.number("guidance_scale", lo=0, hi=20))
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
    set_given(case, output_format=body.choice("output_format", ("jpeg", "png")))
    note_acceleration(body, ctx)
    body.boolean("sync_mode")
    body.boolean("enable_safety_checker")
    count = body.integer("num_images", lo=1, hi=4, default=1)
    seed = seed_or_zero(body.integer("seed", lo=0), ctx, "seed")
    body.unknown()
    case["control_image"] = ctx.image(image_url, "image_url")  # media last: the body is valid by now
    if lora_specs:
        case["loras"] = [[ctx.file(path, lora.path("path")), scale] for lora, path, scale in lora_specs]
    return per_image(case, count, seed, ctx)

