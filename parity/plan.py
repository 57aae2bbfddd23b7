"""Plans: a case file (YAML) expanded into validated Cases.

A case file has
  base:      model id or folder (optional; the CLI's --base wins)
  previews:  {runs: [AI Toolkit run folders], steps: last|first|[N, ...], ctrl_root, config, unpaired}
  defaults:  fields (and optionally a profile) applied to every case
  cases:     explicit cases, each with optional `profile`, `matrix` (cartesian sweep) and
             `ablate` (one knob changed at a time from the case itself)
  variants:  with previews: how to re-run every preview (a profile, `set` overrides, matrix/ablate,
             `steps` to apply a variant only to the previews of some training steps)
Relative paths are relative to the case file. Every problem names the file and the case.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .case import Case, LoraSpec
from .errors import ParityError, did_you_mean, yaml_problem
from .profiles import load_profile

TOP_KEYS = ("base", "previews", "defaults", "cases", "variants", "description")
CONTROL_KEYS = ("profile", "matrix", "ablate", "set")
PATH_FIELDS = ("control_image", "preview")


@dataclass
class Plan:
    source: str
    cases: list[Case]
    base: str | None = None
    notes: list[str] = field(default_factory=list)


def load_plan(path: str | Path, *, previews: list[str] | None = None, config: str | None = None,
              ctrl_root: str | None = None, unpaired: str | None = None) -> Plan:
    path = Path(path)
    if path.is_dir():
        raise ParityError("is a folder; give the case file (YAML) itself", source=path)
    if not path.is_file():
        raise ParityError("case file not found", source=path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ParityError(yaml_problem(err), source=path) from None
    except UnicodeDecodeError:
        raise ParityError("not a UTF-8 text file", source=path) from None
    if not isinstance(data, dict):
        raise ParityError("a case file is a mapping with `cases:` and/or `previews:` + `variants:`", source=path)
    for key in data:
        if key not in TOP_KEYS:
            raise ParityError(f'unknown top-level key "{key}"{did_you_mean(key, TOP_KEYS)}', source=path)
    try:
        return _expand(data, path.parent, str(path), previews, config, ctrl_root, unpaired)
    except ParityError as err:
        if err.source is None:
            raise ParityError(err.problem, source=path) from None
        raise


def _expand(data: dict, root: Path, source: str, previews, config, ctrl_root, unpaired) -> Plan:
    defaults = dict(data.get("defaults") or {})
    plan = Plan(source=source, cases=[], base=data.get("base"))
    for i, spec in enumerate(data.get("cases") or []):
        if not isinstance(spec, dict):
            raise ParityError(f"cases[{i}] must be a mapping")
        merged = {**defaults, **spec}
        merged.setdefault("name", f"case{i}")
        for variant in _variants(merged):
            plan.cases.append(_build({}, variant, root))
    preview_spec = data.get("previews")
    runs = previews if previews else (preview_spec or {}).get("runs", []) if isinstance(preview_spec, dict) else []
    if runs:
        from .aitk import load_run, preview_cases, preview_notes

        spec = preview_spec or {}
        runs_root = root if not previews else Path.cwd()
        variants = data.get("variants") or [{"name": "baseline"}]
        steps = _step_selector(spec.get("steps"), "previews.steps")
        for j, variant_spec in enumerate(variants):
            if not isinstance(variant_spec, dict):
                raise ParityError(f"variants[{j}] must be a mapping")
        for run_dir in runs:
            run = load_run(_resolve(run_dir, runs_root), config=config or spec.get("config"),
                           ctrl_root=ctrl_root or spec.get("ctrl_root"),
                           unpaired=unpaired or spec.get("unpaired", "error"))
            found = sorted({p.step for p in run.previews})
            picked = [p for p in run.previews if p.step in _selected(steps, found)]
            chosen = [c for c in preview_cases(run) if int(c.tag("step")) in _selected(steps, found)]
            plan.notes += [f"{run.name}: {note}" for note in run.notes] + preview_notes(picked)
            if not picked:
                raise ParityError(f"previews.steps {steps} selects no preview of {run.name} (its previews are at "
                                  f"steps {', '.join(map(str, found))})")
            if not chosen:
                raise ParityError(f"no selected preview of {run.name} can be reproduced: {preview_notes(picked)[0]}")
            reproducible = sorted({int(c.tag("step")) for c in chosen})
            for preview_case in chosen:
                base_fields = preview_case.to_dict()
                for j, variant_spec in enumerate(variants):
                    merged = {**defaults, **variant_spec}
                    merged.setdefault("name", f"variant{j}")
                    only = _step_selector(merged.pop("steps", None), f'variant "{merged["name"]}" steps')
                    if int(preview_case.tag("step")) not in _selected(only, reproducible):
                        continue
                    for variant in _variants(merged):
                        plan.cases.append(_build(base_fields, variant, root, prefix=preview_case.name))
    elif preview_spec is not None and not plan.cases:
        raise ParityError("previews: needs `runs:` (or pass --previews)")
    if not plan.cases:
        raise ParityError("the case file expands to no case")
    names = [c.name for c in plan.cases]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ParityError(f'case name "{dupes[0]}" is used more than once')
    return plan


def _step_selector(value, where: str):
    """None (every step), "last" / "first" (a run's final / earliest previews) or a list of steps."""
    if value is None or value in ("last", "first"):
        return value
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return value
    raise ParityError(f'{where} must be "last", "first" or a list of training steps such as [10], not {value!r}')


def _selected(selector, steps: list[int]) -> set[int]:
    if selector is None:
        return set(steps)
    if selector == "last":
        return {max(steps)} if steps else set()
    if selector == "first":
        return {min(steps)} if steps else set()
    return set(selector)


def _variants(spec: dict) -> list[dict]:
    """Expand `matrix` (every combination) and `ablate` (one change at a time) into plain specs."""
    spec = dict(spec)
    matrix = spec.pop("matrix", None) or {}
    ablate = spec.pop("ablate", None) or {}
    for what, block in (("matrix", matrix), ("ablate", ablate)):
        if not isinstance(block, dict) or any(not isinstance(v, list) or not v for v in block.values()):
            raise ParityError(f'case "{spec.get("name")}": {what} maps knob names to non-empty lists of values')
    out = []
    keys = list(matrix)
    for combo in itertools.product(*(matrix[k] for k in keys)) if keys else [()]:
        one = dict(spec)
        changes = dict(zip(keys, combo))
        _apply_set(one, changes)
        if changes:
            one["name"] = f"{spec['name']}[" + ",".join(f"{k}={v}" for k, v in changes.items()) + "]"
            one.setdefault("tags", {})
            one["tags"] = {**one["tags"], **{f"axis_{k}": str(v) for k, v in changes.items()}}
        out.append(one)
    if ablate:
        base = out[0] if len(out) == 1 else None
        if base is None:
            raise ParityError(f'case "{spec.get("name")}": use either matrix or ablate, not both')
        base.setdefault("tags", {})
        base["tags"] = {**base["tags"], "ablation": "baseline"}
        for knob, values in ablate.items():
            for value in values:
                one = {k: v for k, v in spec.items()}
                _apply_set(one, {knob: value})
                one["name"] = f"{spec['name']}[{knob}={value}]"
                one["tags"] = {**(spec.get("tags") or {}), "ablation": knob, "ablation_value": str(value)}
                one.setdefault("gated", False)
                out.append(one)
    return out


def _apply_set(spec: dict, changes: dict) -> None:
    """`set` overrides go in a nested mapping so they win over the profile applied later."""
    spec["set"] = {**(spec.get("set") or {}), **changes}


def _build(base_fields: dict, spec: dict, root: Path, prefix: str | None = None) -> Case:
    """base (a preview's case) <- profile <- the spec's own fields <- `set` overrides."""
    spec = dict(spec)
    name = spec.pop("name")
    overrides = dict(spec.pop("set", None) or {})
    profile_name = overrides.pop("profile", spec.pop("profile", None))  # a sweep may vary the profile
    tags = {**(base_fields.get("tags") or {}), **(spec.pop("tags", None) or {})}
    for key in PATH_FIELDS:
        if spec.get(key):
            spec[key] = _resolve(spec[key], root)
    if spec.get("loras"):
        spec["loras"] = [_resolve_lora(v, root, i) for i, v in enumerate(spec["loras"])]
    fields_ = dict(base_fields)
    if profile_name:
        profile = load_profile(profile_name)
        fields_ = profile.apply(fields_)
        tags["profile"] = profile.name
    fields_.update(spec)
    fields_.update(overrides)
    fields_["tags"] = tags
    fields_["name"] = f"{prefix}/{name}" if prefix else name
    lora_mode = fields_.pop("lora_mode", None)
    lora_scale = fields_.pop("lora_scale", None)
    loras = [LoraSpec.from_value(v, f'case "{fields_["name"]}"') for v in (fields_.get("loras") or [])]
    fields_["loras"] = [{"path": l.path, "scale": l.scale if lora_scale is None else float(lora_scale),
                         "mode": lora_mode or l.mode} for l in loras]
    return Case.from_dict(fields_)


def _resolve_lora(value, root: Path, index: int):
    lora = LoraSpec.from_value(value, f"loras[{index}]")
    return {"path": _resolve(lora.path, root), "scale": lora.scale, "mode": lora.mode}


def _resolve(value: str, root: Path) -> str:
    path = Path(str(value)).expanduser()
    return str(path if path.is_absolute() else (root / path).resolve())
