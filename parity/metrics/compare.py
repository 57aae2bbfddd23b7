"""The metrics of one output/preview pair as one flat, JSON-ready record (and its pictures)."""
from __future__ import annotations

import numpy as np
from PIL import Image

from .align import align_to_preview
from .diffmaps import abs_diff_heatmap, ssim_heatmap
from .jpeg import PIL_DEFAULT_SUBSAMPLING, chroma_subsampling, estimate_quality, reencode_jpeg
from .lpips import lpips_distance
from .pixel import abs_stats, psnr
from .ssim import mean_ssim, ssim, ssim_map


def _metrics(a, b, lpips_net: str, device: str, ssim_value: float | None = None) -> dict:
    mean_abs, max_abs = abs_stats(a, b)
    return {
        "ssim": ssim(a, b, device=device) if ssim_value is None else ssim_value,
        "lpips": lpips_distance(a, b, net=lpips_net, device=device),
        "psnr": psnr(a, b),
        "mean_abs": mean_abs,
        "max_abs": max_abs,
    }


def _floor(raw: Image.Image, preview: Image.Image, lpips_net: str, device: str) -> dict:
    """floor_*: ``raw`` compressed exactly as the JPEG preview was (quality from its tables)."""
    quality = estimate_quality(preview)
    if quality is None:
        return {}
    sub = chroma_subsampling(preview)
    sub = PIL_DEFAULT_SUBSAMPLING if sub is None else sub
    out, prev, _ = align_to_preview(raw, preview)
    floor_out = np.asarray(reencode_jpeg(Image.fromarray(out), quality, sub))
    floor = _metrics(floor_out, prev, lpips_net, device)
    return {"preview_jpeg_quality": quality, "preview_jpeg_subsampling": sub,
            **{f"floor_{k}": v for k, v in floor.items()}}


def compare_with_pictures(output: Image.Image, preview: Image.Image, *, raw: Image.Image | None = None,
                          lpips_net: str = "alex", device: str = "cpu") -> tuple[dict, tuple[Image.Image, Image.Image]]:
    """The record of ``compare`` plus (abs-diff heatmap, SSIM map), sharing one alignment and SSIM map."""
    out, prev, record = align_to_preview(output, preview)
    smap = ssim_map(out, prev, device=device)
    result = {**_metrics(out, prev, lpips_net, device, mean_ssim(smap)), **record, "lpips_net": lpips_net}
    result.update(_floor(output if raw is None else raw, preview, lpips_net, device))
    return result, (abs_diff_heatmap(out, prev), ssim_heatmap(smap))


def compare(output: Image.Image, preview: Image.Image, *, raw: Image.Image | None = None,
            lpips_net: str = "alex", device: str = "cpu") -> dict:
    """ssim, lpips, psnr, mean_abs, max_abs of ``output`` (what a user receives) against ``preview``,
    with the size record of ``align_to_preview``.

    When the preview is a JPEG, floor_* repeat the metrics on ``raw`` (the pipeline's pixels;
    default ``output``) compressed exactly as the preview was: the gap left once compression is
    matched, so the difference between the two sets is compression alone (an exact reproduction
    scores floor_ssim 1 and floor_psnr inf). psnr is ``math.inf`` for identical pixels;
    ``parity.results.json_safe`` spells it for strict JSON.
    """
    return compare_with_pictures(output, preview, raw=raw, lpips_net=lpips_net, device=device)[0]
