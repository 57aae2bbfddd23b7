"""The metrics of one output/preview pair as one flat, JSON-ready record (and its pictures)."""
from __future__ import annotations

import numpy as np
from PIL import Image

from .align import align_to_preview
from .diffmaps import abs_diff_heatmap, ssim_heatmap
from ..knobs.encoding import roundtrip
from .jpeg import PIL_DEFAULT_SUBSAMPLING, chroma_subsampling, estimate_quality, read_jpeg_luma, reencode_jpeg
from .lpips import lpips_distance
from .pixel import abs_stats, psnr
from .ssim import mean_ssim, ssim, ssim_map


def distance(a: np.ndarray, b: np.ndarray, lpips_net: str = "alex", device: str = "cpu",
             ssim_value: float | None = None) -> dict:
    """ssim, lpips, psnr, mean_abs, max_abs of two uint8 HxWx3 arrays of one size."""
    mean_abs, max_abs = abs_stats(a, b)
    return {
        "ssim": ssim(a, b, device=device) if ssim_value is None else ssim_value,
        "lpips": lpips_distance(a, b, net=lpips_net, device=device),
        "psnr": psnr(a, b),
        "mean_abs": mean_abs,
        "max_abs": max_abs,
    }


def jpeg_settings(preview: Image.Image) -> tuple[int, int] | None:
    """(quality, chroma subsampling) a JPEG preview was saved with; None for any other format."""
    quality = estimate_quality(preview)
    if quality is None:
        return None
    sub = chroma_subsampling(preview)
    return quality, PIL_DEFAULT_SUBSAMPLING if sub is None else sub


def matched_view(output: Image.Image, raw: Image.Image | None, preview: Image.Image) -> np.ndarray:
    """The output as the preview was stored, at the preview's size: a JPEG preview's twin is the
    pipeline's pixels (``raw``) compressed exactly as the preview was; otherwise the output as delivered.
    Two outputs' views differ only where a comparison with the preview could see it."""
    settings = jpeg_settings(preview)
    if settings is None:
        return align_to_preview(output, preview)[0]
    aligned = align_to_preview(output if raw is None else raw, preview)[0]
    return np.asarray(reencode_jpeg(Image.fromarray(aligned), *settings))


def rerun_distance(first: tuple[Image.Image, Image.Image | None], second: tuple[Image.Image, Image.Image | None],
                   preview: Image.Image, lpips_net: str = "alex", device: str = "cpu") -> dict:
    """How far a rerun moved an output, as the comparison with ``preview`` sees it. Each output is
    (as delivered, the pipeline's pixels or None): the distance of their ``matched_view``s and, for a
    JPEG preview, ``jpeg_excess`` of the rerun over the first output compressed like the preview."""
    out = distance(matched_view(*first, preview), matched_view(*second, preview), lpips_net, device)
    settings = jpeg_settings(preview)
    if settings is not None:
        first_pixels = align_to_preview(first[1] or first[0], preview)[0]
        encoded = roundtrip(Image.fromarray(first_pixels), format="JPEG", quality=settings[0],
                            subsampling=settings[1])[0]
        luma = read_jpeg_luma(encoded)
        if luma is not None:
            out["jpeg_excess"] = luma.excess(align_to_preview(second[1] or second[0], preview)[0])
    return out


def _floor(output: Image.Image, raw: Image.Image | None, preview: Image.Image, prev: np.ndarray,
           lpips_net: str, device: str) -> dict:
    """floor_*: the pipeline's pixels compressed exactly as the JPEG preview was (quality from its tables);
    jpeg_excess: how far those pixels' luma lies outside what the preview's coefficients allow."""
    settings = jpeg_settings(preview)
    if settings is None:
        return {}
    floor = distance(matched_view(output, raw, preview), prev, lpips_net, device)
    record = {"preview_jpeg_quality": settings[0], "preview_jpeg_subsampling": settings[1],
              **{f"floor_{k}": v for k, v in floor.items()}}
    luma = read_jpeg_luma(preview)
    if luma is not None:
        record["jpeg_excess"] = luma.excess(align_to_preview(output if raw is None else raw, preview)[0])
    return record


def compare_with_pictures(output: Image.Image, preview: Image.Image, *, raw: Image.Image | None = None,
                          lpips_net: str = "alex", device: str = "cpu") -> tuple[dict, tuple[Image.Image, Image.Image]]:
    """The record of ``compare`` plus (abs-diff heatmap, SSIM map), sharing one alignment and SSIM map."""
    out, prev, record = align_to_preview(output, preview)
    smap = ssim_map(out, prev, device=device)
    result = {**distance(out, prev, lpips_net, device, mean_ssim(smap)), **record, "lpips_net": lpips_net}
    result.update(_floor(output, raw, preview, prev, lpips_net, device))
    return result, (abs_diff_heatmap(out, prev), ssim_heatmap(smap))


def compare(output: Image.Image, preview: Image.Image, *, raw: Image.Image | None = None,
            lpips_net: str = "alex", device: str = "cpu") -> dict:
    """ssim, lpips, psnr, mean_abs, max_abs of ``output`` (what a user receives) against ``preview``,
    with the size record of ``align_to_preview``.

    When the preview is a JPEG, floor_* repeat the metrics on ``raw`` (the pipeline's pixels;
    default ``output``) compressed exactly as the preview was: the gap left once compression is
    matched, so the difference between the two sets is compression alone (an exact reproduction
    scores floor_ssim 1 and floor_psnr inf); jpeg_excess is the gap the preview can resolve (see
    ``parity.metrics.jpeg``: 0 for the preview's own original, ~0.1 for another CPU's rounding). psnr is ``math.inf`` for identical pixels;
    ``parity.files.json_safe`` spells it for strict JSON.
    """
    return compare_with_pictures(output, preview, raw=raw, lpips_net=lpips_net, device=device)[0]
