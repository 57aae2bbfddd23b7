"""Pictures of where two images differ: an absolute-difference heatmap and an SSIM map.

Both use one fixed scale (not stretched per pair), so pictures of different pairs can be
compared by eye; bright means different. The colormap is a numpy lookup table, which
keeps a 1024x1024 picture to a few milliseconds.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from .pixel import abs_diff

# Piecewise linear through matplotlib's "inferno" at 0, 1/4, 1/2, 3/4 and 1: dark to bright
# yellow, monotonic in lightness, readable in greyscale print.
_ANCHORS = np.array([(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)], dtype=np.float64)
_LUT = np.stack(
    [np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_ANCHORS)), _ANCHORS[:, c]) for c in range(3)], axis=1
).round().astype(np.uint8)


def colorize(values: np.ndarray) -> Image.Image:
    """An RGB picture of a 2-D array of values in [0, 1] (clipped)."""
    idx = np.rint(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8)
    return Image.fromarray(_LUT[idx])


def abs_diff_heatmap(a, b) -> Image.Image:
    """Largest channel difference per pixel on a square-root scale, so that differences of a
    few levels stay visible: 4 levels map to 1/8 of the scale, 64 to 1/2, 255 to all of it."""
    return colorize(np.sqrt(abs_diff(a, b).max(axis=2) / 255.0))


def ssim_heatmap(smap: np.ndarray) -> Image.Image:
    """1 - SSIM per pixel: black where the structure agrees, brightest at SSIM <= 0."""
    return colorize(1.0 - smap)
