"""Pixel-level distances of two uint8 RGB images, in 0..255 units."""
from __future__ import annotations

import math

import numpy as np


def abs_diff(a, b) -> np.ndarray:
    """|a - b| per pixel and channel, uint8 (a uint8 difference would wrap around)."""
    return np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).astype(np.uint8)


def psnr(a, b) -> float:
    """PSNR in dB with data range 255; ``math.inf`` for identical images."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    mse = float(np.mean(d * d))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def abs_stats(a, b) -> tuple[float, int]:
    """Mean and maximum absolute difference over all pixels and channels."""
    d = abs_diff(a, b)
    return float(d.mean(dtype=np.float64)), int(d.max())
