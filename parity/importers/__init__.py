"""Serving-API request bodies and ComfyUI workflows -> case files (`parity import FILE --format ...`).

A user who sees drift on a service has the request they sent; importing it gives the case
that runs the same thing under that service's profile. Each module reads one API's JSON
body and validates it as the API does (required fields, ranges, enums), so a request the
API would refuse is refused here too, with the file and the field named. Media a request
carries as base64 are written to disk; media it links (http(s) URLs) must already be on
this machine, found by file name in --control-dir, because kontext-parity never downloads.
LoRAs named by a bare file name (a ComfyUI workflow's) are found in --lora-dir; --base is written
into the case file. A module may read its file itself (``read_body``: a ComfyUI PNG's text chunk).
Converters load on demand, so importing this package (as the CLI does) stays cheap.
"""
from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from urllib.parse import unquote, urlparse

import yaml

from ..errors import ParityError, did_you_mean
from ..validate import problem

# --format value -> module in this package
FORMATS = {"aitk-inference": "aitk_inference", "fal": "fal", "lumenfall": "lumenfall", "oxen": "oxen",
           "comfyui": "comfyui"}
IMAGE_EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}
MISSING = object()


@dataclass
class Context:
    """What a converter needs besides the body: where files go, and notes for the user."""

    source: str  # the request file, for error messages
    stem: str  # case names start with it
    control_dir: Path | None  # local copies of URL media; base64 media are written here too
    write_dir: Path  # where decoded media go when control_dir is not given
    out_dir: Path | None  # paths in the case file are relative to it (absolute without --out)
    notes: list[str] = field(default_factory=list)
    lora_dir: Path | None = None  # where LoRAs named by file name are (ComfyUI's models/loras)

    def error(self, where: str, problem: str) -> ParityError:
        return ParityError(f"{where}: {problem}", source=self.source)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    # --- media ----------------------------------------------------------------------------
    def image(self, value, where: str) -> str:
        """A control image given as an http(s) URL, a data URI or bare base64 -> a path for the case file."""
        if not isinstance(value, str) or not value.strip():
            raise self.error(where, f"must be an image URL or base64 data, not {value!r}")
        value = value.strip()
        if _is_url(value):
            path = self._local_copy(value, where)
            _image_format(path.read_bytes(), lambda why: self.error(where, f"{value}: {path} {why}"))
            return self._ref(path)
        data = _decode_base64(value)
        if data is None:
            raise self.error(where, "is neither an http(s) URL nor base64 image data")
        ext = IMAGE_EXTENSIONS.get(_image_format(data, lambda why: self.error(where, f"base64 data {why}")), "png")
        folder = self.control_dir or self.write_dir
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.stem}-{hashlib.sha256(data).hexdigest()[:12]}.{ext}"
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)
        return self._ref(path)

    def file(self, value, where: str) -> str:
        """A LoRA path or URL: a URL needs its local copy; a relative path is looked up in --lora-dir when given;
        anything else is written as given."""
        if not isinstance(value, str) or not value.strip():
            raise self.error(where, f"must be a path or URL, not {value!r}")
        value = value.strip()
        if _is_url(value):
            return self._ref(self._local_copy(value, where))
        if self.lora_dir is not None and not Path(value).is_absolute():
            path = self.lora_dir / value
            if not path.is_file():
                raise self.error(where, f'"{value}" is not in --lora-dir {self.lora_dir}')
            return self._ref(path)
        base = self.out_dir or Path.cwd()
        if not (base / value).expanduser().is_file():
            self.note(f'{where} "{value}" is not a file here (paths are relative to the case file): '
                      "copy the LoRA there, pass --lora-dir or edit the path before `parity run`")
        return value

    def _local_copy(self, url: str, where: str) -> Path:
        name = Path(unquote(urlparse(url).path)).name  # unquoted first: %2F cannot climb out
        if not name:
            raise self.error(where, f"{url} names no file, so no local copy can be matched to it")
        if self.control_dir is None:
            raise self.error(where, f"{url} cannot be fetched (kontext-parity works offline): save it as "
                                    f"{name} in a folder and pass --control-dir FOLDER")
        path = self.control_dir / name
        if not path.is_file():
            raise self.error(where, f"{url} cannot be fetched (kontext-parity works offline) and "
                                    f"{self.control_dir} holds no {name}")
        return path

    def _ref(self, path: Path) -> str:
        path = path.resolve()
        if self.out_dir is None:
            return str(path)
        return os.path.relpath(path, self.out_dir.resolve())


