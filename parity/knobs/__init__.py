"""Knob registries; importing this package registers every alternative."""
from . import control, encoding, guidance, lora_modes, schedule, seeding, sizing, speed  # noqa: F401
from .registry import choices, families, family_doc, lookup

__all__ = ["choices", "families", "family_doc", "lookup"]
