"""Reading an AI Toolkit job config the way AI Toolkit reads it.

AI Toolkit (toolkit/config.py) loads YAML with an extra float rule, substitutes ``${ENV}``
(in the raw text; here in each parsed scalar, which gives the same values unless a value would
have changed the YAML structure) and ``[name]`` in the whole config, then each section becomes a config object whose
``kwargs.get`` defaults fill whatever the file leaves out (toolkit/config_modules.py).
The defaults below are those; a preview can only be reproduced from the values AI Toolkit
actually used, so a missing key means its default, never a guess. Bad input raises a
ParityError naming the file and the key.
"""
from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from ..errors import ParityError
from ..validate import problem
from ..yamlfile import read_text, read_yaml_mapping

# SampleItem keys AI Toolkit reads (config_modules.SampleItem); anything else it ignores.
SAMPLE_ITEM_KEYS = ("prompt", "width", "height", "neg", "seed", "guidance_scale", "sample_steps", "fps",
                    "num_frames", "ctrl_img", "ctrl_idx", "ctrl_img_1", "ctrl_img_2", "ctrl_img_3",
                    "network_multiplier", "do_cfg_norm")
# Sections that change what a preview looks like and that kontext-parity does not model.
UNMODELLED_PROCESS_KEYS = ("embedding", "adapter", "decorator")
UNMODELLED_MODEL_KEYS = ("assistant_lora_path", "inference_lora_path")
KONTEXT_ARCH = "flux_kontext"
ENV_VAR = re.compile(r"\$\{([^}]+)\}")  # AI Toolkit's replace_env_vars_in_string pattern


def _env(var: str, used: set[str]) -> str:
    """The environment variable's value (``${VAR}`` as written when unset); its name is added to ``used``."""
    used.add(var)
    return os.environ.get(var, f"${{{var}}}")


def _substitute(text: str, used: set[str]) -> str:
    return ENV_VAR.sub(lambda match: _env(match[1], used), text)


class _AitkLoader(yaml.SafeLoader):
    """Safe YAML plus AI Toolkit's rule that 1e-4 and 1.5e3 are floats (plain YAML 1.1 reads strings), and
    its ${VAR} substitution. AI Toolkit substitutes the text before parsing; here each ${VAR} is first
    replaced by a plain word, so the structure comes from the file alone (an environment value cannot
    change it), and the value goes into its scalar before the scalar's type is resolved: an unquoted
    ``${SEED}`` becomes a number, in block and flow style alike, as in AI Toolkit."""

    def __init__(self, text: str, used: set[str]):
        marker = f"parityenv{uuid.uuid4().hex}"
        self.variables: list[str] = []

        def word(match: re.Match) -> str:
            self.variables.append(match[1])
            return f"{marker}{len(self.variables) - 1}x"

        super().__init__(ENV_VAR.sub(word, text))
        self.word = re.compile(marker + r"(\d+)x")
        self.used = used

    def compose_scalar_node(self, anchor):
        event = self.peek_event()
        event.value = self.word.sub(lambda match: _env(self.variables[int(match[1])], self.used), event.value)
        return super().compose_scalar_node(anchor)


_AitkLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


@dataclass(frozen=True)
class SampleItemSettings:
    """One entry of AI Toolkit's ``samples`` list, with SampleConfig's values filled in."""

    prompt: str | None
    width: int
    height: int
    neg: Any
    seed: int | None
    guidance_scale: float
    sample_steps: int
    network_multiplier: float
    ctrl_img: str | None


@dataclass(frozen=True)
class SampleSettings:
    """A ``sample`` (or ``first_sample``) section as AI Toolkit's SampleConfig holds it."""

    key: str
    sampler: str
    sample_every: int
    sample_start_step: int
    width: int
    height: int
    neg: Any
    seed: int
    walk_seed: bool
    guidance_scale: float
    sample_steps: int
    network_multiplier: float | str
    ext: str
    items: tuple[SampleItemSettings, ...]

    @property
    def prompts(self) -> list[str]:
        """SampleConfig.prompts: prompts of the items that have one (prompt i is paired with items[i])."""
        return [item.prompt for item in self.items if item.prompt is not None]


