"""fal-ai/flux-kontext-lora request bodies (the fal importer's fields, seed 001)."""
from __future__ import annotations

from ..case import Case
from ..importers.fal import GUIDANCE, RATIOS, STEPS
from ..knobs.sizing import nearest_ratio
from . import Choice, Field, Files, chosen, guidance_field, output_size, scale_field, seed_field, steps_field

FORMAT = "fal"


def nearest_fal_ratio(preview: Case) -> str:
    """The resolution_mode ratio nearest the preview's aspect."""
    return nearest_ratio(*output_size(preview), RATIOS)


def fields(previews: list[Case]) -> list[Field]:
    match_input = Choice("match_input (default)")
    return [
        Field("resolution_mode", match_input, (match_input, Choice("auto", "auto"),
                                               Choice("the ratio nearest the preview's", nearest_fal_ratio))),
        steps_field("num_inference_steps", 30, *STEPS, previews),
        seed_field("seed", "random (0 here)"),
        guidance_field("guidance_scale", 2.5, *GUIDANCE),
        scale_field("loras[].scale", 1.0),
        Field("output_format", Choice("png (default)"), (Choice("png (default)"), Choice("jpeg", "jpeg")),
              encoding=True),
    ]


def body(preview: Case, values: dict, files: Files) -> dict:
    out = {"prompt": preview.prompt, "image_url": files.data_uri(preview.control_image)}
    out.update(chosen(values, ("num_inference_steps", "guidance_scale", "seed", "resolution_mode", "output_format")))
    if preview.loras:
        out["loras"] = [{"path": files.path(lora.path), **({"scale": values["loras[].scale"]}
                                                         if values.get("loras[].scale") is not None else {})}
                        for lora in preview.loras]
    return out


def document(items: list[tuple[Case, dict]], files: Files) -> list[dict]:
    return [body(preview, values, files) for preview, values in items]
