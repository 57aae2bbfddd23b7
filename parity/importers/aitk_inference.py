"""ai-toolkit-inference requests for model flux_kontext (the reference server for AI Toolkit LoRAs).

Schema (kontext-facts §2; runcomfy-com/ai-toolkit-inference src/schemas/request.py and
src/tasks/executor.py): model, trigger_word, prompts[] {prompt, trigger_word, width, height
(64-4096), seed (>= -1, -1 random), sample_steps (1-150), guidance_scale (0-20), neg, ctrl_img},
loras[] {path, network_multiplier in [-2, 2]}. Kontext takes exactly one LoRA and needs a control
image; a prompt without a seed gets 42 + its index; `[trigger]` is replaced only when a trigger
word is set. Defaults for what a prompt leaves out come from the aitk-inference profile.
"""
from __future__ import annotations

from ..errors import did_you_mean
from . import Context, Fields, set_given

PROFILE = "aitk-inference"
API = "ai-toolkit-inference"
MODEL = "flux_kontext"
BASE_SEED = 42


def convert(body: Fields, ctx: Context) -> list[dict]:
    model = body.string("model", required=True)
    if model != MODEL:
        raise ctx.error("model", f'"{model}" is not {MODEL}{did_you_mean(model, [MODEL])}: '
                                 "this importer reads FLUX.1-Kontext requests")
    trigger = body.string("trigger_word")
    body.ignore("hf_token")  # a credential: read by the server, never copied into a case file
    loras = body.objects("loras", required=True)
    if len(loras) != 1:
        raise ctx.error("loras", f"flux_kontext takes exactly one LoRA per request, not {len(loras)}")
    lora = loras[0]
    lora_path = lora.string("path", required=True)
    scale = lora.number("network_multiplier", lo=-2.0, hi=2.0, default=1.0)
    lora.unknown()
    prompts = body.objects("prompts", required=True)
    if not prompts:
        raise ctx.error("prompts", "at least one prompt must be provided")
    cases = [_prompt_case(item, i, trigger, ctx) for i, item in enumerate(prompts)]
    body.unknown("is not used for flux_kontext")
    # media last, as the server validates the whole body before it loads any image
    lora_spec = [ctx.file(lora_path, lora.path("path")), scale]
    for case, item in zip(cases, prompts):
        case["control_image"] = ctx.image(case["control_image"], item.path("ctrl_img"))
        case["loras"] = [list(lora_spec)]
    return cases


def _prompt_case(item: Fields, index: int, trigger: str | None, ctx: Context) -> dict:
    """The prompt's case, its control_image still the request's value (URL or base64)."""
    text = item.string("prompt", required=True)
    local_trigger = item.string("trigger_word") or trigger
    if local_trigger:
        text = text.replace("[trigger]", local_trigger)
    elif "[trigger]" in text:
        ctx.note(f"{item.path('prompt')} keeps a literal [trigger]: no trigger_word is set")
    for extra in ("ctrl_img_1", "ctrl_img_2", "ctrl_img_3"):
        if item.raw(extra) is not None:
            raise ctx.error(item.path(extra), "several control images are not modelled by kontext-parity; "
                                              "send the one image as ctrl_img")
    ctrl = item.raw("ctrl_img")
    if ctrl is None:
        raise ctx.error(item.path("ctrl_img"), "required field missing: flux_kontext edits a control image "
                                               "(base64 data or an http(s) URL)")
    case = {"name": f"{ctx.stem}/p{index}", "profile": PROFILE, "prompt": text, "control_image": ctrl}
    set_given(case, width=item.integer("width", lo=64, hi=4096), height=item.integer("height", lo=64, hi=4096),
              steps=item.integer("sample_steps", lo=1, hi=150), guidance=item.number("guidance_scale", lo=0, hi=20))
    seed = item.integer("seed", lo=-1)
    if seed is None:
        seed = BASE_SEED + index  # the server's default: 42 + prompt index
    elif seed == -1:
        ctx.note(f"{item.path('seed')} -1 draws a random seed on the server; 0 is used here")
        seed = 0
    case["seed"] = seed
    neg = item.string("neg")
    if neg:
        case["negative_prompt"] = neg  # read by the server, unused by Kontext's embedded guidance
    item.unknown("is not used for flux_kontext")
    return case