@dataclass(frozen=True)
class JobConfig:
    """The facts of one training process that decide its previews."""

    path: str
    name: str  # config.name: the LoRA files are named after it
    process_index: int
    process_name: str  # the run folder's name (training_folder/<process name>)
    trigger_word: str | None
    sample: SampleSettings
    first_sample: SampleSettings | None
    network_type: str | None  # None: no network (full fine-tune)
    network_linear: int | None
    network_linear_alpha: float | None
    pretrained_lora_path: str | None
    name_or_path: str
    arch: str
    quantize: bool
    quantize_te: bool
    qtype: str
    layer_offloading: bool
    train_dtype: str
    train_steps: int
    skip_first_sample: bool
    save_dtype: str
    save_every: int
    max_step_saves_to_keep: int
    unmodelled: tuple[str, ...]  # config keys whose effect on previews is not reproduced
    notes: tuple[str, ...]


def load_job_config(path: str | Path, *, run_name: str | None = None) -> JobConfig:
    """Parse a job config file (YAML or JSON); ``run_name`` picks the process when several sample."""
    path = Path(path)
    data, env_vars = _read(path)
    reader = _Reader(path)
    root = reader.mapping(data, "the file")
    config = reader.mapping(reader.require(root, "config", "the file"), "config")
    name = reader.require(config, "name", "config")
    if not isinstance(name, str) or not name:
        raise ParityError(f"config.name must be a non-empty string, not {name!r}", source=path)
    config = _replace_name(config, name)
    processes = reader.require(config, "process", "config")
    if not isinstance(processes, list) or not processes:
        raise ParityError("config.process must be a non-empty list of processes", source=path)
    notes: list[str] = []
    if env_vars:
        notes.append(f"the config uses environment variables {', '.join(sorted(env_vars))}: their values here were "
                     "substituted, as AI Toolkit does when it loads the config (the training machine's may differ)")
    index = _pick_process(processes, name, run_name, reader, notes)
    where = f"config.process[{index}]"
    process = processes[index]
    return _job(reader, process, where, name, index, notes)


def _read(path: Path) -> tuple[Any, set[str]]:
    """The parsed file (JSON or YAML by suffix, as AI Toolkit decides) and the environment variables it uses."""
    suffix = path.suffix.lower()
    used: set[str] = set()
    if suffix in (".yaml", ".yml"):
        data = read_yaml_mapping(path, what="config file", loader=partial(_AitkLoader, used=used))
    elif suffix in (".json", ".jsonc"):
        try:
            data = _substitute_json(json.loads(read_text(path, what="config file")), used)
        except json.JSONDecodeError as err:
            raise ParityError(f"malformed JSON: {err}", source=path) from None
    else:
        raise ParityError("a job config must be .yaml, .yml, .json or .jsonc (as AI Toolkit requires)", source=path)
    unset = sorted(var for var in used if var not in os.environ)
    if unset:
        raise ParityError(f"the config uses ${{{unset[0]}}} and environment variable {unset[0]} is not set "
                          "(AI Toolkit substitutes it when it loads the config)", source=path)
    return data, used


def _substitute_json(value: Any, used: set[str]) -> Any:
    """${VAR} substitution in every string of a parsed JSON config (keys included, as in AI Toolkit's text)."""
    if isinstance(value, str):
        return _substitute(value, used)
    if isinstance(value, dict):
        return {_substitute(k, used): _substitute_json(v, used) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute_json(v, used) for v in value]
    return value


def _replace_name(value: Any, name: str) -> Any:
    """AI Toolkit replaces the tag [name] with config.name everywhere (a no-op on its saved config.yaml)."""
    if isinstance(value, str):
        return value.replace("[name]", name)
    if isinstance(value, dict):
        return {_replace_name(k, name): _replace_name(v, name) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_name(v, name) for v in value]
    return value


