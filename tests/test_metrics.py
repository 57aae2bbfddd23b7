"""SSIM against scikit-image, PSNR/abs stats, JPEG quality estimation and re-encoding,
size-mismatch handling, diff pictures, and the ``compare`` record."""
from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from parity.metrics import (
    abs_stats,
    chroma_subsampling,
    compare,
    compare_with_pictures,
    estimate_quality,
    psnr,
    reencode_jpeg,
    ssim,
    ssim_map,
)
from parity.metrics.jpeg import ANNEX_K_CHROMINANCE, ANNEX_K_LUMINANCE
from parity.files import json_safe

torch.set_num_threads(1)


def _skimage_ssim(a, b, full=False):
    return structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=-1, full=full
    )


def _pairs():
    """Random pairs of the kinds that stress SSIM differently, in odd shapes."""
    rng = np.random.default_rng(1234)
    for h, w in [(11, 11), (37, 64), (131, 97)]:
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        yield "noise", a, rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        yield "near", a, np.clip(a + rng.integers(-12, 13, a.shape), 0, 255).astype(np.uint8)
        smooth = ndimage.gaussian_filter(rng.random((h, w, 3)), (6, 6, 0))
        smooth = np.rint(255 * (smooth - smooth.min()) / np.ptp(smooth)).astype(np.uint8)
        yield "smooth", smooth, np.clip(smooth + rng.integers(-2, 3, a.shape), 0, 255).astype(np.uint8)
        flat = np.full((h, w, 3), 252, np.uint8)  # flat bright regions are where float32 SSIM drifts
        step = flat.copy()
        step[h // 2 :] = 255
        yield "flat", flat, step
        yield "identical", smooth, smooth.copy()


@pytest.mark.parametrize("kind,a,b", list(_pairs()))
def test_ssim_equals_skimage(kind, a, b):
    ref, ref_map = _skimage_ssim(a, b, full=True)
    assert abs(ssim(a, b) - ref) < 1e-9
    assert np.abs(ssim_map(a, b) - ref_map.mean(axis=2)).max() < 1e-9


def test_ssim_max_deviation_on_random_pairs():
    rng = np.random.default_rng(7)
    worst = 0.0
    for _ in range(20):
        h, w = rng.integers(11, 120, size=2)
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        b = np.clip(a + rng.integers(-60, 61, a.shape), 0, 255).astype(np.uint8)
        worst = max(worst, abs(ssim(a, b) - _skimage_ssim(a, b)))
    assert worst < 1e-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_ssim_on_cuda_equals_cpu():
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 256, (2, 70, 90, 3), dtype=np.uint8)
    assert abs(ssim(a, b, device="cuda") - ssim(a, b)) < 1e-9


def test_ssim_rejects_bad_input():
    a = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ValueError, match="equal shapes"):
        ssim(a, np.zeros((20, 21, 3), np.uint8))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(a[:10], a[:10])
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        ssim(a.astype(np.float32), a)


def test_psnr_and_abs_stats():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    b = a.copy()
    b[0, 0, 0] = 255 - b[0, 0, 0]  # one wrap-prone difference
    b[5, 5] = np.clip(b[5, 5].astype(int) + 3, 0, 255)
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), abs=1e-9)
    diff = np.abs(a.astype(int) - b.astype(int))
    assert abs_stats(a, b) == (pytest.approx(diff.mean()), diff.max())
    assert psnr(a, a) == math.inf
    assert abs_stats(a, a) == (0.0, 0)


def test_json_safe_spells_non_finite_floats():
    record = {"psnr": math.inf, "x": [-math.inf, 1.5], "n": math.nan, "s": None}
    text = json.dumps(json_safe(record), allow_nan=False)
    back = json.loads(text)
    assert float(back["psnr"]) == math.inf and float(back["x"][0]) == -math.inf
    assert math.isnan(float(back["n"])) and back["x"][1] == 1.5 and back["s"] is None


def _jpeg(img: Image.Image, **save_args) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **save_args)
    buf.seek(0)
    return Image.open(buf)


@pytest.fixture(scope="module")
def textured() -> Image.Image:
    rng = np.random.default_rng(5)
    base = ndimage.gaussian_filter(rng.random((48, 64, 3)) * 255, (2, 2, 0))
    return Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))


def test_annex_k_tables_are_quality_50(textured):
    q = _jpeg(textured, quality=50).quantization
    assert list(q[0]) == list(ANNEX_K_LUMINANCE) and list(q[1]) == list(ANNEX_K_CHROMINANCE)


@pytest.mark.parametrize("quality", [50, 75, 95])
def test_estimate_quality(textured, quality):
    assert estimate_quality(_jpeg(textured, quality=quality)) == quality
    assert estimate_quality(_jpeg(textured.convert("L"), quality=quality)) == quality


def test_estimate_quality_is_exact_for_every_pil_quality(textured):
    small = textured.crop((0, 0, 16, 16))
    assert all(estimate_quality(_jpeg(small, quality=q)) == q for q in range(1, 101))


