"""The registry of knob alternatives.

Every knob family (snapping rule, resize method, ...) maps names to small pure
functions. Cases name alternatives by these strings, validation checks them here,
and ``parity knobs`` lists them, so adding an alternative is one decorated function.
"""
from __future__ import annotations

from typing import Callable

from ..errors import ParityError, unknown_value

_FAMILIES: dict[str, dict[str, Callable]] = {}
_DOCS: dict[str, str] = {}


def register(family: str, name: str) -> Callable[[Callable], Callable]:
    def add(fn: Callable) -> Callable:
        table = _FAMILIES.setdefault(family, {})
        if name in table:
            raise RuntimeError(f"knob {family}={name} registered twice")
        table[name] = fn
        return fn

    return add


def describe_family(family: str, doc: str) -> None:
    _DOCS[family] = doc


def choices(family: str) -> list[str]:
    return list(_FAMILIES[family])


def lookup(family: str, name: str) -> Callable:
    table = _FAMILIES[family]
    if name not in table:
        raise ParityError(unknown_value(family.replace("_", " "), name, table))
    return table[name]


def families() -> dict[str, dict[str, Callable]]:
    return _FAMILIES


def family_doc(family: str) -> str:
    return _DOCS.get(family, "")
