"""Profiles: what a serving system does with a request, as data.

A profile file (YAML, one per system) holds
  name, source (where each fact was read), description,
  knobs:    the system's fixed behaviour (snapping, resize, LoRA mode, dtype, encoding, ...),
  defaults: request values the system uses when a request leaves them out,
  exposes:  the request fields a user can set (a preview's value is used for those),
  notes:    behaviours the source leaves open, and the choice made here.
Applying a profile never branches on its name: the engine only ever sees Case knobs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import ParityError, unknown_value, yaml_problem

PROFILE_DIR = Path(__file__).resolve().parent
REQUEST_FIELDS = ("prompt", "negative_prompt", "seed", "width", "height", "steps", "guidance", "control_image")


@dataclass(frozen=True)
class Profile:
    name: str
    source: str
    description: str
    knobs: dict = field(default_factory=dict)
    defaults: dict = field(default_factory=dict)
    exposes: tuple = REQUEST_FIELDS
    notes: str = ""
    path: str = ""

    def apply(self, base: dict, request: dict | None = None) -> dict:
        """Case fields for this system: base <- defaults for unexposed fields <- fixed knobs.

        ``base`` holds everything known (e.g. a preview's arguments); fields the system does
        not expose cannot be set by a user, so its defaults replace them.
        """
        out = dict(base)
        for key, value in self.defaults.items():
            if key not in self.exposes or key not in out:
                out[key] = value
        out.update(self.knobs)
        return out


def _read(path: Path) -> Profile:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParityError(yaml_problem(err), source=path) from None
    if not isinstance(data, dict) or "name" not in data:
        raise ParityError("a profile is a mapping with at least a name", source=path)
    unknown = set(data) - {"name", "source", "description", "knobs", "defaults", "exposes", "notes"}
    if unknown:
        raise ParityError(f"unknown profile key {sorted(unknown)[0]!r}", source=path)
    return Profile(name=data["name"], source=data.get("source", ""), description=data.get("description", ""),
                   knobs=dict(data.get("knobs") or {}), defaults=dict(data.get("defaults") or {}),
                   exposes=tuple(data.get("exposes") or REQUEST_FIELDS), notes=data.get("notes", ""),
                   path=str(path))


def available() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PROFILE_DIR.glob("*.yaml"))}


def load_profile(name_or_path: str) -> Profile:
    """A profile by name (shipped with kontext-parity) or by path to a user's YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return _read(path)
    shipped = available()
    if name_or_path not in shipped:
        raise ParityError(unknown_value("profile", name_or_path, shipped))
    return _read(shipped[name_or_path])