def test_not_a_jpeg(textured):
    buf = io.BytesIO()
    textured.save(buf, format="PNG")
    buf.seek(0)
    assert estimate_quality(Image.open(buf)) is None and chroma_subsampling(Image.open(buf)) is None
    assert estimate_quality(textured) is None and chroma_subsampling(textured) is None
    assert chroma_subsampling(_jpeg(textured.convert("L"))) is None


@pytest.mark.parametrize("subsampling", [0, 1, 2])
def test_chroma_subsampling(textured, subsampling):
    assert chroma_subsampling(_jpeg(textured, subsampling=subsampling)) == subsampling


def test_reencode_reproduces_an_ai_toolkit_preview(textured, tmp_path):
    """AI Toolkit writes previews with a bare ``image.save(path)``; reading its settings back
    from the file and re-encoding the original must give the preview's exact pixels."""
    path = tmp_path / "preview.jpg"
    textured.save(path)
    with Image.open(path) as preview:
        quality, sub = estimate_quality(preview), chroma_subsampling(preview)
        assert (quality, sub) == (75, 2)
        expected = np.asarray(preview.convert("RGB"))
    assert np.array_equal(np.asarray(reencode_jpeg(textured, quality, sub)), expected)
    assert np.array_equal(np.asarray(reencode_jpeg(textured)), expected)


KEYS = {"ssim", "lpips", "psnr", "mean_abs", "max_abs", "size_mismatch", "output_size", "preview_size"}
KEYS |= {"resized_for_compare", "lpips_net"}
FLOOR_KEYS = {"preview_jpeg_quality", "preview_jpeg_subsampling", "jpeg_excess"} | {f"floor_{k}" for k in ("ssim", "lpips", "psnr", "mean_abs", "max_abs")}


def test_compare_identical(textured):
    r = compare(textured, textured.copy())
    assert set(r) == KEYS
    assert r["ssim"] == pytest.approx(1.0, abs=1e-12) and r["lpips"] == pytest.approx(0.0, abs=1e-6)
    assert r["psnr"] == math.inf and r["mean_abs"] == 0.0 and r["max_abs"] == 0
    assert r["size_mismatch"] is False and r["resized_for_compare"] is None
    assert r["output_size"] == r["preview_size"] == [64, 48]


def test_compare_size_mismatch_resizes_output(textured):
    output = textured.resize((80, 60), Image.Resampling.BICUBIC)
    r = compare(output, textured)
    assert r["size_mismatch"] is True
    assert r["output_size"] == [80, 60] and r["preview_size"] == [64, 48]
    assert r["resized_for_compare"] == "output 80x60 -> 64x48 (LANCZOS)"
    resized = np.asarray(output.resize((64, 48), Image.Resampling.LANCZOS))
    assert r["ssim"] == ssim(resized, np.asarray(textured))
    assert 0.5 < r["ssim"] < 1.0 and r["psnr"] < math.inf


def test_compare_floor_of_a_compressed_preview(textured):
    """Against its own JPEG the output is only off by the compression, which the floor removes."""
    preview = _jpeg(textured)
    r = compare(textured.convert("RGBA"), preview)  # the preview's own quality, read from its tables
    assert set(r) == KEYS | FLOOR_KEYS
    assert (r["preview_jpeg_quality"], r["preview_jpeg_subsampling"]) == (75, 2)
    assert r["mean_abs"] > 1 and r["ssim"] < 0.99 and r["lpips"] > 0.001
    assert r["floor_ssim"] == pytest.approx(1.0, abs=1e-12) and r["floor_lpips"] == pytest.approx(0.0, abs=1e-6)
    assert r["floor_psnr"] == math.inf and r["floor_max_abs"] == 0 and r["jpeg_excess"] < 0.01
    json.dumps(json_safe(r), allow_nan=False)
    served = reencode_jpeg(textured, 95)  # served at another quality: the floor uses the raw pixels
    r = compare(served, preview, raw=textured)
    assert r["ssim"] < 0.99 and r["floor_max_abs"] == 0


def test_pictures_share_the_comparison(textured):
    changed = np.asarray(textured).copy()
    changed[10:20, 30:40] = 255 - changed[10:20, 30:40]
    record, (heat, smap) = compare_with_pictures(Image.fromarray(changed), textured)
    assert record == compare(Image.fromarray(changed), textured)
    assert heat.size == smap.size == textured.size and heat.mode == smap.mode == "RGB"
    heat, smap = np.asarray(heat), np.asarray(smap)
    black = heat[0, 0]
    assert (heat[10:20, 30:40] != black).any(axis=2).all()
    assert (heat[25:, :] == black).all() and (smap[35:, :] == black).all()
    assert smap[12:18, 32:38].sum(axis=2).min() > smap[35:, :].sum(axis=2).max()

    _, (heat, smap) = compare_with_pictures(textured.resize((32, 24)), textured)  # mismatched sizes are aligned
    assert heat.size == smap.size == (64, 48)
