"""Knob registries; importing this package registers every alternative."""
from . import (  # noqa: F401
    control, encoding, guidance, lora_modes, quantize, schedule, seeding, sizing, speed, text,
)
from .registry import choices, families, family_doc, lookup

__all__ = ["choices", "families", "family_doc", "lookup"]
