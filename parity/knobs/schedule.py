"""Scheduler variants: which sigmas the flow-match Euler sampler walks.

A fresh FlowMatchEulerDiscreteScheduler is built per case from the checkpoint's config
plus the case's overrides, so no case inherits another's scheduler state.
"""
from __future__ import annotations

import numpy as np

from .registry import describe_family, register

describe_family("sigma_schedule", "the un-shifted sigmas handed to the scheduler")


@register("sigma_schedule", "flux")
def sigmas_flux(steps: int):
    """FluxKontextPipeline's default: linspace(1, 1/N, N) (AI Toolkit, every server on diffusers)."""
    return np.linspace(1.0, 1.0 / steps, steps)


@register("sigma_schedule", "scheduler")
def sigmas_scheduler(steps: int):
    """None: let the scheduler space timesteps between its own sigma_max and sigma_min."""
    return None


def mu_for_tokens(tokens: int, base_seq_len: int, max_seq_len: int, base_shift: float, max_shift: float) -> float:
    """Resolution-dependent shift: a line through (base_seq_len, base_shift), (max_seq_len, max_shift)."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return tokens * slope + base_shift - slope * base_seq_len
