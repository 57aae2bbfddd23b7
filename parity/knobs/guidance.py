"""Guidance semantics: what a "guidance" number means to the pipeline.

FLUX.1-Kontext-dev is guidance-distilled: its guidance value is an input embedding,
not classifier-free guidance. Some services expose true CFG instead (a negative prompt
and a second transformer pass per step), which doubles the cost and changes the image.
"""
from __future__ import annotations

from dataclasses import dataclass

from .registry import describe_family, register

describe_family("guidance_mode", "how the guidance value and negative prompt are used")


@dataclass(frozen=True)
class GuidancePlan:
    embedding: float | None  # value fed to the guidance embedding, None if the model has none
    true_cfg_scale: float | None  # None: one transformer pass per step


@register("guidance_mode", "embedded")
def guidance_embedded(guidance: float, true_cfg_scale: float, negative_prompt: str, has_embedding: bool):
    """Distilled guidance only; the negative prompt is ignored (AI Toolkit, reference server)."""
    return GuidancePlan(guidance if has_embedding else None, None)


@register("guidance_mode", "true_cfg")
def guidance_true_cfg(guidance: float, true_cfg_scale: float, negative_prompt: str, has_embedding: bool):
    """diffusers' true CFG: neg + scale*(pos-neg), on top of the embedding (runs only if scale > 1)."""
    cfg = true_cfg_scale if true_cfg_scale > 1 else None
    return GuidancePlan(guidance if has_embedding else None, cfg)