def _pick_process(processes: list, name: str, run_name: str | None, reader: "_Reader", notes: list) -> int:
    sampling = []
    for i, process in enumerate(processes):
        reader.mapping(process, f"config.process[{i}]")
        if "sample" in process:
            sampling.append(i)
    if not sampling:
        raise ParityError("no process in config.process has a `sample` section, so it drew no previews",
                          source=reader.path)
    if len(sampling) > 1:
        named = [i for i in sampling if processes[i].get("name", name) == run_name]
        chosen = named[0] if named else sampling[0]
        notes.append(f"processes {sampling} all sample; using config.process[{chosen}]")
        return chosen
    return sampling[0]


def _job(reader: "_Reader", process: dict, where: str, name: str, index: int, notes: list) -> JobConfig:
    get = reader.get
    mw, tw, sw, nw = (f"{where}.{k}" for k in ("model", "train", "save", "network"))
    model = reader.mapping(reader.require(process, "model", where), mw)
    arch = get(model, "arch", None, str, mw)
    arch = arch.split(":")[0] if arch else arch  # AI Toolkit drops a ":tag" suffix
    if arch != KONTEXT_ARCH:
        raise ParityError(f"{mw}.arch is {arch!r}; kontext-parity reproduces {KONTEXT_ARCH} runs only",
                          source=reader.path)
    quantize = get(model, "quantize", False, bool, mw)
    train = reader.mapping(process.get("train") or {}, tw)
    save = reader.mapping(process.get("save") or {}, sw)
    network = process.get("network")
    network = None if network is None else reader.mapping(network, nw)
    net = network or {}
    rank = get(net, "rank", None, int, nw)  # NetworkConfig: rank wins over linear
    alpha = get(net, "alpha", 1.0, float, nw)
    unmodelled = tuple(f"{where}.{k}" for k in UNMODELLED_PROCESS_KEYS if process.get(k) is not None)
    unmodelled += tuple(f"{mw}.{k}" for k in UNMODELLED_MODEL_KEYS if model.get(k) is not None)
    first = process.get("first_sample")
    return JobConfig(
        path=str(reader.path), name=name, process_index=index, process_name=get(process, "name", name, str, where),
        trigger_word=get(process, "trigger_word", None, str, where),
        sample=_sample(reader, process["sample"], f"{where}.sample", "sample", notes),
        first_sample=None if first is None else _sample(reader, first, f"{where}.first_sample", "first_sample", notes),
        network_type=None if network is None else get(net, "type", "lora", str, nw),
        network_linear=None if network is None else (rank if rank is not None else get(net, "linear", 4, int, nw)),
        network_linear_alpha=None if network is None else get(net, "linear_alpha", alpha, float, nw),
        pretrained_lora_path=get(net, "pretrained_lora_path", None, str, nw),
        name_or_path=str(reader.require(model, "name_or_path", mw)), arch=arch, quantize=quantize,
        quantize_te=get(model, "quantize_te", quantize, bool, mw),
        qtype=get(model, "qtype", "qfloat8", str, mw),
        layer_offloading=get(model, "layer_offloading", get(model, "auto_memory", False, bool, mw), bool, mw),
        train_dtype=get(train, "dtype", "fp32", str, tw),
        train_steps=get(train, "steps", 1000, int, tw),
        skip_first_sample=get(train, "skip_first_sample", False, bool, tw),
        save_dtype=get(save, "dtype", "float16", str, sw),
        save_every=get(save, "save_every", 1000, int, sw),
        max_step_saves_to_keep=get(save, "max_step_saves_to_keep", 5, int, sw),
        unmodelled=unmodelled, notes=tuple(notes),
    )


