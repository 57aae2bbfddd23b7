"""A Case: one fully specified inference, every knob explicit.

Cases are what plans expand to and what the engine runs. They are flat (one column per
knob in the results table), immutable, validated on construction, and hashable into a
stable key so a rerun can tell which cases are already done.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import ParityError, did_you_mean
from .knobs import choices
from .validate import checked

DTYPES = ("bf16", "fp16", "fp32")


def _knob(family: str, default: str, doc: str, *, keyed_if_set: bool = False):
    """A knob field. ``keyed_if_set``: a field added after results were first stored; at its default it
    stays out of the case key, so earlier runs still resume."""
    return field(default=default, metadata={"family": family, "doc": doc, "keyed_if_set": keyed_if_set})


def _num(default, doc: str, lo, hi, *, integer: bool = False, nullable: bool = False):
    """A number field: its range, whether it must be whole and whether null is allowed live in the metadata."""
    return field(default=default, metadata={"doc": doc, "range": (lo, hi), "integer": integer, "nullable": nullable})


def _path(doc: str):
    return field(default=None, metadata={"doc": doc, "nullable": True})


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA file applied with a scale and a mode (see ``parity.knobs.lora_modes``)."""

    path: str = field(metadata={"doc": "the LoRA file (.safetensors)"})
    scale: float = _num(1.0, "multiplier of the LoRA delta", -100, 100)
    mode: str = _knob("lora_mode", "dynamic", "how the delta is added to the base weights")

    @classmethod
    def from_value(cls, value: Any, where: str) -> "LoraSpec":
        """A path, [path, scale, mode] or {path, scale, mode}; ``where`` names the case and the LoRA."""
        if isinstance(value, str):
            value = {"path": value}
        elif isinstance(value, (list, tuple)) and 1 <= len(value) <= 3:
            value = dict(zip(("path", "scale", "mode"), value))
        elif not isinstance(value, dict):
            raise ParityError(f"{where}: a LoRA is a path, [path, scale, mode] or {{path, scale, mode}}, not {value!r}")
        known = {f.name: f for f in fields(cls)}
        for key in value:
            if key not in known:
                raise ParityError(f'{where}: unknown LoRA key "{key}"{did_you_mean(key, known)}')
        if "path" not in value:
            raise ParityError(f"{where}: a LoRA needs a path")
        return cls(**{key: _coerce(known[key], v, where) for key, v in value.items()})


