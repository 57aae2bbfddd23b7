"""The one validation layer: what a value of each kind must be, and how a wrong one is said.

Case files, request bodies, AI Toolkit configs, ComfyUI graphs and thresholds all hold values typed by
hand or by another program. Every reader checks them here, so the rules are the same everywhere (a
boolean is not a number, a whole float is an integer) and so is the message:
``<where>: must be an integer in [16, 16384], not 100000`` or ``must be one of png, jpeg, webp, not "jpg"
(did you mean "jpeg"?)``. Readers only say where the value was.
"""
from __future__ import annotations

import math

from .errors import ParityError, did_you_mean

KINDS = {"integer": "an integer", "number": "a number", "bool": "true or false", "string": "a string",
         "list": "a list", "mapping": "a mapping"}


def is_number(value) -> bool:
    """An int or float that is not a bool (YAML and JSON booleans are ints to Python)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_integer(value) -> bool:
    """A number with no fraction (JSON writes 3 as 3.0 at times)."""
    return is_number(value) and math.isfinite(value) and int(value) == value


_IS = {"integer": is_integer, "number": is_number, "bool": lambda v: isinstance(v, bool),
       "string": lambda v: isinstance(v, str), "list": lambda v: isinstance(v, list),
       "mapping": lambda v: isinstance(v, dict)}


def _range(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f" in [{lo}, {hi}]"
    if lo is not None:
        return f" >= {lo}"
    return f" <= {hi}" if hi is not None else ""


def problem(value, kind: str | tuple[str, ...], *, lo=None, hi=None, choices=None) -> str | None:
    """What is wrong with ``value`` as a ``kind`` (one kind or several) within [lo, hi] or ``choices``;
    None when nothing is."""
    kinds = (kind,) if isinstance(kind, str) else kind
    limits = _range(lo, hi) if any(k in ("integer", "number") for k in kinds) else ""
    if not any(_IS[k](value) for k in kinds):
        return f"must be {' or '.join(KINDS[k] for k in kinds)}{limits}, not {value!r}"
    if choices is not None and value not in choices:
        listed = ", ".join(str(c) for c in choices)
        return f'must be one of {listed}, not "{value}"{did_you_mean(value, choices)}'
    if is_number(value) and ((lo is not None and value < lo) or (hi is not None and value > hi)):
        shown = float(value) if kinds == ("number",) else value  # as the reader would have coerced it
        return f"must be {KINDS['integer' if 'integer' in kinds else 'number']}{limits}, not {shown!r}"
    return None


def checked(value, kind: str | tuple[str, ...], where: str, *, lo=None, hi=None, choices=None, source=None):
    """``value`` if it is a valid ``kind`` (an integer as int, a number as float), else a ParityError
    "<where> <problem>" naming ``source`` (the file)."""
    wrong = problem(value, kind, lo=lo, hi=hi, choices=choices)
    if wrong:
        raise ParityError(f"{where} {wrong}" if where else wrong, source=source)
    if kind == "integer":
        return int(value)
    if kind == "number":
        return float(value)
    return value