class Fields:
    """One JSON object of the request; reads typed fields and remembers which keys were read."""

    def __init__(self, data, ctx: Context, where: str = ""):
        if not isinstance(data, dict):
            raise ctx.error(where or "request", f"must be a JSON object, not {type(data).__name__}")
        self.data, self.ctx, self.where, self.read = data, ctx, where, set()

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def _get(self, key: str, required: bool):
        self.read.add(key)
        value = self.data.get(key)
        if value is None:  # JSON null is "not given", as pydantic's Optional fields take it
            if required:
                raise self.ctx.error(self.path(key), "required field missing")
            return MISSING
        return value

    def _checked(self, key: str, kind: str, required: bool, default, **limits):
        value = self._get(key, required)
        if value is MISSING:
            return default
        wrong = problem(value, kind, **limits)
        if wrong:
            raise self.ctx.error(self.path(key), wrong)
        return int(value) if kind == "integer" else float(value) if kind == "number" else value

    def string(self, key: str, *, required: bool = False, default=None):
        return self._checked(key, "string", required, default)

    def integer(self, key: str, *, lo=None, hi=None, required: bool = False, default=None):
        return self._checked(key, "integer", required, default, lo=lo, hi=hi)

    def number(self, key: str, *, lo=None, hi=None, required: bool = False, default=None):
        return self._checked(key, "number", required, default, lo=lo, hi=hi)

    def boolean(self, key: str, *, default=None):
        return self._checked(key, "bool", False, default)

    def choice(self, key: str, choices, *, default=None):
        value = self._get(key, False)
        if value is MISSING:
            return default
        wrong = problem(value, ("string", "integer", "number", "bool"), choices=choices)
        if wrong:
            raise self.ctx.error(self.path(key), wrong)
        return value

    def objects(self, key: str, *, required: bool = False) -> list["Fields"]:
        """A list of JSON objects, each read with its index in the path (``loras[0].path``)."""
        value = self._get(key, required)
        if value is MISSING:
            return []
        if not isinstance(value, list):
            raise self.ctx.error(self.path(key), f"must be a list, not {type(value).__name__}")
        return [Fields(item, self.ctx, f"{self.path(key)}[{i}]") for i, item in enumerate(value)]

    def raw(self, key: str):
        """A field whose type varies (a string or a list); None when absent."""
        value = self._get(key, False)
        return None if value is MISSING else value

    def ignore(self, *keys: str) -> None:
        """Fields the API reads that change nothing kontext-parity measures (e.g. sync_mode)."""
        self.read.update(keys)

    def unknown(self, what: str = "is ignored by the API") -> None:
        """Note every key never read: a misspelt field is silently dropped by most APIs (a drift cause)."""
        for key in self.data:
            if key not in self.read:
                self.ctx.note(f"field {self.path(key)} {what}{did_you_mean(key, self.read)}")

def _is_url(value: str) -> bool:
    return value.lower().startswith(("http://", "https://"))


def _decode_base64(value: str) -> bytes | None:
    if value.startswith("data:"):
        header, _, value = value.partition(",")
        if ";base64" not in header:
            return None
    try:
        data = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    return data or None


