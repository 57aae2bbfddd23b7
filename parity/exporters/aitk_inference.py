"""ai-toolkit-inference requests for model flux_kontext (the aitk-inference importer's fields): one body per
preview, since a body takes exactly one LoRA."""
from __future__ import annotations

from ..case import Case
from ..errors import ParityError
from ..importers.aitk_inference import MODEL
from . import Choice, Field, Files, chosen, guidance_field, output_size, scale_field, seed_field, steps_field

FORMAT = "aitk-inference"
SIDE = (64, 4096)  # prompts[].width/height
STEPS = (1, 150)
GUIDANCE = (0, 20)
MULTIPLIER = (-2.0, 2.0)


def preview_size(preview: Case) -> list[int]:
    return [min(max(side, SIDE[0]), SIDE[1]) for side in output_size(preview)]


def fields(previews: list[Case]) -> list[Field]:
    square = Choice("1024x1024 (default)")
    return [
        Field("width/height", square, (square, Choice("the preview's", preview_size))),
        steps_field("sample_steps", 25, *STEPS, previews),
        seed_field("seed", "42 (default: 42 + prompt index)"),
        guidance_field("guidance_scale", 4.0, *GUIDANCE),
        scale_field("network_multiplier", 1.0, *MULTIPLIER),
    ]


def body(preview: Case, values: dict, files: Files) -> dict:
    if len(preview.loras) != 1:
        raise ParityError(f'preview "{preview.name}" has {len(preview.loras)} LoRAs; ai-toolkit-inference takes '
                          "exactly one per request (select LoRA previews: train_steps last)")
    prompt = {"prompt": preview.prompt, "ctrl_img": files.data_uri(preview.control_image)}
    if values.get("width/height") is not None:
        prompt["width"], prompt["height"] = values["width/height"]
    prompt.update(chosen(values, ("sample_steps", "guidance_scale", "seed")))
    lora = {"path": files.path(preview.loras[0].path)}
    if values.get("network_multiplier") is not None:
        lora["network_multiplier"] = values["network_multiplier"]
    return {"model": MODEL, "prompts": [prompt], "loras": [lora]}


def document(items: list[tuple[Case, dict]], files: Files) -> list[dict]:
    return [body(preview, values, files) for preview, values in items]
