"""SSIM with Wang et al.'s settings, numerically equal to scikit-image's reference call.

The reference is ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=-1)``: an 11-tap
Gaussian window (sigma 1.5, truncated at 3.5 sigma) with half-sample symmetric borders
(scipy's "reflect"), population covariances, and the mean taken after cropping the
5-pixel border. skimage needs ~0.3 s for a 1024x1024 pair; this version filters
separably in cache-sized row stripes and needs ~0.08 s on two cores (0.11 s on one).
It stays in float64: a float32 version is off by ~1e-4 on flat regions, where
E[x^2] - E[x]^2 cancels.
Runs on any torch device that supports float64 (CPU, CUDA).
"""
from __future__ import annotations

import numpy as np
import torch

SIGMA = 1.5
RADIUS = int(3.5 * SIGMA + 0.5)  # 5, the radius scipy's gaussian_filter uses with truncate=3.5
C1 = (0.01 * 255) ** 2
C2 = (0.03 * 255) ** 2
_TAPS = np.exp(-0.5 * (np.arange(-RADIUS, RADIUS + 1) / SIGMA) ** 2)
_TAPS = [float(t) for t in _TAPS / _TAPS.sum()]  # centre tap is _TAPS[RADIUS]
_CPU_STRIPE = 32  # output rows per stripe: keeps a stripe's working set inside L2


def _symmetric_index(n: int, device) -> torch.Tensor:
    """Indices padding an axis of length n by RADIUS with half-sample symmetry (d c b a | a b c d)."""
    i = np.arange(-RADIUS, n + RADIUS)
    i = np.where(i < 0, -i - 1, i)
    i = np.where(i >= n, 2 * n - 1 - i, i)
    return torch.from_numpy(i).to(device)


def _blur(p: torch.Tensor, dim: int, n: int) -> torch.Tensor:
    """Gaussian along ``dim`` of ``p`` (already padded by RADIUS there), exploiting tap symmetry."""
    out = p.narrow(dim, RADIUS, n) * _TAPS[RADIUS]
    for k in range(1, RADIUS + 1):
        pair = p.narrow(dim, RADIUS - k, n) + p.narrow(dim, RADIUS + k, n)
        out.add_(pair, alpha=_TAPS[RADIUS + k])
    return out


def _as_uint8_rgb(img) -> np.ndarray:
    arr = np.asarray(img)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 array, got {arr.dtype} {arr.shape}")
    return arr


def ssim_map(a, b, *, device: str | torch.device = "cpu") -> np.ndarray:
    """Per-pixel SSIM (HxW float64, mean over the RGB channels) of two uint8 HxWx3 images.

    The border pixels are included (skimage's ``full=True`` map); ``ssim`` crops them.
    """
    a, b = _as_uint8_rgb(a), _as_uint8_rgb(b)
    if a.shape != b.shape:
        raise ValueError(f"SSIM needs equal shapes, got {a.shape} and {b.shape}")
    h, w, _ = a.shape
    if min(h, w) < 2 * RADIUS + 1:
        raise ValueError(f"SSIM needs images of at least {2 * RADIUS + 1}x{2 * RADIUS + 1}, got {w}x{h}")
    device = torch.device(device)
    pair = torch.from_numpy(np.stack([a, b])).to(device).permute(0, 3, 1, 2)  # 2,3,H,W uint8
    pair = pair.index_select(2, _symmetric_index(h, device)).index_select(3, _symmetric_index(w, device))
    stripe = _CPU_STRIPE if device.type == "cpu" else h
    out = torch.empty((h, w), dtype=torch.float64, device=device)
    for r0 in range(0, h, stripe):
        n = min(stripe, h - r0)
        x, y = pair[:, :, r0 : r0 + n + 2 * RADIUS].to(torch.float64)
        # four filtered moments suffice: vx + vy only ever appears as a sum
        moments = torch.stack([x, y, x * x + y * y, x * y])
        ux, uy, uxx_yy, uxy = _blur(_blur(moments, 2, n), 3, w)
        uxuy = ux * uy
        uu = ux * ux + uy * uy
        s = (2 * uxuy + C1) * (2 * (uxy - uxuy) + C2) / ((uu + C1) * (uxx_yy - uu + C2))
        out[r0 : r0 + n] = s.mean(0)
    return out.cpu().numpy()


def mean_ssim(smap: np.ndarray) -> float:
    """The SSIM score of a map from ``ssim_map``: its mean without the filter-radius border."""
    return float(smap[RADIUS:-RADIUS, RADIUS:-RADIUS].mean(dtype=np.float64))


def ssim(a, b, *, device: str | torch.device = "cpu") -> float:
    """Mean SSIM of two uint8 HxWx3 images, equal to skimage's Wang et al. call within 1e-12."""
    return mean_ssim(ssim_map(a, b, device=device))
