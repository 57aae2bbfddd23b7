"""Scheduler variants: which sigmas the sampler walks, how it steps, and in which dtype it keeps its state.

A fresh FlowMatchEulerDiscreteScheduler is built per case from the checkpoint's config
plus the case's overrides, so no case inherits another's scheduler state. Every schedule
here gives the *un-shifted* times t; the scheduler shifts them (mu or a static shift) and
appends the final 0. ComfyUI's schedulers pick times from its model's table of 10000
shifted sigmas (comfy/model_sampling.py:350-356); the times below are the table's
(index + 1) / 10000, so the shift the scheduler applies gives the table's values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..errors import ParityError
from .registry import describe_family, register

describe_family("sigma_schedule", "the un-shifted sigmas handed to the scheduler")
describe_family("sampler", "how one denoising step turns the model's velocity into the next latents")
describe_family("latent_dtype", "the dtype of the sampler's state (noise, latents, control latents)")

COMFY_TABLE = 10000  # ModelSamplingFlux.set_parameters(timesteps=10000): t = arange(1, 10001) / 10000


@register("sigma_schedule", "flux")
def sigmas_flux(steps: int, shift=None):
    """FluxKontextPipeline's default: linspace(1, 1/N, N) (AI Toolkit, every server on diffusers)."""
    return np.linspace(1.0, 1.0 / steps, steps)


@register("sigma_schedule", "scheduler")
def sigmas_scheduler(steps: int, shift=None):
    """None: let the scheduler space timesteps between its own sigma_max and sigma_min."""
    return None


@register("sigma_schedule", "simple")
def sigmas_simple(steps: int, shift=None):
    """ComfyUI "simple": every (10000/N)-th entry of its table from the top (comfy/samplers.py:413-420)."""
    stride = COMFY_TABLE / steps
    return np.array([COMFY_TABLE - int(i * stride) for i in range(steps)], dtype=np.float64) / COMFY_TABLE


def _comfy_linspace(steps: int, shift, count: int):
    """ComfyUI normal/sgm_uniform: times evenly spaced from sigma_max (1) to sigma_min (the table's first
    entry, a shifted value used as a time: comfy/samplers.py:439-461), in float32 as torch.linspace does."""
    if shift is None:
        raise ParityError("the normal and sgm_uniform schedules need the model's shift")
    sigma_min = float(shift(np.array([1.0 / COMFY_TABLE], dtype=np.float32))[0])
    return torch.linspace(1.0, sigma_min, count, dtype=torch.float32).numpy(), sigma_min


@register("sigma_schedule", "normal")
def sigmas_normal(steps: int, shift=None):
    """ComfyUI "normal": N times evenly spaced from 1 to the table's smallest sigma, then shifted again."""
    times, sigma_min = _comfy_linspace(steps, shift, steps)
    if abs(float(shift(np.array([sigma_min], dtype=np.float32))[0])) <= 1e-5:
        # ComfyUI then takes N+1 times and appends no 0; the scheduler here always appends one.
        raise ParityError("the normal schedule of a shift this small ends at sigma 0 by itself; not modelled")
    return times


@register("sigma_schedule", "sgm_uniform")
def sigmas_sgm_uniform(steps: int, shift=None):
    """ComfyUI "sgm_uniform": N+1 times from 1 to the table's smallest sigma, the last dropped, shifted again."""
    return _comfy_linspace(steps, shift, steps + 1)[0][:-1]


@register("sigma_schedule", "beta")
def sigmas_beta(steps: int, shift=None):
    """ComfyUI "beta" (alpha = beta = 0.6): table entries at beta-distribution quantiles, repeats dropped
    (comfy/samplers.py:464-476), so it can have fewer than N steps."""
    from scipy.stats import beta

    quantiles = 1 - np.linspace(0, 1, steps, endpoint=False)
    indices = np.rint(beta.ppf(quantiles, 0.6, 0.6) * (COMFY_TABLE - 1))
    kept = [int(t) for i, t in enumerate(indices) if i == 0 or t != indices[i - 1]]
    return (np.array(kept, dtype=np.float64) + 1) / COMFY_TABLE


