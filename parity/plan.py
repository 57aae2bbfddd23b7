"""Plans: a case file (YAML) expanded into validated Cases.

A case file has
  base:      model id or folder (optional; the CLI's --base wins)
  previews:  {runs: an AI Toolkit run folder or a list of them, train_steps: last|first|[N, ...],
             ctrl_root, config, unpaired}
  defaults:  fields (and optionally a profile) applied to every case and every variant
  cases:     explicit cases, each with optional `profile`, `matrix` (cartesian sweep) and
             `ablate` (one knob changed at a time from the case itself)
  variants:  with previews: how to re-run every preview (a profile, `set` overrides, matrix/ablate,
             `train_steps` to apply a variant only to the previews of some training steps, `prompts`
             ([0, 2]: prompt indices) only to the previews of some sample prompts)
`steps` is always the number of denoising steps. Relative paths (also inside matrix, ablate and
set, and a profile given as a .yaml file) are relative to the case file. Every problem names the
file and the case.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

from .case import Case, LoraSpec
from .errors import ParityError, did_you_mean
from .profiles import load_profile
from .validate import checked
from .yamlfile import read_yaml_mapping

TOP_KEYS = ("base", "previews", "defaults", "cases", "variants", "description")
PREVIEW_KEYS = ("runs", "train_steps", "ctrl_root", "config", "unpaired")
PATH_FIELDS = ("control_image", "preview", "base_preview")
PREVIEW_PROFILE = "aitk-preview"  # a variant without a profile redraws the preview as AI Toolkit drew it


@dataclass
class Plan:
    source: str
    cases: list[Case]
    base: str | None = None
    notes: list[str] = field(default_factory=list)


def load_plan(path: str | Path, *, previews: list[str] | None = None, config: str | None = None,
              ctrl_root: str | None = None, unpaired: str | None = None) -> Plan:
    """Expand a case file; ``previews`` and the other keywords (the CLI's options) replace its previews: values."""
    path = Path(path)
    data = read_yaml_mapping(path, what="case file", allowed=TOP_KEYS)
    try:
        return _expand(data, path.parent, str(path), previews, config, ctrl_root, unpaired)
    except ParityError as err:
        if err.source is None:
            raise ParityError(err.problem, source=path) from None
        raise


def _expand(data: dict, root: Path, source: str, previews, config, ctrl_root, unpaired) -> Plan:
    defaults = _mapping(data, "defaults")
    plan = Plan(source=source, cases=[], base=data.get("base"))
    for i, spec in enumerate(_mappings(data, "cases")):
        merged = {**defaults, **spec}
        merged.setdefault("name", f"case{i}")
        for variant in _variants(merged):
            plan.cases.append(_build({}, variant, root))
    spec = _mapping(data, "previews")
    for key in spec:
        if key not in PREVIEW_KEYS:
            raise ParityError(f'previews: unknown key "{key}"{did_you_mean(key, PREVIEW_KEYS)}')
    runs = [(run, Path.cwd()) for run in previews] if previews else [(run, root) for run in _runs(spec.get("runs"))]
    if runs:
        from .aitk import load_run, preview_notes, preview_requests

        variants = []  # (fields, train_steps selector, prompts selector), each selector read once
        for j, variant_spec in enumerate(_mappings(data, "variants") or [{"name": "baseline"}]):
            merged = {**defaults, **variant_spec}
            merged.setdefault("name", f"variant{j}")
            merged.setdefault("profile", PREVIEW_PROFILE)
            where = f'variant "{merged["name"]}"'
            variants.append((merged, _step_selector(merged.pop("train_steps", None), f"{where} train_steps"),
                             _prompt_selector(merged.pop("prompts", None), f"{where} prompts")))
        selected = [0] * len(variants)  # previews each variant applies to
        steps = _step_selector(spec.get("train_steps"), "previews.train_steps")
        config = config or _optional_path(spec.get("config"), root, "previews.config")
        ctrl_root = ctrl_root or _optional_path(spec.get("ctrl_root"), root, "previews.ctrl_root")
        for run_dir, runs_root in runs:
            run = load_run(_resolve(run_dir, runs_root), config=config, ctrl_root=ctrl_root,
                           unpaired=unpaired or spec.get("unpaired", "error"))
            found = sorted({p.step for p in run.previews})
            picked = [p for p in run.previews if p.step in _selected(steps, found)]
            chosen = [r for r in preview_requests(run) if r["tags"]["step"] in _selected(steps, found)]
            plan.notes += [f"{run.name}: {note}" for note in run.notes] + preview_notes(picked)
            if not picked:
                raise ParityError(f"previews.train_steps {steps} selects no preview of {run.name} (its previews "
                                  f"are at steps {', '.join(map(str, found))})")
            if not chosen:
                raise ParityError(f"no selected preview of {run.name} can be reproduced: {preview_notes(picked)[0]}")
            reproducible = sorted({r["tags"]["step"] for r in chosen})
            for request in chosen:
                for k, (merged, only, prompts) in enumerate(variants):
                    if request["tags"]["step"] not in _selected(only, reproducible):
                        continue
                    if prompts is not None and request["tags"]["prompt_index"] not in prompts:
                        continue
                    selected[k] += 1
                    for variant in _variants(merged):
                        plan.cases.append(_build(request, variant, root, prefix=request["name"]))
        plan.notes += [f'variant "{merged["name"]}" selects no preview (its train_steps / prompts match none): '
                       "no case" for (merged, _, _), count in zip(variants, selected) if count == 0]
    elif "previews" in data and not plan.cases:
        raise ParityError("previews: needs `runs:` (or pass --previews)")
    elif data.get("variants"):
        raise ParityError("variants: re-run AI Toolkit previews, but there are none: add previews: {runs: [...]} "
                          "or pass --previews (explicit cases take matrix/ablate instead)")
    if not plan.cases:
        raise ParityError("the case file expands to no case")
    names = [c.name for c in plan.cases]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ParityError(f'case name "{dupes[0]}" is used more than once')
    return plan


def _mapping(data: dict, key: str) -> dict:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ParityError(f"{key}: must be a mapping, not a {type(value).__name__}")
    return dict(value)


def _mappings(data: dict, key: str) -> list[dict]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ParityError(f"{key}: must be a list of mappings, not a {type(value).__name__}")
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise ParityError(f"{key}[{i}] must be a mapping")
    return value


def _runs(value) -> list[str]:
    """previews.runs: one run folder or a list of them."""
    runs = [value] if isinstance(value, str) else value if value is not None else []
    if not isinstance(runs, list) or not all(isinstance(run, str) for run in runs):
        raise ParityError(f"previews.runs must be a run folder or a list of them, not {value!r}")
    return runs


def _optional_path(value, root: Path, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ParityError(f"{where} must be a path, not {value!r}")
    return _resolve(value, root)


def _step_selector(value, where: str):
    """None (every step), "last" / "first" (a run's final / earliest previews) or a list of training steps."""
    if value is None or value in ("last", "first"):
        return value
    if not isinstance(value, list) or not value:
        raise ParityError(f'{where} must be "last", "first" or a list of training steps such as [10], not {value!r}')
    return [checked(v, "integer", f"{where}[{i}]", lo=0) for i, v in enumerate(value)]


def _prompt_selector(value, where: str) -> set[int] | None:
    """A variant's ``prompts``: the sample-prompt indices (0-based, as in the preview file names) it applies to."""
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise ParityError(f"{where} must be a non-empty list of sample-prompt indices such as [0], not {value!r}")
    return {checked(v, "integer", f"{where}[{i}]", lo=0) for i, v in enumerate(value)}


def _selected(selector, steps: list[int]) -> set[int]:
    if selector is None:
        return set(steps)
    if selector == "last":
        return {max(steps)} if steps else set()
    if selector == "first":
        return {min(steps)} if steps else set()
    return set(selector)


def _variants(spec: dict) -> list[dict]:
    """Expand `matrix` (every combination) or `ablate` (one change at a time) into plain specs."""
    spec = dict(spec)
    matrix = spec.pop("matrix", None) or {}
    ablate = spec.pop("ablate", None) or {}
    where = f'case "{spec.get("name")}"'
    tags = _tags(spec.get("tags"), where)
    for what, block in (("matrix", matrix), ("ablate", ablate)):
        if not isinstance(block, dict) or any(not isinstance(v, list) or not v for v in block.values()):
            raise ParityError(f"{where}: {what} maps knob names to non-empty lists of values")
    if matrix and ablate:
        raise ParityError(f"{where}: use either matrix or ablate, not both (ablate changes one knob at a time "
                          "from the case itself; a matrix has no single case to start from)")
    if ablate:
        baseline = dict(spec)
        baseline["tags"] = {**tags, "ablation": "baseline"}
        out = [baseline]
        for knob, values in ablate.items():
            for value in values:
                one = dict(spec)
                _apply_set(one, {knob: value})
                one["name"] = f"{spec['name']}[{knob}={value}]"
                one["tags"] = {**tags, "ablation": knob, "ablation_value": str(value), "ablation_of": spec["name"]}
                one.setdefault("gated", False)
                out.append(one)
        return out
    if not matrix:
        return [spec]
    out = []
    keys = list(matrix)
    for combo in itertools.product(*(matrix[k] for k in keys)):
        one = dict(spec)
        changes = dict(zip(keys, combo))
        _apply_set(one, changes)
        one["name"] = f"{spec['name']}[" + ",".join(f"{k}={v}" for k, v in changes.items()) + "]"
        one["tags"] = {**tags, **{f"axis_{k}": str(v) for k, v in changes.items()}}
        out.append(one)
    return out


def _tags(value, where: str) -> dict:
    if not isinstance(value or {}, dict):
        raise ParityError(f"{where}: tags must be a mapping, not {value!r}")
    return value or {}


def _apply_set(spec: dict, changes: dict) -> None:
    """`set` overrides go in a nested mapping so they win over the profile applied later."""
    spec["set"] = {**(spec.get("set") or {}), **changes}


def _build(base_fields: dict, spec: dict, root: Path, prefix: str | None = None) -> Case:
    """base (a preview's case) <- profile <- the spec's own fields <- `set` overrides."""
    spec = dict(spec)
    name = spec.pop("name")
    full_name = f"{prefix}/{name}" if prefix else name
    where = f'case "{full_name}"'
    overrides = spec.pop("set", None) or {}
    if not isinstance(overrides, dict):
        raise ParityError(f"{where}: set maps case fields to values, not {overrides!r}")
    own = {**spec, **overrides}  # the case file's values: its relative paths are relative to it
    profile_name = own.pop("profile", None)  # a sweep may vary the profile
    tags = {**(base_fields.get("tags") or {}), **_tags(own.pop("tags", None), where)}
    if own.get("steps") in ("last", "first") or isinstance(own.get("steps"), list):
        raise ParityError(f"{where}: steps is the number of denoising steps; training steps are selected "
                          f"with train_steps: {own['steps']!r}")
    for key in PATH_FIELDS:
        if isinstance(own.get(key), str):
            own[key] = _resolve(own[key], root)
    if own.get("loras"):
        loras = own["loras"] if isinstance(own["loras"], list) else [own["loras"]]
        own["loras"] = [_resolve_lora(v, root, f"{where}, loras[{i}]") for i, v in enumerate(loras)]
    fields_ = dict(base_fields)
    if prefix:  # the variant of a preview, as data (calibrate and reports group by it)
        tags["variant"] = name
    if prefix and "ablation_of" in tags:  # the baseline case this one changes one knob of, by its full name
        tags["ablation_of"] = f"{prefix}/{tags['ablation_of']}"
    if profile_name:
        profile = load_profile(profile_name, root)
        fields_ = profile.apply(fields_)
        tags["profile"] = profile.name
    fields_.update(own)
    if profile_name and profile.assumed:  # the profile's assumed values this case still has (reports mark them)
        given = {**profile.defaults, **profile.knobs}
        kept = [f"{f}={given[f]}" for f in profile.assumed if f in fields_ and fields_[f] == given[f]]
        if kept:
            tags["assumed"] = " ".join(kept)
    fields_["tags"] = tags
    fields_["name"] = full_name
    lora_mode = fields_.pop("lora_mode", None)
    lora_scale = fields_.pop("lora_scale", None)
    if lora_scale is not None:
        lora_scale = checked(lora_scale, "number", f"{where}: lora_scale")
    loras = [LoraSpec.from_value(v, f"{where}, loras[{i}]") for i, v in enumerate(fields_.get("loras") or [])]
    fields_["loras"] = [{"path": lo.path, "scale": lo.scale if lora_scale is None else lora_scale,
                         "mode": lora_mode or lo.mode} for lo in loras]
    return Case.from_dict(fields_)


def _resolve_lora(value, root: Path, where: str) -> dict:
    lora = LoraSpec.from_value(value, where)
    return {"path": _resolve(lora.path, root), "scale": lora.scale, "mode": lora.mode}


def _resolve(value: str, root: Path) -> str:
    path = Path(str(value)).expanduser()
    return str(path if path.is_absolute() else (root / path).resolve())
