"""The metrics of one output/preview pair as one flat, JSON-ready record."""
from __future__ import annotations

import numpy as np
from PIL import Image

from .align import align_to_preview
from .jpeg import PIL_DEFAULT_SUBSAMPLING, chroma_subsampling, estimate_quality, reencode_jpeg
from .lpips import lpips_distance
from .pixel import abs_stats, psnr
from .ssim import ssim


def _metrics(a, b, lpips_net: str, device: str) -> dict:
    mean_abs, max_abs = abs_stats(a, b)
    return {
        "ssim": ssim(a, b, device=device),
        "lpips": lpips_distance(a, b, net=lpips_net, device=device),
        "psnr": psnr(a, b),
        "mean_abs": mean_abs,
        "max_abs": max_abs,
    }


def compare(
    output: Image.Image,
    preview: Image.Image,
    *,
    lpips_net: str = "alex",
    device: str = "cpu",
    jpeg_quality: int | None = None,
    subsampling: int | None = None,
) -> dict:
    """ssim, lpips, psnr, mean_abs, max_abs of ``output`` against ``preview``, with the size
    record of ``align_to_preview``. With ``jpeg_quality`` (the preview's, see
    ``jpeg.estimate_quality``) the same metrics are repeated as floor_* on the output after
    the same JPEG round trip, so compression no longer counts as drift (an exact
    reproduction scores floor_ssim 1 and floor_psnr inf).
    ``subsampling`` None means PIL's default, 4:2:0. psnr is ``math.inf`` for identical
    pixels; ``parity.results.json_safe`` spells it for strict JSON.
    """
    out, prev, record = align_to_preview(output, preview)
    result = {**_metrics(out, prev, lpips_net, device), **record, "lpips_net": lpips_net}
    if jpeg_quality is not None:
        sub = PIL_DEFAULT_SUBSAMPLING if subsampling is None else subsampling
        floor_out = np.asarray(reencode_jpeg(Image.fromarray(out), jpeg_quality, sub))
        floor = _metrics(floor_out, prev, lpips_net, device)
        result.update(jpeg_quality=jpeg_quality, jpeg_subsampling=sub)
        result.update({f"floor_{k}": v for k, v in floor.items()})
    return result


def compare_with_preview(served: Image.Image, raw: Image.Image, preview: Image.Image, *, lpips_net: str = "alex",
                         device: str = "cpu") -> dict:
    """What the runner records for one case.

    The plain metrics compare what a user receives (``served``: the output after its own
    encoding) with the preview file. When the preview is a JPEG, floor_* compare the
    pipeline's pixels (``raw``) compressed exactly as the preview was: the gap that is left
    once compression is matched, so the difference between the two is compression alone.
    """
    result = compare(served, preview, lpips_net=lpips_net, device=device)
    quality = estimate_quality(preview)
    if quality is not None:
        sub = chroma_subsampling(preview)
        sub = PIL_DEFAULT_SUBSAMPLING if sub is None else sub
        out, prev, _ = align_to_preview(raw, preview)
        floor_out = np.asarray(reencode_jpeg(Image.fromarray(out), quality, sub))
        result.update(preview_jpeg_quality=quality, preview_jpeg_subsampling=sub)
        result.update({f"floor_{k}": v for k, v in _metrics(floor_out, prev, lpips_net, device).items()})
    return result
