"""LPIPS v0.1 (Zhang et al., 2018) in plain torch, so the metric needs neither torchvision nor
the ``lpips`` package.

Both images go through a pretrained backbone (AlexNet by default, VGG16 optional); at each
tapped relu the features are unit-normalised across channels, their squared difference is
weighted per channel by the learned non-negative "lin" vector, averaged over space, and the
layers are summed. Weights come from :mod:`parity.metrics.weights`.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .weights import load_params

_SHIFT = (-0.030, -0.088, -0.188)  # LPIPS' ScalingLayer: ImageNet statistics mapped to [-1, 1]
_SCALE = (0.458, 0.448, 0.450)
_EPS = 1e-10

# Per conv layer, in checkpoint order: (stride, padding, max-pool kernel applied before it
# with stride 2 or None, whether LPIPS taps its relu). Channels and kernel sizes come from
# the weights themselves.
_ARCHITECTURES = {
    "alex": (
        "AlexNet_0",
        [(4, 2, None, True), (1, 2, 3, True), (1, 1, 3, True), (1, 1, None, True), (1, 1, None, True)],
    ),
    "vgg": (  # taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
        "VGG16_0",
        [(1, 1, None, False), (1, 1, None, True)]
        + [(1, 1, 2, False), (1, 1, None, True)]
        + [(1, 1, 2, False), (1, 1, None, False), (1, 1, None, True)]
        + [(1, 1, 2, False), (1, 1, None, False), (1, 1, None, True)] * 2,
    ),
}


class LPIPS(nn.Module):
    """LPIPS for ``net`` built from a parameter tree as returned by ``load_params(net)``."""

    def __init__(self, net: str, params: dict):
        super().__init__()
        prefix, layers = _ARCHITECTURES[net]
        self.convs = nn.ModuleList()
        self.layout = [(pool, tap) for _, _, pool, tap in layers]
        for i, (stride, padding, _, _) in enumerate(layers):
            p = params[prefix][f"Conv_{i}"]
            kernel = torch.from_numpy(p["kernel"]).permute(3, 2, 0, 1)  # flax HWIO -> torch OIHW
            conv = nn.Conv2d(kernel.shape[1], kernel.shape[0], kernel.shape[2:], stride=stride, padding=padding)
            with torch.no_grad():
                conv.weight.copy_(kernel)
                conv.bias.copy_(torch.from_numpy(p["bias"]))
            self.convs.append(conv)
        taps = sum(tap for _, tap in self.layout)
        lin = [torch.from_numpy(params[f"NetLinLayer_{j}"]["Conv_0"]["kernel"]).flatten() for j in range(taps)]
        self.lin = nn.ParameterList(nn.Parameter(w, requires_grad=False) for w in lin)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The tapped relu outputs for RGB input in [-1, 1] (N,3,H,W)."""
        x = (x - self.shift) / self.scale
        taps = []
        for conv, (pool, tap) in zip(self.convs, self.layout):
            if pool:
                x = F.max_pool2d(x, pool, 2)
            x = F.relu(conv(x))
            if tap:
                taps.append(x)
        return taps

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """Distance per image pair (N,) for two RGB batches in [-1, 1]; both run as one batch,
        channels-last (~20% faster convolutions and a 5x faster per-channel head on CPU)."""
        n = x0.shape[0]
        x = torch.cat([x0, x1]).contiguous(memory_format=torch.channels_last)
        total = x0.new_zeros(n)
        for f, w in zip(self.features(x), self.lin):
            f = f / (f.norm(dim=1, keepdim=True) + _EPS)
            d = (f[:n] - f[n:]).square_()
            total = total + d.mean((2, 3)) @ w  # the spatial mean commutes with the 1x1 "lin" conv
        return total


@lru_cache(maxsize=None)
def _cached_model(net: str, device: str) -> LPIPS:
    return LPIPS(net, load_params(net)).to(device)


def get_model(net: str = "alex", device: str | torch.device = "cpu") -> LPIPS:
    """The pretrained LPIPS ``net`` on ``device``, loaded (and checksummed) once per process."""
    return _cached_model(net, str(torch.device(device)))


def to_input(img) -> torch.Tensor:
    """uint8 HxWx3 RGB -> float32 1x3xHxW in [-1, 1], the scaling LPIPS was trained with."""
    return torch.tensor(np.asarray(img)).permute(2, 0, 1).unsqueeze(0).float() / 127.5 - 1


def lpips_distance(a, b, *, net: str = "alex", device: str | torch.device = "cpu") -> float:
    """LPIPS v0.1 distance between two uint8 HxWx3 RGB images of the same size."""
    model = get_model(net, device)
    dev = torch.device(device)
    with torch.inference_mode():
        return float(model(to_input(a).to(dev), to_input(b).to(dev))[0])