def _image_format(data: bytes, error) -> str:
    """PIL's format name of image bytes; ``error(why)`` builds the exception when they are no image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            return image.format or "PNG"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise error("is not a readable image") from None


def seed_or_zero(seed, ctx: Context, where: str) -> int:
    """A request without a seed gets a random one from the service; no run can reproduce that."""
    if seed is None:
        ctx.note(f"{where} not given: the service draws a random seed; 0 is used here")
        return 0
    return seed


def quality_or_one(quality, ctx: Context, where: str):
    """APIs accept quality 0; a Case starts at 1 (PIL's JPEG/WebP differ by little there)."""
    if quality == 0:
        ctx.note(f"{where} 0 is run as 1 (a case's lowest quality)")
        return 1
    return quality


def set_given(case: dict, **values) -> None:
    """Put the request's values that were given into the case; one left out keeps the profile's default."""
    case.update({key: value for key, value in values.items() if value is not None})


def note_acceleration(body: Fields, ctx: Context) -> None:
    """fal's `acceleration` speed presets (also passed on by Lumenfall): validated, not modelled."""
    acceleration = body.choice("acceleration", ("none", "regular", "high"), default="none")
    if acceleration != "none":
        ctx.note(f'acceleration "{acceleration}" (fal\'s speed presets) is not modelled: the case runs without it')


def per_image(case: dict, count: int, seed: int, ctx: Context) -> list[dict]:
    """One case per requested image; services' seeds after the first are undocumented: seed + i here."""
    if count > 1:
        ctx.note(f"{count} images: image i is run with seed + i (the service's per-image noise is undocumented)")
    return [{"name": ctx.stem if count == 1 else f"{ctx.stem}/img{i}", **copy.deepcopy(case), "seed": seed + i}
            for i in range(count)]


def import_request(path: str | Path, fmt: str, *, out: str | Path | None = None,
                   control_dir: str | Path | None = None, lora_dir: str | Path | None = None,
                   base: str | None = None) -> tuple[str, list[str]]:
    """Read a request file and return (case file YAML text, notes); writes decoded media to disk."""
    if fmt not in FORMATS:
        raise ParityError(f'unknown request format "{fmt}"{did_you_mean(fmt, FORMATS)}; '
                          f"choose one of: {', '.join(FORMATS)}")
    path = Path(path)
    if not path.is_file():
        raise ParityError("request file not found", source=path)
    module = import_module(f".{FORMATS[fmt]}", __name__)
    body = module.read_body(path) if hasattr(module, "read_body") else read_json(path)
    folders = {}
    for option, folder in (("--control-dir", control_dir), ("--lora-dir", lora_dir)):
        if folder is not None:
            folder = Path(folder).expanduser()
            if not folder.is_dir():
                raise ParityError(f"{option} is not a folder", source=folder)
        folders[option] = folder
    out_dir = Path(out).expanduser().resolve().parent if out else None
    ctx = Context(source=str(path), stem=_slug(path.stem), control_dir=folders["--control-dir"],
                  write_dir=out_dir or Path.cwd(), out_dir=out_dir, lora_dir=folders["--lora-dir"])
    cases = module.convert(Fields(body, ctx), ctx)
    for case in cases:
        case.setdefault("tags", {}).update({"request": path.name, "request_format": fmt})
    if base and Path(base).expanduser().is_dir():  # a local folder: absolute, so the case file runs from anywhere
        base = str(Path(base).expanduser().resolve())
    kind = getattr(module, "KIND", "request")
    header = (f"# `parity import --format {fmt} {path.name}`: the {kind} as cases of the `{module.PROFILE}` "
              "profile.\n# On the real model: parity run THIS_FILE --base black-forest-labs/FLUX.1-Kontext-dev\n")
    description = f"{module.API} {kind} {path.name}" + ("; " + "; ".join(ctx.notes) if ctx.notes else "")
    data = {"description": description, **({"base": base} if base else {}), "cases": cases}
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120)
    return header + text, ctx.notes


def read_json(path: Path):
    """A request file's JSON (only ever parsed as JSON)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ParityError(f"not valid JSON: {err}", source=path) from None


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text) or "request"
