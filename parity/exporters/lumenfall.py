"""Lumenfall flux.1-kontext-dev request bodies (the lumenfall importer's fields, seed 003). The API has no LoRA
field. Steps and guidance stay within fal's ranges (the provider the page lists first; the page gives none)."""
from __future__ import annotations

from ..case import Case
from ..importers.fal import GUIDANCE, STEPS
from . import Choice, Field, Files, chosen, guidance_field, output_size, seed_field, steps_field

FORMAT = "lumenfall"
MODEL = "flux.1-kontext-dev"


def preview_size(preview: Case) -> str:
    width, height = output_size(preview)
    return f"{width}x{height}"


def fields(previews: list[Case]) -> list[Field]:
    by_input = Choice("left out (the 1K size nearest the input's aspect)")
    png = Choice("png (default)")
    quality = Choice("left out")
    return [
        Field("size", by_input, (by_input, Choice("the preview's WxH", preview_size))),
        steps_field("num_inference_steps", 30, *STEPS, previews),
        seed_field("seed", "random (0 here)"),
        guidance_field("cfg_scale", 2.5, *GUIDANCE),
        Field("output_format", png, (png, Choice("jpeg", "jpeg"), Choice("webp", "webp")), encoding=True),
        Field("output_compression", quality, (quality, Choice("75", 75), Choice("95", 95), Choice("100", 100)),
              encoding=True),
    ]


def body(preview: Case, values: dict, files: Files) -> dict:
    out = {"model": MODEL, "prompt": preview.prompt, "image": files.data_uri(preview.control_image)}
    out.update(chosen(values, ("size", "num_inference_steps", "cfg_scale", "seed", "output_format",
                               "output_compression")))
    return out


def document(items: list[tuple[Case, dict]], files: Files) -> list[dict]:
    return [body(preview, values, files) for preview, values in items]
