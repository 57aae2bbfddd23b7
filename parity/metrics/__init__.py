"""Metrics comparing an inference output with an AI Toolkit preview.

``compare`` is the entry point (one flat record per pair) and ``compare_with_pictures`` also
draws the pictures; the other names are the building blocks, usable on uint8 HxWx3 RGB arrays.
"""
from .align import align_to_preview
from .compare import compare, compare_with_pictures, distance, jpeg_settings, matched_view, rerun_distance
from .diffmaps import abs_diff_heatmap, ssim_heatmap
from .jpeg import chroma_subsampling, estimate_quality, reencode_jpeg
from .lpips import get_model as get_lpips_model
from .lpips import lpips_distance
from .pixel import abs_stats, psnr
from .ssim import mean_ssim, ssim, ssim_map

__all__ = [
    "abs_diff_heatmap",
    "abs_stats",
    "align_to_preview",
    "chroma_subsampling",
    "compare",
    "compare_with_pictures",
    "distance",
    "estimate_quality",
    "get_lpips_model",
    "jpeg_settings",
    "lpips_distance",
    "matched_view",
    "mean_ssim",
    "psnr",
    "reencode_jpeg",
    "rerun_distance",
    "ssim",
    "ssim_heatmap",
    "ssim_map",
]