def time_shift(times, *, mu: float | None, shift: float):
    """The scheduler's shift of float32 times: exponential with mu (dynamic shifting), else the static one,
    evaluated as FlowMatchEulerDiscreteScheduler.set_timesteps evaluates it (float32)."""
    t = np.asarray(times, dtype=np.float32)
    if mu is not None:  # math.exp: a Python float keeps the arithmetic in float32, as in the scheduler
        return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** 1.0)
    return shift * t / (1 + (shift - 1) * t)


def mu_for_tokens(tokens: int, base_seq_len: int, max_seq_len: int, base_shift: float, max_shift: float) -> float:
    """Resolution-dependent shift: a line through (base_seq_len, base_shift), (max_seq_len, max_shift)."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return tokens * slope + base_shift - slope * base_seq_len


# --- samplers ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplerPlan:
    """What the engine feeds the transformer as its timestep, and how one step updates the latents."""

    timestep: Callable[[torch.Tensor, torch.Tensor, torch.dtype], torch.Tensor]  # (sigma, t, state dtype) -> [1]
    step: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (x, v, σ, σ') -> x'


def _timestep_scheduler(sigma, t, dtype):
    return t.expand(1).to(dtype) / 1000


def _step_flow_match(x, v, sigma, sigma_next):
    # FlowMatchEulerDiscreteScheduler.step: float32 sample + (σ' − σ)·v, back in v's dtype
    return (x.to(torch.float32) + (sigma_next - sigma) * v).to(v.dtype)


def _timestep_sigma(sigma, t, dtype):
    return sigma.expand(1).to(torch.float32)


def _step_euler_x0(x, v, sigma, sigma_next):
    # k-diffusion euler through the denoised estimate, float32 (comfy/k_diffusion/sampling.py:184-206,
    # CONST.calculate_denoised comfy/model_sampling.py:66-68, model output .float() model_base.py:199)
    v = v.to(torch.float32)
    denoised = x - v * sigma
    derivative = (x - denoised) / sigma
    return x + derivative * (sigma_next - sigma)


@register("sampler", "flow_match_euler")
def sampler_flow_match_euler() -> SamplerPlan:
    """diffusers: timestep σ·1000 in the state dtype /1000; x + (σ'−σ)·v in float32, kept in v's dtype."""
    return SamplerPlan(_timestep_scheduler, _step_flow_match)


@register("sampler", "euler_x0")
def sampler_euler_x0() -> SamplerPlan:
    """ComfyUI euler: timestep σ (float32); x0 = x − σ·v, d = (x − x0)/σ, x + d·(σ'−σ), all float32."""
    return SamplerPlan(_timestep_sigma, _step_euler_x0)


@register("latent_dtype", "model")
def latent_dtype_model(model_dtype: torch.dtype) -> torch.dtype:
    """The transformer's dtype: noise, latents and control latents rounded to it (diffusers)."""
    return model_dtype


@register("latent_dtype", "fp32")
def latent_dtype_fp32(model_dtype: torch.dtype) -> torch.dtype:
    """float32 whatever the model's dtype, cast to it at each call (ComfyUI, comfy/sample.py:15)."""
    return torch.float32


describe_family("timestep_dtype", "the precision the timestep reaches the transformer's time embedding in")


@register("timestep_dtype", "model")
def timestep_model(timestep: torch.Tensor):
    """None: the transformer rounds timestep*1000 to its own dtype first (diffusers FluxTransformer2DModel)."""
    return None


@register("timestep_dtype", "fp32")
def timestep_fp32(timestep: torch.Tensor):
    """timestep*1000 in float32 into the time embedding, whatever the model's dtype (ComfyUI, model_base.py:181,
    ldm/flux/layers.py:29-48); guidance still goes in the model's dtype, as in ComfyUI."""
    return timestep.to(torch.float32) * 1000
