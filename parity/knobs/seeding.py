"""Seed policies: where the initial noise's random numbers come from.

The same seed gives different noise on a CPU and a CUDA generator, which is a common,
silent cause of "different image, same settings".
"""
from __future__ import annotations

import torch

from ..errors import ParityError
from .registry import describe_family, register

describe_family("generator", "which torch generator draws the initial noise")


@register("generator", "cpu")
def generator_cpu(seed: int, device: torch.device):
    """torch.Generator('cpu').manual_seed(seed) (reference server, most diffusers scripts)."""
    return torch.Generator("cpu").manual_seed(seed)


@register("generator", "global")
def generator_global(seed: int, device: torch.device):
    """torch.manual_seed(seed) and no generator: the global CPU generator (AI Toolkit)."""
    torch.manual_seed(seed)
    return None


@register("generator", "cuda")
def generator_cuda(seed: int, device: torch.device):
    """torch.Generator('cuda').manual_seed(seed): noise drawn on the GPU."""
    if not torch.cuda.is_available():
        raise ParityError("generator 'cuda' needs a CUDA device; this machine has none (use 'cpu' or 'global')")
    return torch.Generator("cuda").manual_seed(seed)


describe_family("noise", "how the initial noise is drawn from the generator")


@register("noise", "latent")
def noise_latent(shape, generator, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """randn in the latent dtype on the execution device (diffusers prepare_latents' randn_tensor)."""
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor(shape, generator=generator, device=device, dtype=dtype)


@register("noise", "fp32_cpu")
def noise_fp32_cpu(shape, generator, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """randn in float32 on the CPU, then cast (ComfyUI prepare_noise, comfy/sample.py:8-15)."""
    from diffusers.utils.torch_utils import randn_tensor

    if generator is not None and generator.device.type != "cpu":
        raise ParityError(f"noise fp32_cpu draws on the CPU; a {generator.device.type} generator cannot feed it "
                          "(use generator cpu or global)")
    noise = randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32)
    return noise.to(device=device, dtype=dtype)
