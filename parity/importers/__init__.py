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
           "prodia": "prodia", "comfyui": "comfyui"}
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
    input: Path | None = None  # the image a body does not carry (a Prodia job's multipart `input` part)
    prefix: str = ""  # "[i]" for the i-th body of a JSON array of requests

    def error(self, where: str, problem: str) -> ParityError:
        return ParityError(f"{self.prefix}{where}: {problem}", source=self.source)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    # --- media ----------------------------------------------------------------------------
    def image(self, value, where: str, *, formats: tuple[str, ...] | None = None,
              max_side: int | None = None) -> str:
        """A control image given as an http(s) URL, a data URI or bare base64 -> a path for the case file.

        ``formats``: the image formats the API accepts (PIL names); ``max_side``: its largest width/height."""
        if not isinstance(value, str) or not value.strip():
            raise self.error(where, f"must be an image URL or base64 data, not {value!r}")
        value = value.strip()
        if _is_url(value):
            path = self._local_copy(value, where)
            self._check_image(path.read_bytes(), where, f"{value}: {path}", formats, max_side)
            return self._ref(path)
        data = _decode_base64(value)
        if data is None:
            raise self.error(where, "is neither an http(s) URL nor base64 image data")
        ext = IMAGE_EXTENSIONS.get(self._check_image(data, where, "base64 data", formats, max_side), "png")
        folder = self.control_dir or self.write_dir
        folder.mkdir(parents=True, exist_ok=True)
        # named after the request file, not the request: every body of an array shares its decoded copies
        path = folder / f"{_slug(Path(self.source).stem)}-{hashlib.sha256(data).hexdigest()[:12]}.{ext}"
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)
        return self._ref(path)

    def local_image(self, path: Path, where: str, **limits) -> str:
        """An image file given on the command line (a multipart part the body does not carry)."""
        self._check_image(Path(path).read_bytes(), where, str(path), limits.get("formats"), limits.get("max_side"))
        return self._ref(Path(path))

    def _check_image(self, data: bytes, where: str, what: str, formats, max_side) -> str:
        found = _image_format(data, lambda why: self.error(where, f"{what} {why}"))
        if formats is not None and found not in formats:
            raise self.error(where, f"{what} is a {found} image; the API accepts {', '.join(formats)}")
        if max_side is not None:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
            if max(width, height) > max_side:
                raise self.error(where, f"{what} is {width}x{height}; the API takes at most {max_side} px per side")
        return found

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

    def _file(self, ref: str) -> Path:
        """The file a reference written by ``_ref`` names (relative references are to the case file's folder)."""
        path = Path(ref)
        return path if path.is_absolute() or self.out_dir is None else self.out_dir.resolve() / path


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

    def mapping(self, key: str, *, required: bool = False) -> "Fields | None":
        """A nested JSON object, read with its key in the path (``config.prompt``); None when absent."""
        value = self._get(key, required)
        if value is MISSING:
            return None
        return Fields(value, self.ctx, self.path(key))

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


def refuse_acceleration(body: Fields, ctx: Context) -> None:
    """fal's `acceleration` speed presets (also passed on by Lumenfall): the documents say only "the higher the
    speed, the faster the generation", not what changes (steps, caching, precision), so a request with one
    cannot be reproduced and is refused; "none" (the default) is what every profile models."""
    acceleration = body.choice("acceleration", ("none", "regular", "high"), default="none")
    if acceleration != "none":
        raise ctx.error("acceleration", f'"{acceleration}" (fal\'s speed presets) changes the computation in ways '
                                        'the API does not document, so it cannot be reproduced; send "none" to '
                                        "compare, or leave the field out")


def safety_checkers(body: Fields, *keys: str) -> None:
    """Safety-checker switches (fal's enable_safety_checker, Replicate's and Oxen's disable_safety_checker):
    validated and read. A checker filters flagged outputs; an image it passes is delivered unchanged, which
    is what a case computes (what a flagged image becomes is undocumented and not modelled)."""
    for key in keys:
        body.boolean(key)


def per_image(case: dict, count: int, seed: int, ctx: Context) -> list[dict]:
    """One case per requested image; services' seeds after the first are undocumented: seed + i here."""
    if count > 1:
        ctx.note(f"{count} images: image i is run with seed + i (the service's per-image noise is undocumented)")
    return [{"name": ctx.stem if count == 1 else f"{ctx.stem}/img{i}", **copy.deepcopy(case), "seed": seed + i}
            for i in range(count)]


