"""Verdicts: exact / noise / mismatch from the gap and the noise floor, floors borrowed, the LoRA yardstick,
and the JPEG excess that tells rounding from a real difference behind a quality-75 preview."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from parity.metrics.jpeg import jpeg_luma, read_jpeg_luma
from parity.verdict import NOISE_K, judge, judge_rows, lora_gap_fraction


def png_row(name="a", mean=0.4, peak=4, floor=(0.4, 4), **extra):
    row = {"name": name, "status": "ok", "gated": True, "preview_file": f"/p/{name}.png", "ssim": 0.999,
           "lpips": 0.001, "mean_abs": mean, "max_abs": peak}
    if floor:
        row.update(noise_mean_abs=floor[0], noise_max_abs=floor[1], noise_from=name, noise_group="g")
    return {**row, **extra}


def jpeg_row(name="j", excess=0.1, floor=0.1, floor_max=3.0, **extra):
    row = {"name": name, "status": "ok", "gated": True, "preview_file": f"/p/{name}.jpg", "ssim": 0.7,
           "lpips": 0.03, "mean_abs": 14.0, "max_abs": 120, "floor_ssim": 0.99, "floor_mean_abs": 2.4,
           "floor_max_abs": floor_max, "jpeg_excess": excess, "preview_jpeg_quality": 75}
    if floor is not None:
        row.update(noise_mean_abs=2.4, noise_max_abs=30, noise_jpeg_excess=floor, noise_from=name, noise_group="g")
    return {**row, **extra}


def test_identical_pixels_are_exact_whatever_the_floor():
    assert judge(png_row(mean=0.0, peak=0)).verdict == "exact"
    assert judge(png_row(mean=0.0, peak=0, floor=None)).verdict == "exact"
    assert judge(jpeg_row(excess=0.003, floor_max=0)).verdict == "exact"  # same JPEG pixels


@pytest.mark.parametrize("mean, peak, expected", [
    (0.4, 4, "noise"), (0.85, 9, "noise"),  # within 2x (0.4, 4) plus one rounding step
    (0.86, 4, "mismatch"), (0.4, 10, "mismatch"), (5.6, 70, "mismatch"),
])
def test_png_gap_against_k_times_the_floor(mean, peak, expected):
    verdict = judge(png_row(mean=mean, peak=peak))
    assert verdict.verdict == expected, verdict.reason
    assert ("mean abs" in verdict.reason) and ("noise floor" in verdict.reason)


@pytest.mark.parametrize("excess, expected", [(0.1, "noise"), (0.22, "noise"), (0.23, "mismatch"), (1.2, "mismatch")])
def test_jpeg_gap_is_the_excess_not_the_decoded_pixels(excess, expected):
    """A JPEG preview's decoded-pixel gap (floor_mean_abs 2.4) is the same for noise and fp8; the excess is not."""
    assert judge(jpeg_row(excess=excess, floor=0.1)).verdict == expected


def test_without_any_floor_only_rounding_passes():
    assert judge(png_row(mean=0.04, peak=1, floor=None)).verdict == "noise"
    verdict = judge(png_row(mean=0.4, peak=4, floor=None))
    assert verdict.verdict == "mismatch" and "no noise floor measured" in verdict.reason


def test_ungated_rows_borrow_the_floor_of_their_group_then_of_their_preview():
    gated = png_row("p/aitk", floor=(0.4, 4), noise_group="128x128")
    same_group = png_row("p/ablation[x]", mean=0.6, peak=5, floor=None, gated=False, noise_group="128x128")
    same_preview = png_row("p/ablation[y]", mean=0.6, peak=5, floor=None, gated=False, noise_group="other",
                           preview_file=gated["preview_file"])
    alone = png_row("q/ablation", mean=0.6, peak=5, floor=None, gated=False, noise_group="none",
                    preview_file="/p/q.png")
    verdicts = judge_rows([gated, same_group, same_preview, alone])
    assert verdicts["p/ablation[x]"].verdict == "noise" and verdicts["p/ablation[x]"].floor_from == "p/aitk"
    assert verdicts["p/ablation[y]"].verdict == "noise" and "(from p/aitk)" in verdicts["p/ablation[y]"].reason
    assert verdicts["q/ablation"].verdict == "mismatch"


def test_k_comes_from_the_caller():
    row = png_row(mean=1.0, peak=8)
    assert judge(row, NOISE_K).verdict == "mismatch"
    assert judge(row, 3.0).verdict == "noise"


def test_lora_gap_fraction_uses_one_measure_per_preview_kind():
    assert lora_gap_fraction(png_row(mean=2.0, lora_effect_mean_abs=20.0)) == pytest.approx(0.1)
    assert lora_gap_fraction(jpeg_row(excess=0.5, lora_effect_luma_rms=25.0)) == pytest.approx(0.02)
    assert lora_gap_fraction(png_row()) is None  # no twin, no yardstick


def _textured(seed: int, size=(64, 48)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3)
    return ((base + rng.integers(0, 90, size=(size[1], size[0], 3))) % 256).astype(np.uint8)


def _jpeg(rgb: np.ndarray, quality=75) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def test_jpeg_excess_is_zero_for_the_original_and_grows_with_a_real_change():
    original = _textured(0)
    luma = read_jpeg_luma(_jpeg(original))
    assert luma.excess(original) < 0.01
    noisy = np.clip(original.astype(int) + np.random.default_rng(1).integers(-1, 2, original.shape), 0, 255)
    brighter = np.clip(original.astype(int) + 6, 0, 255)
    assert luma.excess(noisy.astype(np.uint8)) < 0.2 < luma.excess(brighter.astype(np.uint8))


def test_jpeg_luma_reads_a_file_and_bytes_alike(tmp_path):
    original = _textured(2)
    path = tmp_path / "p.jpg"
    path.write_bytes(_jpeg(original, quality=90))
    from_file, from_bytes = read_jpeg_luma(Image.open(path)), read_jpeg_luma(path.read_bytes())
    assert np.array_equal(from_file.indices, from_bytes.indices)
    assert from_file.steps[0, 0] < 8  # quality 90's table, read from the file
    assert read_jpeg_luma(Image.fromarray(original)) is None  # not a JPEG


def test_libjpeg_luma_matches_pil_grayscale_conversion():
    rgb = _textured(3)
    assert np.abs(jpeg_luma(rgb) - np.asarray(Image.fromarray(rgb).convert("L"), dtype=float)).max() <= 1
