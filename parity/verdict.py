"""One verdict per compared case: exact, noise or mismatch, with the reason in words.

The gap is the output's distance from its preview, measured where the preview can resolve it:
  - a lossless (PNG) preview: mean and max abs of the output as delivered against it;
  - a JPEG preview: ``jpeg_excess``, how far the pipeline's luma lies outside the intervals the
    preview's quantized DCT coefficients allow (``parity.metrics.jpeg``). 0 for the preview's own
    original; comparing decoded pixels instead would amplify rounding noise ~5x and hide real
    differences (fp8 quantization, a LoRA at 0.95).
Then
  exact     identical pixels (for a JPEG preview: the output compressed like it gives the same file's pixels).
  noise     the gap is within k times the case's noise floor (``parity.noise``: how far numerically
            equivalent reruns move this output on this machine, measured the same way) plus one
            rounding step: for PNG mean abs <= k * floor + 0.05 and max abs <= k * floor + 1; for
            JPEG excess <= k * floor + 0.02. Such a difference is what another GPU or CPU makes of the
            very same setup.
  mismatch  anything larger: a setting differs from what drew the preview.

k = 2 (``NOISE_K``) covers the AMX-BF16 Xeon's redraw of every demo preview with the attention-kernel
estimator, while the knobs of the ablation that change the image stay mismatches (tests/test_verdict.py).

A case without its own floor (ungated cases measure none) borrows one: from a case of the same floor
group, else from the gated case of the same preview. With no floor at all, only rounding is allowed.

The LoRA's own effect is the second yardstick: the step-0 preview against the step-N preview is what
the LoRA does to the image as AI Toolkit drew it, and ``lora_gap_fraction`` is the gap as a fraction
of it, in the same measure (PNG: mean abs; JPEG: excess over the luma RMS of the effect): about 1
for a LoRA that did not load, whatever the absolute numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .files import number

VERDICTS = ("exact", "noise", "mismatch")
NOISE_K = 2.0
ROUNDING_MEAN = 0.05  # mean abs a uint8 rounding flip in a few pixels can add
ROUNDING_MAX = 1.0
ROUNDING_EXCESS = 0.02  # jpeg_excess of a JPEG's own original: 0.003 on the demo (integer colour conversion)
GAP_METRICS = ("ssim", "lpips", "psnr", "mean_abs", "max_abs")
NOISE_COLUMNS = ("noise_mean_abs", "noise_max_abs", "noise_jpeg_excess", "noise_ssim", "noise_lpips")


def gap(row: dict) -> dict[str, float | None]:
    """The compression-matched distance from the preview: floor_* for a JPEG preview, else the plain metrics."""
    prefix = "floor_" if row.get("floor_mean_abs") is not None else ""
    return {metric: number(row.get(prefix + metric)) for metric in GAP_METRICS}


@dataclass(frozen=True)
class CaseVerdict:
    verdict: str  # exact | noise | mismatch
    reason: str
    floor_from: str | None = None  # the case whose rerun measured the floor used


def _floor(row: dict) -> dict[str, float] | None:
    values = {c: number(row.get(c)) for c in NOISE_COLUMNS}
    if values["noise_mean_abs"] is None or values["noise_max_abs"] is None:
        return None
    return values


def judge(row: dict, k: float = NOISE_K, borrowed: dict | None = None) -> CaseVerdict | None:
    """The verdict of one ok row (None when it was not compared with a preview).

    ``borrowed``: a row whose noise floor stands in when ``row`` has none of its own.
    """
    g = gap(row)
    mean, peak = g["mean_abs"], g["max_abs"]
    if mean is None or peak is None:
        return None
    excess = number(row.get("jpeg_excess"))
    if any(v is not None and math.isnan(v) for v in (mean, peak, excess)):
        return CaseVerdict("mismatch", "the comparison gave NaN")
    if peak == 0:
        return CaseVerdict("exact", "identical pixels" + (" after matching the preview's JPEG compression"
                                                          if row.get("floor_mean_abs") is not None else ""))
    source = row if _floor(row) else borrowed if borrowed and _floor(borrowed) else None
    floor = _floor(source) if source else None
    floor_from = (source.get("noise_from") or source.get("name")) if source else None
    borrowed_from = f" (from {floor_from})" if floor_from and floor_from != row.get("name") else ""
    if excess is not None:  # a JPEG preview: judged where it can resolve a difference
        fl = floor["noise_jpeg_excess"] if floor and floor["noise_jpeg_excess"] is not None else 0.0
        bound = k * fl + ROUNDING_EXCESS
        measured = (f"JPEG excess {excess:.3g}; noise floor {fl:.3g}{borrowed_from}" if floor
                    else f"JPEG excess {excess:.3g}; no noise floor measured")
        if excess <= bound:
            return CaseVerdict("noise", f"within {k:g}x the noise floor plus rounding ({measured})", floor_from)
        return CaseVerdict("mismatch", f"JPEG excess {excess:.3g} > {bound:.3g} ({measured})", floor_from)
    fl_mean, fl_max = (floor["noise_mean_abs"], floor["noise_max_abs"]) if floor else (0.0, 0.0)
    mean_bound = k * fl_mean + ROUNDING_MEAN
    max_bound = k * fl_max + ROUNDING_MAX
    measured = (f"mean abs {mean:.3g}, max {peak:.3g}; noise floor mean {fl_mean:.3g}, max {fl_max:.3g}"
                f"{borrowed_from}" if floor else f"mean abs {mean:.3g}, max {peak:.3g}; no noise floor measured")
    if mean <= mean_bound and peak <= max_bound:
        return CaseVerdict("noise", f"within {k:g}x the noise floor plus rounding ({measured})", floor_from)
    over = []
    if mean > mean_bound:
        over.append(f"mean abs {mean:.3g} > {mean_bound:.3g}")
    if peak > max_bound:
        over.append(f"max abs {peak:.3g} > {max_bound:.3g}")
    return CaseVerdict("mismatch", f"{' and '.join(over)} ({measured})", floor_from)


def lora_gap_fraction(row: dict) -> float | None:
    """The redraw's gap as a fraction of the LoRA's effect, in one measure (None without an effect)."""
    if row.get("jpeg_excess") is not None:
        gap_value, effect = number(row.get("jpeg_excess")), number(row.get("lora_effect_luma_rms"))
    else:
        gap_value, effect = number(row.get("mean_abs")), number(row.get("lora_effect_mean_abs"))
    if gap_value is None or effect is None or math.isnan(gap_value):
        return None
    if effect <= 0:
        return 0.0 if gap_value == 0 else math.inf
    return gap_value / effect


def floor_sources(rows: list[dict]) -> dict[str, dict]:
    """name -> the row whose noise floor a row uses: its own, else one of its floor group, else the
    gated row of its preview (ok rows with a floor somewhere only)."""
    by_group: dict[str, dict] = {}
    by_preview: dict[str, dict] = {}
    for row in rows:
        if row.get("status") == "ok" and _floor(row):
            by_group.setdefault(row.get("noise_group"), row)
            if row.get("gated") is not False:
                by_preview.setdefault(row.get("preview_file"), row)
    out = {}
    for row in rows:
        if row.get("status") != "ok":
            continue
        source = row if _floor(row) else by_group.get(row.get("noise_group")) or by_preview.get(row.get("preview_file"))
        if source is not None:
            out[row["name"]] = source
    return out


def judge_rows(rows: list[dict], k_for=lambda row: NOISE_K) -> dict[str, CaseVerdict]:
    """name -> verdict of every compared ok row, floors borrowed as ``floor_sources`` says."""
    sources = floor_sources(rows)
    out = {}
    for row in rows:
        if row.get("status") != "ok":
            continue
        verdict = judge(row, k_for(row), sources.get(row["name"]))
        if verdict is not None:
            out[row["name"]] = verdict
    return out
