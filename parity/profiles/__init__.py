"""Profiles: what a serving system does with a request, as data.

A profile file (YAML, one per system) holds
  name, source (where each fact was read), description,
  knobs:    the system's fixed behaviour (snapping, resize, LoRA mode, dtype, encoding, ...),
  defaults: request values the system uses when a request leaves them out,
  exposes:  the request fields a user can set (a preview's value is used for those),
  notes:    behaviours the source leaves open, and the choice made here,
  assumed:  the case fields (of knobs or defaults) whose values are such choices, not read in the source:
            every case of the profile carries the list (tag `assumed`), and reports mark those values.
Applying a profile never branches on its name: the engine only ever sees Case knobs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ParityError, did_you_mean, unknown_value
from ..yamlfile import read_yaml_mapping

PROFILE_DIR = Path(__file__).resolve().parent
REQUEST_FIELDS = ("prompt", "negative_prompt", "seed", "width", "height", "steps", "guidance", "control_image")
PROFILE_KEYS = ("name", "source", "description", "knobs", "defaults", "exposes", "notes", "assumed")


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
    assumed: tuple = ()

    def apply(self, base: dict) -> dict:
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
    data = read_yaml_mapping(path, what="profile", allowed=PROFILE_KEYS)
    if "name" not in data:
        raise ParityError("a profile needs a name", source=path)
    for key in ("knobs", "defaults"):
        if not isinstance(data.get(key) or {}, dict):
            raise ParityError(f"{key} must be a mapping of case fields to values", source=path)
    exposes = data.get("exposes") or REQUEST_FIELDS
    if not isinstance(exposes, list | tuple) or not all(isinstance(f, str) for f in exposes):
        raise ParityError("exposes must be a list of case fields", source=path)
    fixed = sorted(set(exposes) & set(data.get("knobs") or {}))
    if fixed:  # a fixed knob would silently override what a request (or a preview) says
        raise ParityError(f"{', '.join(fixed)}: both exposed (the request's value wins) and a fixed knob; "
                          "put the system's default under defaults:", source=path)
    assumed = data.get("assumed") or []
    if not isinstance(assumed, list) or not all(isinstance(f, str) for f in assumed):
        raise ParityError("assumed must be a list of case fields", source=path)
    given = {**(data.get("knobs") or {}), **(data.get("defaults") or {})}
    for name in assumed:
        if name not in given:
            raise ParityError(f'assumed: "{name}" is not a field of this profile\'s knobs or defaults'
                              f"{did_you_mean(name, given)}", source=path)
    return Profile(name=data["name"], source=data.get("source", ""), description=data.get("description", ""),
                   knobs=dict(data.get("knobs") or {}), defaults=dict(data.get("defaults") or {}),
                   exposes=tuple(data.get("exposes") or REQUEST_FIELDS), notes=data.get("notes", ""),
                   path=str(path), assumed=tuple(assumed))


def available() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PROFILE_DIR.glob("*.yaml"))}


def load_profile(name_or_path: str | Path, root: Path | None = None) -> Profile:
    """A profile by name (shipped with kontext-parity) or by path to a user's YAML file.

    A relative path is relative to ``root`` (the case file's folder), else to the working directory.
    """
    if not isinstance(name_or_path, (str, Path)):
        raise ParityError(f"a profile is a name or a .yaml path, not {name_or_path!r}")
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml"):
        return _read(path if path.is_absolute() or root is None else root / path)
    shipped = available()
    if str(name_or_path) not in shipped:
        raise ParityError(unknown_value("profile", name_or_path, shipped))
    return _read(shipped[str(name_or_path)])
