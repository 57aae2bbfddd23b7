"""Request writers: a serving system's own request for an AI Toolkit preview, the inverse of ``parity.importers``.

`parity advise` searches a system's request fields and writes the request that best redraws the previews;
`parity import` reads it back into the very cases the search measured. One module per request format
(named like its importer) declares

  FORMAT                      its importer's --format (the importer's PROFILE is the system's profile)
  fields(previews)            the request fields a user sets, as ``Field``s in search order, each with a few
                              ``Choice``s: the system's default first, then values read off each preview
  document(items, files)      the request file (JSON) for [(preview, {field: value}), ...]: a list of bodies,
                              one per preview, or one ComfyUI graph with a branch per preview

A preview is its aitk-preview Case (``parity.aitk.preview_cases``): prompt, seed, steps, guidance, sizes,
LoRAs and the preview file as AI Toolkit drew them. A choice's value of None leaves the field out.
"""
from __future__ import annotations

import base64
import hashlib
import mimetypes
import os
import shutil
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

from ..case import Case
from ..errors import ParityError
from ..imaging import header_size
from ..knobs import lookup
from ..knobs.sizing import pipeline_output_size

# importer --format -> module here (same names as parity.importers.FORMATS)
FORMATS = {"aitk-inference": "aitk_inference", "fal": "fal", "lumenfall": "lumenfall", "oxen": "oxen",
           "prodia": "prodia", "comfyui": "comfyui"}


@dataclass(frozen=True)
class Choice:
    """One value of a request field: a constant (None: leave the field out) or a function of the preview."""

    label: str
    value: Any = None

    def resolve(self, preview: Case):
        return self.value(preview) if callable(self.value) else self.value


@dataclass(frozen=True)
class Field:
    """A request field the search varies: ``default`` is what the system does when a request leaves it out,
    ``choices`` the values the search tries, starting from the first. ``encoding``: it changes only how the
    output is encoded (so the search decides it on the chosen generation's own pixels)."""

    name: str
    default: Choice
    choices: tuple[Choice, ...]
    encoding: bool = False


def exporter(fmt: str):
    if fmt not in FORMATS:
        raise ParityError(f'no request writer for format "{fmt}"')
    return import_module(f".{FORMATS[fmt]}", __name__)


# --- values read off a preview ------------------------------------------------------------------------------


def output_size(preview: Case) -> tuple[int, int]:
    """The size AI Toolkit's preview came out at: the preview file's own, else what the case's size knobs give."""
    if preview.preview and Path(preview.preview).is_file():
        return header_size(preview.preview, "preview")
    width, height = lookup("snap", preview.snap)(*lookup("size_source", preview.size_source)(
        preview.width, preview.height, None))
    return pipeline_output_size(width, height, preview.max_area or width * height)


def chosen(values: dict, keys) -> dict:
    """The request fields among ``keys`` that the chosen values set (None: the field is left out)."""
    return {key: values[key] for key in keys if values.get(key) is not None}


def clamp(value, lo, hi):
    return max(lo, min(hi, value))


def steps_field(name: str, default: int, lo: int, hi: int, previews: list[Case]) -> Field:
    """The preview's step count (or the nearest the system takes): what drew the preview. Only where some preview's
    count cannot be sent is the system's default tried against it."""
    own = Choice(f"the preview's" if lo <= 1 else f"the preview's, at least {lo}", lambda p: clamp(p.steps, lo, hi))
    default_choice = Choice(f"{default} (default)")
    fits = all(lo <= p.steps <= hi for p in previews)
    return Field(name, default_choice, (own,) if fits else (own, default_choice))


def guidance_field(name: str, default: float, lo: float, hi: float | None) -> Field:
    top = hi if hi is not None else float("inf")
    own = Choice("the preview's" if hi is None else f"the preview's, within {lo:g}-{hi:g}",
                 lambda p: clamp(p.guidance, lo, top))
    default_choice = Choice(f"{default:g} (default)")
    return Field(name, default_choice, (own, default_choice))


def seed_field(name: str, default_label: str) -> Field:
    """The preview's seed draws the preview's noise; any other seed could only win by chance, so it is the one
    choice (the default, a random seed, is what the system's defaults are measured with)."""
    return Field(name, Choice(default_label), (Choice("the preview's", lambda p: p.seed),))


def lora_scale(preview: Case, factor: float = 1.0, lo: float = -100.0, hi: float = 100.0) -> float | None:
    """The preview's LoRA multiplier times ``factor`` (None without a LoRA)."""
    if not preview.loras:
        return None
    return round(clamp(preview.loras[0].scale * factor, lo, hi), 6)


def scale_field(name: str, default: float, lo: float = -100.0, hi: float = 100.0) -> Field:
    return Field(name, Choice(f"{default:g} (default)"), (
        Choice("the preview's", lambda p: lora_scale(p, 1.0, lo, hi)),
        Choice("0.9 x the preview's", lambda p: lora_scale(p, 0.9, lo, hi)),
        Choice("1.1 x the preview's", lambda p: lora_scale(p, 1.1, lo, hi))))


# --- files a request refers to ------------------------------------------------------------------------------


class Files:
    """How a request names its files: hosted APIs take the image inline (a data URI) and a LoRA by its location
    (its local path here: upload it and put its URL there); a ComfyUI graph names files in ComfyUI's input and
    models/loras folders, which ``folder`` (input/, loras/) holds: copies of the images, links to the LoRAs."""

    def __init__(self, folder: Path | None = None):
        self.folder = Path(folder) if folder else None
        self._names: dict[tuple[str, str], str] = {}

    def data_uri(self, path: str) -> str:
        data = Path(path).read_bytes()
        kind = mimetypes.guess_type(str(path))[0] or "image/png"
        return f"data:{kind};base64," + base64.b64encode(data).decode()

    def path(self, path: str) -> str:
        return str(Path(path).resolve())

    def input_name(self, path: str) -> str:
        return self._place(path, "input", copy=True)

    def lora_name(self, path: str) -> str:
        return self._place(path, "loras", copy=False)

    def _place(self, path: str, sub: str, *, copy: bool) -> str:
        """A unique file name in folder/sub for ``path`` (the same file keeps its name; another file of the same
        name gets its digest appended)."""
        if self.folder is None:
            raise ParityError("a ComfyUI graph names its files in ComfyUI's folders: give the request writer one")
        source = Path(path).resolve()
        key = (sub, str(source))
        if key in self._names:
            return self._names[key]
        digest = hashlib.sha256(source.read_bytes()).hexdigest()[:8] if copy else \
            hashlib.sha256(str(source).encode()).hexdigest()[:8]
        name = source.name
        taken = set(self._names.values())
        target_dir = self.folder / sub
        target_dir.mkdir(parents=True, exist_ok=True)
        if name in taken or (target_dir / name).exists() and not _same_file(target_dir / name, source, copy):
            name = f"{source.stem}-{digest}{source.suffix}"
        target = target_dir / name
        if not (target.exists() and _same_file(target, source, copy)):
            target.unlink(missing_ok=True)
            if copy:
                shutil.copyfile(source, target)
            else:
                try:
                    os.symlink(source, target)
                except OSError:  # no symlinks here: a copy
                    shutil.copyfile(source, target)
        self._names[key] = name
        return name


def _same_file(target: Path, source: Path, copy: bool) -> bool:
    if not copy and target.is_symlink():
        return target.resolve() == source
    return target.is_file() and target.read_bytes() == source.read_bytes()
