"""The gate: metric bounds chosen per case, and the verdict CI fails on.

A thresholds file (YAML) has three levels; the more specific wins key by key:
  defaults:  {floor_lpips_max: 0.05, ...}         every gated case
  profiles:  {<tag_profile>: {...}}                the cases of one serving profile
  cases:     {<case name or glob>: {...}}          globs in file order, then the exact name
Keys are <metric>_min / <metric>_max for every metric of a results row (METRICS) and
latency_max_s, which bounds time_total_s. A null removes a bound set at a less specific level.
In globs only * and ? are special: case names are full of brackets (``base[guidance=2.5]``).

Only rows with gated true are judged; a row that did not run (status error) fails whether gated
or not, because the run is incomplete. Rows without a preview have no metrics, so only latency
can gate them; a NaN metric fails.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ParityError, did_you_mean
from .yamlfile import read_yaml_mapping

DEFAULT_THRESHOLDS = Path(__file__).resolve().parent / "thresholds" / "default.yaml"
METRICS = ("ssim", "lpips", "psnr", "mean_abs", "max_abs", "size_mismatch",
           "floor_ssim", "floor_lpips", "floor_psnr", "floor_mean_abs", "floor_max_abs")
BOUNDS = {f"{metric}_{side}": (metric, side) for metric in METRICS for side in ("min", "max")}
BOUNDS["latency_max_s"] = ("time_total_s", "max")
LEVELS = ("defaults", "profiles", "cases")


def metric_value(row: dict, column: str) -> float | None:
    """A row's metric as a float: None when absent, NaN when unreadable ("inf"/"nan" strings are JSON's)."""
    value = row.get(column)
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _glob(pattern: str) -> re.Pattern:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.S)


@dataclass(frozen=True)
class Thresholds:
    defaults: dict
    profiles: dict
    cases: dict
    source: str

    def for_row(self, row: dict) -> dict[str, float]:
        """The bounds of one case: defaults <- its profile <- matching globs <- its exact name."""
        merged = {**self.defaults, **self.profiles.get(row.get("tag_profile"), {})}
        name = row["name"]
        for pattern, bounds in self.cases.items():
            if pattern != name and _glob(pattern).fullmatch(name):
                merged.update(bounds)
        merged.update(self.cases.get(name, {}))
        return {key: limit for key, limit in merged.items() if limit is not None}


def load_thresholds(path: str | Path | None = None) -> Thresholds:
    """Read and validate a thresholds file (the shipped defaults when path is None)."""
    path = Path(path) if path else DEFAULT_THRESHOLDS
    data = read_yaml_mapping(path, what="thresholds file", allowed=LEVELS)
    try:
        return Thresholds(defaults=_bounds(data.get("defaults"), "defaults"),
                          profiles=_named(data.get("profiles"), "profiles"),
                          cases=_named(data.get("cases"), "cases"), source=str(path))
    except ParityError as err:
        raise ParityError(err.problem, source=path) from None


def _named(block, where: str) -> dict[str, dict]:
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise ParityError(f"{where}: must map names to bounds")
    return {str(name): _bounds(bounds, f"{where}.{name}") for name, bounds in block.items()}


def _bounds(block, where: str) -> dict:
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise ParityError(f"{where}: must map bounds such as lpips_max to numbers")
    for key, limit in block.items():
        if key not in BOUNDS:
            raise ParityError(f'{where}: unknown bound "{key}"{did_you_mean(key, BOUNDS)}; bounds are '
                              f"<metric>_min / <metric>_max for {', '.join(METRICS)}, and latency_max_s")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or math.isnan(limit)):
            raise ParityError(f"{where}: {key} must be a number or null, not {limit!r}")
    return dict(block)


@dataclass(frozen=True)
class Violation:
    case: str
    metric: str
    value: float | str
    threshold: str
    rule: str

    def message(self) -> str:
        return f"{self.metric} = {fmt(self.value)}, threshold {self.threshold} ({self.rule})"


@dataclass
class Verdict:
    row: dict
    status: str  # pass | fail | error | ungated
    violations: list[Violation] = field(default_factory=list)


@dataclass
class GateResult:
    verdicts: list[Verdict]
    source: str
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not any(v.status in ("fail", "error") for v in self.verdicts)

    @property
    def violations(self) -> list[Violation]:
        return [violation for verdict in self.verdicts for violation in verdict.violations]

    def count(self, status: str) -> int:
        return sum(v.status == status for v in self.verdicts)

    def headline(self) -> str:
        return (f"gate {'PASS' if self.passed else 'FAIL'}: {self.count('pass')} pass, {self.count('fail')} fail, "
                f"{self.count('error')} error, {self.count('ungated')} not gated")

    def by_name(self) -> dict[str, Verdict]:
        return {v.row["name"]: v for v in self.verdicts}


def check(rows: list[dict], thresholds: Thresholds) -> GateResult:
    verdicts = []
    for row in rows:
        if row.get("status") != "ok":
            error = " ".join(str(row.get("error") or "the case did not run").split())
            verdicts.append(Verdict(row, "error", [Violation(row["name"], "status", f"error: {error}", "ok", "run")]))
        elif row.get("gated") is False:
            verdicts.append(Verdict(row, "ungated"))
        else:
            violations = judge(row, thresholds.for_row(row))
            verdicts.append(Verdict(row, "fail" if violations else "pass", violations))
    return GateResult(verdicts, thresholds.source, _unused(rows, thresholds))


def judge(row: dict, bounds: dict[str, float]) -> list[Violation]:
    """Every bound this row breaks, plus any NaN metric and metrics missing despite a preview."""
    name = row["name"]
    out = [Violation(name, m, math.nan, "a number", "nan") for m in METRICS
           if (v := metric_value(row, m)) is not None and math.isnan(v)]
    if row.get("preview_file") and "ssim" not in row and any(BOUNDS[key][0] in METRICS for key in bounds):
        out.append(Violation(name, "metrics", "missing", "a comparison with the preview", "preview"))
    for key, limit in bounds.items():
        column, side = BOUNDS[key]
        value = metric_value(row, column)
        if value is None or math.isnan(value):
            continue  # absent (no preview, or no floor_* for a PNG preview) or already reported as NaN
        if (value < limit) if side == "min" else (value > limit):
            out.append(Violation(name, column, value, f"{'>=' if side == 'min' else '<='} {limit:g}", key))
    return out


def _unused(rows: list[dict], thresholds: Thresholds) -> list[str]:
    """Profiles and case patterns that match no row: usually a typo that silently gates nothing."""
    profiles = {str(r.get("tag_profile")) for r in rows if r.get("tag_profile")}
    names = [r["name"] for r in rows]
    notes = [f'thresholds profile "{p}" matches no case{did_you_mean(p, profiles)}'
             for p in thresholds.profiles if p not in profiles]
    notes += [f'thresholds case "{c}" matches no case{did_you_mean(c, names)}'
              for c in thresholds.cases if not any(c == n or _glob(c).fullmatch(n) for n in names)]
    return notes


def fmt(value) -> str:
    """Short, stable rendering of a metric value for tables and messages ("—" for none)."""
    if value is None:
        return "—"
    if isinstance(value, (bool, int)):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def violation_table(violations: list[Violation], limit: int | None = None) -> str:
    """Aligned plain-text columns: case, metric, value, threshold."""
    shown = violations if limit is None else violations[:limit]
    table = [("case", "metric", "value", "threshold")]
    table += [(v.case, v.metric, _clip(fmt(v.value), 60), f"{v.threshold} ({v.rule})") for v in shown]
    widths = [max(len(r[i]) for r in table) for i in range(3)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:3], widths)) + "  " + r[3] for r in table]
    if len(shown) < len(violations):
        lines.append(f"... and {len(violations) - len(shown)} more")
    return "\n".join(lines)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
