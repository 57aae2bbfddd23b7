"""Prodia FLUX.1 Kontext [dev] jobs (the prodia importer's fields, seed 002). The image travels as the
multipart `input` part (`parity import --input`); the job has no LoRA field."""
from __future__ import annotations

from ..case import Case
from ..importers.prodia import JOB_TYPE, STEPS
from ..knobs.sizing import snap_prodia
from . import Choice, Field, Files, chosen, guidance_field, output_size, seed_field, steps_field

FORMAT = "prodia"


def fitted_size(preview: Case) -> list[int]:
    """The preview's size as close as a job can ask for it: into 512-1024 keeping the aspect, sides in 32s."""
    return list(snap_prodia(*output_size(preview)))


def fields(previews: list[Case]) -> list[Field]:
    square = Choice("1024x1024 (default)")
    return [
        Field("width/height", square, (square, Choice("the preview's, fitted into 512-1024 in 32s", fitted_size))),
        steps_field("steps", 30, *STEPS, previews),
        seed_field("seed", "random (0 here)"),
        guidance_field("guidance_scale", 2.5, 0, None),
    ]


def body(preview: Case, values: dict, files: Files) -> dict:
    config = {"prompt": preview.prompt}
    if values.get("width/height") is not None:
        config["width"], config["height"] = values["width/height"]
    config.update(chosen(values, ("steps", "guidance_scale", "seed")))
    return {"type": JOB_TYPE, "config": config}


def document(items: list[tuple[Case, dict]], files: Files) -> list[dict]:
    return [body(preview, values, files) for preview, values in items]


def inputs(items: list[tuple[Case, dict]]) -> list[str]:
    """The multipart images of the jobs, in order (`parity import --input`)."""
    return [preview.control_image for preview, _ in items]
