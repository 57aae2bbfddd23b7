"""Oxen.ai flux-kontext-dev request bodies (the oxen importer's fields, seed 004). The API has no LoRA field."""
from __future__ import annotations

from ..case import Case
from ..importers.oxen import ASPECT_RATIOS, GUIDANCE, MATCH_INPUT, MODEL, STEPS
from ..knobs.sizing import nearest_ratio
from . import Choice, Field, Files, chosen, guidance_field, output_size, seed_field, steps_field

FORMAT = "oxen"


def nearest_oxen_ratio(preview: Case) -> str:
    return nearest_ratio(*output_size(preview), ASPECT_RATIOS)


def fields(previews: list[Case]) -> list[Field]:
    default_ratio = Choice("16:9 (default)")
    webp = Choice("webp (default)")
    quality = Choice("80 (default)")
    return [
        Field("aspect_ratio", default_ratio, (default_ratio, Choice(MATCH_INPUT, MATCH_INPUT),
                                              Choice("the ratio nearest the preview's", nearest_oxen_ratio))),
        steps_field("num_inference_steps", 28, *STEPS, previews),
        seed_field("seed", "random (0 here)"),
        guidance_field("guidance", 2.5, *GUIDANCE),
        Field("output_format", webp, (Choice("png", "png"), webp, Choice("jpg", "jpg")), encoding=True),
        Field("output_quality", quality, (quality, Choice("75", 75), Choice("95", 95), Choice("100", 100)),
              encoding=True),
    ]


def body(preview: Case, values: dict, files: Files) -> dict:
    out = {"model": MODEL, "input_image": files.data_uri(preview.control_image), "prompt": preview.prompt}
    out.update(chosen(values, ("aspect_ratio", "num_inference_steps", "guidance", "seed", "output_format",
                               "output_quality")))
    return out


def document(items: list[tuple[Case, dict]], files: Files) -> list[dict]:
    return [body(preview, values, files) for preview, values in items]