def import_request(path: str | Path, fmt: str, *, out: str | Path | None = None,
                   control_dir: str | Path | None = None, lora_dir: str | Path | None = None,
                   base: str | None = None, inputs: list[str | Path] | tuple = ()) -> tuple[str, list[str]]:
    """Read a request file and return (case file YAML text, notes); writes decoded media to disk.

    The file holds one request body, or a JSON array of them (what `parity advise` writes: one body
    per preview), each imported in turn. ``inputs``: image files a format's body does not carry (the
    multipart `input` part of a Prodia job): one for every body, or one for all."""
    module = _module(fmt)
    path = Path(path)
    if not path.is_file():
        raise ParityError("request file not found", source=path)
    body = module.read_body(path) if hasattr(module, "read_body") else read_json(path)
    folders = {}
    for option, folder in (("--control-dir", control_dir), ("--lora-dir", lora_dir)):
        if folder is not None:
            folder = Path(folder).expanduser()
            if not folder.is_dir():
                raise ParityError(f"{option} is not a folder", source=folder)
        folders[option] = folder
    out_dir = Path(out).expanduser().resolve().parent if out else None
    cases, notes = import_body(body, fmt, source=path, write_dir=out_dir or Path.cwd(), out_dir=out_dir,
                               control_dir=folders["--control-dir"], lora_dir=folders["--lora-dir"], inputs=inputs)
    if base and Path(base).expanduser().is_dir():  # a local folder: absolute, so the case file runs from anywhere
        base = str(Path(base).expanduser().resolve())
    kind = getattr(module, "KIND", "request")
    header = (f"# `parity import --format {fmt} {path.name}`: the {kind} as cases of the `{module.PROFILE}` "
              "profile.\n# On the real model: parity run THIS_FILE --base black-forest-labs/FLUX.1-Kontext-dev\n")
    description = f"{module.API} {kind} {path.name}" + ("; " + "; ".join(notes) if notes else "")
    data = {"description": description, **({"base": base} if base else {}), "cases": cases}
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120)
    return header + text, notes


def import_body(body, fmt: str, *, source: str | Path, write_dir: Path, out_dir: Path | None = None,
                control_dir: Path | None = None, lora_dir: Path | None = None,
                inputs: list[str | Path] | tuple = ()) -> tuple[list[dict], list[str]]:
    """Case dicts (a case file's `cases:`) and notes of a parsed body, or of a JSON array of bodies.

    ``source`` names the file in messages and tags; base64 media are decoded into ``control_dir``, else
    ``write_dir``; paths are relative to ``out_dir`` (absolute without it)."""
    module = _module(fmt)
    source = Path(source)
    bodies = body if isinstance(body, list) else [body]
    if isinstance(body, list) and not body:
        raise ParityError("the JSON array holds no request", source=source)
    files = [Path(p).expanduser() for p in inputs]
    for file in files:
        if not file.is_file():
            raise ParityError("--input image not found", source=file)
    takes_input = getattr(module, "TAKES_INPUT", False)
    if files and not takes_input:
        raise ParityError(f"--input: a {fmt} request carries its image itself", source=source)
    if takes_input and files and len(files) not in (1, len(bodies)):
        raise ParityError(f"{len(files)} --input images for {len(bodies)} requests: give one for every request "
                          "(in order) or one for all", source=source)
    stem, cases, notes = _slug(source.stem), [], []
    for i, item in enumerate(bodies):
        many = isinstance(body, list)
        ctx = Context(source=str(source), stem=f"{stem}/{i}" if many else stem, control_dir=control_dir,
                      write_dir=write_dir, out_dir=out_dir, lora_dir=lora_dir,
                      input=(files[i] if len(files) > 1 else files[0]) if files else None,
                      prefix=f"[{i}]." if many else "")
        for case in module.convert(Fields(item, ctx), ctx):
            case.setdefault("tags", {}).update({"request": source.name, "request_format": fmt})
            if many:
                case["tags"]["request_index"] = i
            cases.append(case)
        notes += [note for note in ctx.notes if note not in notes]
    return cases, notes


def _module(fmt: str):
    if fmt not in FORMATS:
        raise ParityError(f'unknown request format "{fmt}"{did_you_mean(fmt, FORMATS)}; '
                          f"choose one of: {', '.join(FORMATS)}")
    return import_module(f".{FORMATS[fmt]}", __name__)


def read_json(path: Path):
    """A request file's JSON (only ever parsed as JSON)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ParityError(f"not valid JSON: {err}", source=path) from None


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text) or "request"