def _sample(reader: "_Reader", section: Any, where: str, key: str, notes: list) -> SampleSettings:
    """SampleConfig: `samples` wins over `prompts`; items inherit the section's values."""
    section = reader.mapping(section, where)
    get = reader.get
    width = get(section, "width", 512, int, where)
    height = get(section, "height", 512, int, where)
    neg = get(section, "neg", False, (str, bool), where)
    guidance = get(section, "guidance_scale", 7, float, where)
    steps = get(section, "sample_steps", 20, int, where)
    multiplier = get(section, "network_multiplier", 1, (float, str), where)  # items convert strings
    ext = get(section, "format", "jpg", str, where)
    if get(section, "num_frames", 1, int, where) > 1:
        ext = "webp"  # SampleConfig switches to animated webp
    if "samples" in section:
        raw = section["samples"]
        if not isinstance(raw, list):
            raise ParityError(f"{where}.samples must be a list of mappings", source=reader.path)
        if "prompts" in section:
            notes.append(f"{where} has both samples and prompts: AI Toolkit uses samples")
    else:
        prompts = section.get("prompts") or []
        if not isinstance(prompts, list):
            raise ParityError(f"{where}.prompts must be a list of strings", source=reader.path)
        raw = [{"prompt": p} for p in prompts]
    items = []
    for i, item in enumerate(raw):
        iw = f"{where}.samples[{i}]" if "samples" in section else f"{where}.prompts[{i}]"
        item = reader.mapping(item, iw)
        ignored = sorted(set(item) - set(SAMPLE_ITEM_KEYS))
        if ignored:
            notes.append(f"{iw}: keys {ignored} are ignored by AI Toolkit")
        items.append(SampleItemSettings(
            prompt=get(item, "prompt", None, str, iw),
            width=get(item, "width", width, int, iw),
            height=get(item, "height", height, int, iw),
            neg=get(item, "neg", neg, (str, bool), iw),
            seed=get(item, "seed", None, int, iw),
            guidance_scale=get(item, "guidance_scale", guidance, float, iw),
            sample_steps=get(item, "sample_steps", steps, int, iw),
            network_multiplier=_item_multiplier(item, multiplier, iw, reader, notes),
            ctrl_img=get(item, "ctrl_img", None, str, iw),
        ))
    return SampleSettings(
        key=key, sampler=get(section, "sampler", "ddpm", str, where),
        sample_every=get(section, "sample_every", 100, int, where),
        sample_start_step=get(section, "sample_start_step", 0, int, where),
        width=width, height=height, neg=neg, seed=get(section, "seed", 0, int, where),
        walk_seed=bool(get(section, "walk_seed", False, (bool, int), where)), guidance_scale=guidance,
        sample_steps=steps, network_multiplier=multiplier, ext=ext, items=tuple(items),
    )


def _item_multiplier(item: dict, default: float, where: str, reader: "_Reader", notes: list) -> float:
    """SampleItem turns a string multiplier into a float, or 1.0 (with a printed warning) if it can't."""
    value = item.get("network_multiplier", default)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            notes.append(f"{where}.network_multiplier {value!r} is not a number: AI Toolkit uses 1.0")
            return 1.0
    return reader.get(item, "network_multiplier", default, float, where)


KINDS = {int: "integer", float: "number", bool: "bool", str: "string"}  # Python type -> parity.validate kind


class _Reader:
    """Typed access to config keys; every failure names the file and the dotted key."""

    def __init__(self, path: Path):
        self.path = path

    def mapping(self, value: Any, where: str) -> dict:
        if not isinstance(value, dict):
            raise ParityError(f"{where} must be a mapping, not {type(value).__name__}", source=self.path)
        return value

    def require(self, mapping: dict, key: str, where: str) -> Any:
        if mapping.get(key) is None:
            raise ParityError(f"{where}.{key} is missing" if where != "the file" else f"`{key}` is missing",
                              source=self.path)
        return mapping[key]

    def get(self, mapping: dict, key: str, default: Any, kind, where: str) -> Any:
        """mapping[key] checked against kind (int, float = any number, bool, str or a tuple), or default."""
        if key not in mapping or mapping[key] is None:
            return default
        value = mapping[key]
        kinds = tuple(KINDS[k] for k in (kind if isinstance(kind, tuple) else (kind,)))
        wrong = problem(value, kinds)
        if wrong:
            raise ParityError(f"{where}.{key} {wrong}", source=self.path)
        return int(value) if kinds == ("integer",) else value
