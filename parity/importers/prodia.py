"""Prodia FLUX.1 Kontext [dev] jobs (seed 002: "Dev — flux-fast.dev-kontext.img2img.v1").

The job is JSON, {"type": "inference.flux-fast.dev-kontext.img2img.v1", "config": {...}}, sent with the
image to edit as the multipart `input` part, so the image comes from `--input FILE` (one for every job
of a JSON array, or one for all). config: prompt (required, 3-4,096 characters); width and height
(512-1040 in multiples of 32, default 1024); steps (1-50, default 30); guidance_scale (default 2.5, no
range given: any non-negative number); seed; style_preset (one of 17 names: its effect is not
documented, so a job with one is refused); progressive (a progressive JPEG response: the same pixels as
a baseline JPEG, only the byte order differs, so it changes nothing a case computes). The Pro and Max
job types run BFL's closed models and are refused. The response's format follows the Accept header,
which a job file does not carry: the prodia-dev profile assumes PNG.
"""
from __future__ import annotations

from ..errors import did_you_mean
from . import Context, Fields, seed_or_zero, set_given

PROFILE = "prodia-dev"
API = "Prodia inference.flux-fast.dev-kontext.img2img.v1"
KIND = "job"
TAKES_INPUT = True  # the image is the multipart `input` part, not a field of the JSON
JOB_TYPE = "inference.flux-fast.dev-kontext.img2img.v1"
CLOSED_TYPES = ("inference.flux-kontext.pro.txt2img.v2", "inference.flux-kontext.pro.img2img.v2",
                "inference.flux-kontext.max.txt2img.v2", "inference.flux-kontext.max.img2img.v2")
STYLE_PRESETS = ("3d-model", "analog-film", "anime", "cinematic", "comic-book", "craft-clay", "digital-art",
                 "enhance", "fantasy-art", "isometric", "line-art", "low-poly", "neon-punk", "origami",
                 "photographic", "pixel-art", "texture")
PROMPT_CHARS = (3, 4096)
SIDE = (512, 1040)  # "512–1040 in multiples of 32"
SIDE_STEP = 32
STEPS = (1, 50)


def convert(body: Fields, ctx: Context) -> list[dict]:
    job_type = body.string("type", required=True)
    if job_type in CLOSED_TYPES:
        raise ctx.error("type", f'"{job_type}" runs FLUX.1 Kontext [pro] or [max], closed models hosted by Black '
                                f"Forest Labs that no case can run; this importer reads {JOB_TYPE} jobs")
    if job_type != JOB_TYPE:
        raise ctx.error("type", f'"{job_type}" is not {JOB_TYPE}{did_you_mean(job_type, [JOB_TYPE])}')
    config = body.mapping("config", required=True)
    prompt = config.string("prompt", required=True)
    if not PROMPT_CHARS[0] <= len(prompt) <= PROMPT_CHARS[1]:
        raise ctx.error(config.path("prompt"), f"must have {PROMPT_CHARS[0]}-{PROMPT_CHARS[1]} characters, "
                                               f"not {len(prompt)}")
    case = {"name": ctx.stem, "profile": PROFILE, "prompt": prompt}
    width, height = (_side(config, key, ctx) for key in ("width", "height"))
    set_given(case, width=width, height=height, steps=config.integer("steps", lo=STEPS[0], hi=STEPS[1]),
              guidance=config.number("guidance_scale", lo=0))
    case["seed"] = seed_or_zero(config.integer("seed", lo=0), ctx, "config.seed")
    preset = config.choice("style_preset", STYLE_PRESETS)
    if preset is not None:
        raise ctx.error(config.path("style_preset"), f'"{preset}": what a preset does to the prompt or the '
                                                     "pipeline is not documented, so the job cannot be reproduced; "
                                                     "leave style_preset out to compare")
    config.boolean("progressive")  # the byte order of a JPEG response; its pixels are a baseline JPEG's
    config.unknown()
    body.unknown()
    if ctx.input is None:
        raise ctx.error("input", "a Prodia job sends its image as the multipart `input` part: pass that image "
                                 "with --input FILE")
    case["control_image"] = ctx.local_image(ctx.input, "--input")
    return [case]


def _side(config: Fields, key: str, ctx: Context) -> int | None:
    value = config.integer(key, lo=SIDE[0], hi=SIDE[1])
    if value is not None and value % SIDE_STEP:
        raise ctx.error(config.path(key), f"{value} is not a multiple of {SIDE_STEP} (Prodia takes {SIDE[0]}-"
                                          f"{SIDE[1]} in multiples of {SIDE_STEP})")
    return value