@dataclass(frozen=True)
class Case:
    """Everything that decides one output image (defaults: plain diffusers FluxKontextPipeline)."""

    name: str = field(default="case", metadata={"doc": "unique name within a plan"})
    prompt: str = field(default="", metadata={"doc": "the edit instruction, after trigger words and flags"})
    control_image: str | None = _path("path of the control (input) image")
    preview: str | None = _path("path of the image this output should reproduce")
    base_preview: str | None = _path("the base model's image for the same arguments (AI Toolkit's step-0 preview): "
                                     "the LoRA's own effect is measured against it")
    # sampling
    steps: int = _num(28, "denoising steps", 1, 1000, integer=True)
    guidance: float = _num(3.5, "guidance value (embedding for distilled guidance)", 0.0, 100.0)
    guidance_mode: str = _knob("guidance_mode", "embedded", "embedded | true_cfg")
    negative_prompt: str = field(default="", metadata={"doc": "used only by true_cfg"})
    true_cfg_scale: float = _num(1.0, "true CFG scale (true_cfg runs only when > 1)", 0.0, 100.0)
    seed: int = _num(0, "noise seed", 0, 2**63 - 1, integer=True)
    generator: str = _knob("generator", "cpu", "cpu | global | cuda")
    noise: str = _knob("noise", "latent", "how the initial noise is drawn (dtype, device)", keyed_if_set=True)
    # sizes
    width: int = _num(1024, "requested output width", 16, 16384, integer=True)
    height: int = _num(1024, "requested output height", 16, 16384, integer=True)
    size_source: str = _knob("size_source", "request", "where the requested size comes from")
    snap: str = _knob("snap", "none", "snapping rule for the requested size")
    max_area: int | None = _num(1024 * 1024, "pipeline max_area (null: width*height after snapping)", 256,
                                16384 * 16384, integer=True, nullable=True)
    latent_padding: str = _knob("latent_padding", "none", "output sides floored to 16 (none) or 8 (circular padding)",
                                keyed_if_set=True)
    # control image preparation
    control_exif_transpose: bool = field(default=False, metadata={"doc": "apply EXIF orientation"})
    control_alpha: str = _knob("alpha", "drop", "drop | white")
    control_target: str = _knob("control_target", "none", "size the control image is resized to first")
    control_resize: str = _knob("resize", "bilinear", "filter for that first resize")
    control_fit: str = _knob("fit", "stretch", "stretch | fit | crop")
    control_auto_resize: bool = field(default=True, metadata={"doc": "snap to a preferred Kontext resolution"})
    control_pipeline_resize: str = _knob("resize", "lanczos", "filter of the pipeline's own resize")
    control_encode: str = _knob("control_encode", "resize16", "the pipeline's step before the VAE: resize16 | crop8",
                                keyed_if_set=True)
    # scheduler
    sigma_schedule: str = _knob("sigma_schedule", "flux", "un-shifted sigmas")
    dynamic_shifting: bool = field(default=True, metadata={"doc": "resolution-dependent shift (mu)"})
    shift: float = _num(3.0, "static shift when dynamic shifting is off", 0.01, 100.0)
    base_shift: float = _num(0.5, "mu at base_image_seq_len", -10.0, 10.0)
    max_shift: float = _num(1.15, "mu at max_image_seq_len", -10.0, 10.0)
    sampler: str = _knob("sampler", "flow_match_euler", "the denoising step: flow_match_euler | euler_x0",
                         keyed_if_set=True)
    latent_dtype: str = _knob("latent_dtype", "model", "the sampler state's dtype: model | fp32", keyed_if_set=True)
    timestep_dtype: str = _knob("timestep_dtype", "model", "precision of the timestep's embedding input: model | fp32",
                                keyed_if_set=True)
    # prompt
    prompt_encoding: str = _knob("prompt_encoding", "diffusers", "tokens, padding and weights of CLIP and T5",
                                 keyed_if_set=True)
    text_encoder_dtype: str = _knob("text_encoder_dtype", "pipeline", "precision of CLIP and T5", keyed_if_set=True)
    # numerics
    dtype: str = field(default="bf16", metadata={"doc": "bf16 | fp16 | fp32", "choices": DTYPES})
    quantize: str = _knob("quantize", "none", "none | qfloat8 (transformer and T5) | fp8_* (transformer)")
    loras: tuple[LoraSpec, ...] = field(default=(), metadata={"doc": "LoRAs: [path, scale, mode]"})
    # speed knobs (they change the arithmetic, so they can change pixels)
    attention_backend: str = _knob("attention_backend", "native", "diffusers attention backend")
    compile: bool = field(default=False, metadata={"doc": "torch.compile the transformer"})
    channels_last: bool = field(default=False, metadata={"doc": "VAE convolutions in channels_last memory format"})
    # output
    output_format: str = _knob("output_format", "png", "png | jpeg | webp")
    output_quality: int | None = _num(None, "JPEG/WebP quality", 1, 100, integer=True, nullable=True)
    output_uint8: str = _knob("output_uint8", "round", "VAE output to 8 bits: round | truncate", keyed_if_set=True)
    # bookkeeping (not knobs): where the case came from, whether the gate counts it
    gated: bool = field(default=True, metadata={"doc": "count this case in `parity check`"})
    tags: tuple[tuple[str, str], ...] = field(default=(), metadata={"doc": "free labels (profile, checkpoint, ...)"})

    def __post_init__(self):
        where = f'case "{self.name}"'
        _validate(self, where)
        for i, lora in enumerate(self.loras):
            _validate(lora, f"{where}, loras[{i}]")

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict, *, source: str | None = None) -> "Case":
        """Build from YAML/JSON data; unknown keys and bad types name the key and a close match."""
        if not isinstance(data, dict):
            raise ParityError(f"a case must be a mapping, not {type(data).__name__}", source=source)
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        where = f'case "{data.get("name", "?")}"'
        try:
            for key, value in data.items():
                if key not in known:
                    raise ParityError(f'{where}: unknown key "{key}"{did_you_mean(key, known)}')
                values[key] = _coerce(known[key], value, where)
            return cls(**values)
        except ParityError as err:
            raise ParityError(err.problem, source=source or err.source) from None

    def replace(self, **changes) -> "Case":
        return dataclasses.replace(self, **changes)

    # --- views --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["loras"] = [dataclasses.asdict(lora) for lora in self.loras]
        data["tags"] = dict(self.tags)
        return data

    def columns(self) -> dict:
        """Flat knob columns for the results table (LoRAs joined into strings)."""
        data = self.to_dict()
        data["loras"] = ";".join(f"{lo['path']}@{lo['scale']}:{lo['mode']}" for lo in data["loras"])
        tags = data.pop("tags")
        data.update({f"tag_{k}": v for k, v in tags.items()})
        return data

    def key(self, pixels_only: bool = False) -> str:
        """Stable id of everything that decides the output (name and gating excluded); ``pixels_only``:
        of what decides the pipeline's pixels, so cases that differ only in how the output is encoded
        (format, quality) share it."""
        data = self.to_dict()
        for skip in ("name", "gated", "tags", "preview", "base_preview"):
            data.pop(skip)
        if pixels_only:
            data.pop("output_format"), data.pop("output_quality")
        for f in fields(self):
            if f.metadata.get("keyed_if_set") and data[f.name] == f.default:
                data.pop(f.name)
        blob = json.dumps(data, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def pipeline_variant(self) -> tuple:
        """The knobs that need a pipeline of their own: (dtype, quantize, compile, channels_last)."""
        return (self.dtype, self.quantize, self.compile, self.channels_last)

    def tag(self, name: str, default: str | None = None) -> str | None:
        return dict(self.tags).get(name, default)


def _validate(obj, where: str) -> None:
    """Knob names, choices and number ranges, as each field's metadata declares them (``parity.validate``)."""
    for f in fields(obj):
        value, meta = getattr(obj, f.name), f.metadata
        allowed = choices(meta["family"]) if meta.get("family") else meta.get("choices")
        if allowed is not None:
            checked(value, "string", f"{where}: {f.name}", choices=allowed)
        elif "range" in meta and value is not None:
            checked(value, "integer" if meta["integer"] else "number", f"{where}: {f.name}", lo=meta["range"][0],
                    hi=meta["range"][1])


def _coerce(f: dataclasses.Field, value: Any, where: str) -> Any:
    """A YAML/JSON value as the field's type, read from its default and metadata."""
    name, meta = f.name, f.metadata
    if name == "loras":
        if value is None:
            return ()
        if not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(LoraSpec.from_value(v, f"{where}, loras[{i}]") for i, v in enumerate(value))
    if name == "tags":
        return tuple(sorted((str(k), str(v)) for k, v in checked(value, "mapping", f"{where}: tags").items()))
    if value is None:
        if meta.get("nullable"):
            return None
        raise ParityError(f"{where}: {name} cannot be null")
    if isinstance(f.default, bool):
        return checked(value, "bool", f"{where}: {name}")
    if "range" in meta:
        return checked(value, "integer" if meta["integer"] else "number", f"{where}: {name}")
    return checked(value, "string", f"{where}: {name}")
