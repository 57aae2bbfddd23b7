"""Thresholds calibrated on a run judged good: the practice of the diffusion CI suites.

Those suites keep, per device, the values a known-good setup produced and fail when a later run
strays beyond them. ``calibrate`` reads a run folder and writes a thresholds file that does the
same: for each serving profile and each (AI Toolkit run, variant) group of cases, every metric's
worst value plus a margin (a fraction of its distance from a perfect score), and the verdicts seen.
A bound is never tighter than k times the noise floor measured for those cases, so the file does
not turn another machine's rounding into a failure.
"""
from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

import yaml

from .errors import ParityError
from .gate import DEFAULT_THRESHOLDS, load_thresholds
from .report.rows import load_rows
from .verdict import NOISE_K, VERDICTS, floor_sources, judge_rows, number

# metric -> (perfect score, the noise column that bounds how tight it may be)
CALIBRATED = {
    "lpips": (0.0, "noise_lpips"), "ssim": (1.0, "noise_ssim"),
    "mean_abs": (0.0, "noise_mean_abs"), "max_abs": (0.0, "noise_max_abs"),
    "floor_lpips": (0.0, "noise_lpips"), "floor_ssim": (1.0, "noise_ssim"),
    "floor_mean_abs": (0.0, "noise_mean_abs"), "floor_max_abs": (0.0, "noise_max_abs"),
    "jpeg_excess": (0.0, "noise_jpeg_excess"), "lora_gap_fraction": (0.0, None),
}
DIGITS = 4


def _bound(values: list[float], noises: list[float], perfect: float, margin: float, k: float) -> float:
    """Worst value plus ``margin`` of its distance from perfect, loosened to k x the worst noise."""
    worst = max(values, key=lambda v: abs(v - perfect))
    slack = max(abs(worst - perfect) * margin, 0.0)
    distance = abs(worst - perfect) + slack
    if noises:
        distance = max(distance, k * max(abs(n - perfect) if perfect else n for n in noises))
    bound = perfect + distance if perfect == 0 else perfect - distance
    step = 10 ** -DIGITS
    return round(math.ceil(bound / step) * step if perfect == 0 else math.floor(bound / step) * step, DIGITS)


def _group_keys(rows: list[dict], margin: float, k: float, sources: dict[str, dict],
                verdicts: dict) -> dict:
    keys: dict = {}
    seen = sorted({verdicts[r["name"]].verdict for r in rows if r["name"] in verdicts}, key=VERDICTS.index)
    if seen:
        keys["verdicts"] = seen
    for metric, (perfect, noise_column) in CALIBRATED.items():
        values = [v for r in rows if (v := number(r.get(metric))) is not None and math.isfinite(v)]
        if not values:
            continue
        noises = [v for r in rows if noise_column and r["name"] in sources
                  and (v := number(sources[r["name"]].get(noise_column))) is not None and math.isfinite(v)]
        side = "min" if perfect == 1.0 else "max"
        keys[f"{metric}_{side}"] = _bound(values, noises, perfect, margin, k)
    return keys


def calibrate(run_dir: str | Path, margin: float = 0.1) -> str:
    """The thresholds file (YAML text) calibrated on ``run_dir``."""
    if margin < 0 or math.isnan(margin):
        raise ParityError(f"margin must be 0 or more, not {margin!r}")
    rows = [r for r in load_rows(run_dir) if r.get("status") == "ok" and number(r.get("lpips")) is not None]
    if not rows:
        raise ParityError("no case of this run was compared with a preview: nothing to calibrate on",
                          source=run_dir)
    k = NOISE_K
    sources, verdicts = floor_sources(rows), judge_rows(rows)
    shipped = load_thresholds(DEFAULT_THRESHOLDS).defaults
    profiles = {}
    for name in sorted({r.get("tag_profile") for r in rows if r.get("tag_profile")}):
        profiles[name] = _group_keys([r for r in rows if r.get("tag_profile") == name], margin, k, sources, verdicts)
    cases = {}
    groups = sorted({(r["tag_run"], r["tag_variant"]) for r in rows if r.get("tag_run") and r.get("tag_variant")})
    for run, variant in groups:
        members = [r for r in rows if r.get("tag_run") == run and r.get("tag_variant") == variant]
        cases[f"{run}/*/{variant}"] = _group_keys(members, margin, k, sources, verdicts)
    hardware = sorted({r.get("hw_cpu") or "unknown" for r in rows})
    header = [
        f"# Calibrated by `parity calibrate` on {Path(run_dir).resolve()} ({len(rows)} compared cases),",
        f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, margin {margin:g}, hardware: {'; '.join(hardware)}.",
        "# Each bound: the worst value seen plus the margin times its distance from a perfect score, never",
        f"# tighter than {k:g}x the noise floor of those cases; verdicts: those seen. More specific levels win.",
        "# Only gated cases are judged: gate a profile's cases with `gated: true` in the case file.",
    ]
    data = {"defaults": {key: shipped[key] for key in ("verdicts", "lora_gap_fraction_max", "size_mismatch_max")
                         if key in shipped},
            "profiles": profiles, "cases": cases}
    return "\n".join(header) + "\n" + yaml.safe_dump(data, sort_keys=False, width=120)
