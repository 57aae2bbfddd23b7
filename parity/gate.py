"""The gate: each gated case's verdict and bounds, and the exit code CI acts on.

A thresholds file (YAML) has three levels; the more specific wins key by key:
  defaults:  {verdicts: [exact, noise], lora_gap_fraction_max: 0.1, ...}   every gated case
  profiles:  {<tag_profile>: {...}}                the cases of one serving profile
  cases:     {<case name or glob>: {...}}          globs in file order, then the exact name
Keys:
  verdicts        the verdicts a case may have (``parity.verdict``: exact, noise, mismatch)
  noise_k         k of the noise verdict (gap within k x the noise floor; default 2)
  <metric>_min / <metric>_max   for every metric of a results row (METRICS), and latency_max_s,
                  which bounds time_total_s
A null removes a key set at a less specific level. In globs only * and ? are special: case names
are full of brackets (``base[guidance=2.5]``).

Only rows with gated true are judged. The run must be complete: a gated case of the plan with no
row, or with an error row, is an error, and so is a run in which nothing was checked. Exit codes:
0 every gated case passes, 1 a gated case fails its verdict or a bound, 2 errors (a case that did
not run, a missing row, nothing checked, unreadable input).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ParityError, did_you_mean
from .files import metric_value
from .validate import checked, is_number
from .format import fmt
from .verdict import NOISE_K, VERDICTS, CaseVerdict, judge_rows
from .yamlfile import read_yaml_mapping

DEFAULT_THRESHOLDS = Path(__file__).resolve().parent / "thresholds" / "default.yaml"
METRICS = ("ssim", "lpips", "psnr", "mean_abs", "max_abs", "size_mismatch",
           "floor_ssim", "floor_lpips", "floor_psnr", "floor_mean_abs", "floor_max_abs",
           "jpeg_excess", "lora_gap_fraction", "lora_effect_mean_abs", "lora_effect_luma_rms", "lora_effect_lpips",
           "noise_mean_abs", "noise_max_abs", "noise_jpeg_excess", "noise_lpips", "noise_ssim")
BOUNDS = {f"{metric}_{side}": (metric, side) for metric in METRICS for side in ("min", "max")}
BOUNDS["latency_max_s"] = ("time_total_s", "max")
SETTINGS = ("verdicts", "noise_k")
LEVELS = ("defaults", "profiles", "cases")
EXIT_PASS, EXIT_FAIL, EXIT_ERROR = 0, 1, 2



def _glob(pattern: str) -> re.Pattern:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.S)


@dataclass(frozen=True)
class Thresholds:
    defaults: dict
    profiles: dict
    cases: dict
    source: str

    def for_row(self, row: dict) -> dict:
        """The keys of one case: defaults <- its profile <- matching globs <- its exact name."""
        merged = {**self.defaults, **self.profiles.get(row.get("tag_profile"), {})}
        name = row["name"]
        for pattern, bounds in self.cases.items():
            if pattern != name and _glob(pattern).fullmatch(name):
                merged.update(bounds)
        merged.update(self.cases.get(name, {}))
        return {key: limit for key, limit in merged.items() if limit is not None}

    def noise_k(self, row: dict) -> float:
        return float(self.for_row(row).get("noise_k", NOISE_K))


def load_thresholds(path: str | Path | None = None) -> Thresholds:
    """Read and validate a thresholds file (the shipped defaults when path is None)."""
    path = Path(path) if path else DEFAULT_THRESHOLDS
    data = read_yaml_mapping(path, what="thresholds file", allowed=LEVELS)
    try:
        return Thresholds(defaults=_keys(data.get("defaults"), "defaults"),
                          profiles=_named(data.get("profiles"), "profiles"),
                          cases=_named(data.get("cases"), "cases"), source=str(path))
    except ParityError as err:
        raise ParityError(err.problem, source=path) from None


def _named(block, where: str) -> dict[str, dict]:
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise ParityError(f"{where}: must map names to bounds")
    return {str(name): _keys(bounds, f"{where}.{name}") for name, bounds in block.items()}


def _keys(block, where: str) -> dict:
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise ParityError(f"{where}: must map bounds such as lpips_max to numbers")
    for key, limit in block.items():
        if key not in BOUNDS and key not in SETTINGS:
            known = [*BOUNDS, *SETTINGS]
            raise ParityError(f'{where}: unknown bound "{key}"{did_you_mean(key, known)}; keys are verdicts, '
                              f"noise_k, <metric>_min / <metric>_max for {', '.join(METRICS)}, and latency_max_s")
        if limit is None:
            continue  # removes a key set at a less specific level
        if key == "verdicts":
            for verdict in checked(limit, "list", f"{where}: verdicts") or [None]:
                checked(verdict, "string", f"{where}: verdicts", choices=VERDICTS)
        elif not is_number(limit) or math.isnan(limit):
            raise ParityError(f"{where}: {key} must be a number or null, not {limit!r}")
        elif key == "noise_k":
            checked(limit, "number", f"{where}: noise_k", lo=0)
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
class GateCase:
    """One case as the gate saw it: its status, its verdict (when compared) and what it broke."""

    row: dict
    status: str  # pass | fail | error | ungated
    violations: list[Violation] = field(default_factory=list)
    verdict: CaseVerdict | None = None
    checked: bool = False  # a verdict, a bound or a rule applied to it


@dataclass
class GateResult:
    cases: list[GateCase]
    source: str
    notes: list[str] = field(default_factory=list)

    @property
    def judged(self) -> int:
        """Gated cases the gate could check: a verdict, or a bound that applied."""
        return sum(c.status in ("pass", "fail") and c.checked for c in self.cases)

    @property
    def exit_code(self) -> int:
        if self.count("error") or not self.judged:
            return EXIT_ERROR
        return EXIT_FAIL if self.count("fail") else EXIT_PASS

    @property
    def passed(self) -> bool:
        return self.exit_code == EXIT_PASS

    @property
    def violations(self) -> list[Violation]:
        return [violation for case in self.cases for violation in case.violations]

    def count(self, status: str) -> int:
        return sum(c.status == status for c in self.cases)

    def verdict_counts(self, gated_only: bool = True) -> dict[str, int]:
        counts = dict.fromkeys(VERDICTS, 0)
        for case in self.cases:
            if case.verdict and (case.status != "ungated" or not gated_only):
                counts[case.verdict.verdict] += 1
        return counts

    def headline(self) -> str:
        word = {EXIT_PASS: "PASS", EXIT_FAIL: "FAIL", EXIT_ERROR: "ERROR"}[self.exit_code]
        counts = self.verdict_counts()
        verdicts = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
        text = (f"gate {word}: {self.count('pass')} pass, {self.count('fail')} fail, {self.count('error')} error, "
                f"{self.count('ungated')} not gated")
        if verdicts:
            text += f" (gated verdicts: {verdicts})"
        if not self.judged and not self.count("error"):
            text += "; nothing was checked"
        return text

    def by_name(self) -> dict[str, GateCase]:
        return {c.row["name"]: c for c in self.cases}


def check(rows: list[dict], thresholds: Thresholds, planned: list[dict] | None = None) -> GateResult:
    """Judge ``rows``; ``planned`` (the run's plan: names and gated flags) makes a missing row an error."""
    verdicts = judge_rows(rows, thresholds.noise_k)
    cases = []
    for row in rows:
        if row.get("status") != "ok":
            error = " ".join(str(row.get("error") or "the case did not run").split())
            kind = f"{row['error_type']}: " if row.get("error_type") else ""
            cases.append(GateCase(row, "error", [Violation(row["name"], "status", f"error: {kind}{error}", "ok",
                                                           "run")]))
        elif row.get("gated") is False:
            cases.append(GateCase(row, "ungated", verdict=verdicts.get(row["name"])))
        else:
            keys = thresholds.for_row(row)
            verdict = verdicts.get(row["name"])
            violations = judge(row, keys, verdict)
            checked = verdict is not None or bool(violations) or _bounded(row, keys)
            cases.append(GateCase(row, "fail" if violations else "pass", violations, verdict, checked))
    notes = _unused(rows, thresholds)
    if planned is not None:
        seen = {row["name"] for row in rows}
        for spec in planned:
            if spec["name"] in seen:
                continue
            if spec.get("gated", True):
                missing = {"name": spec["name"], "status": "missing", "gated": True,
                           "error": "no result row: the case never finished (the run is incomplete)"}
                cases.append(GateCase(missing, "error", [Violation(spec["name"], "status", "missing", "a result row",
                                                                   "complete")]))
        ungated_missing = sum(1 for s in planned if s["name"] not in seen and not s.get("gated", True))
        if ungated_missing:
            notes.append(f"{ungated_missing} ungated case(s) of the plan have no result row")
    else:
        notes.append("the run folder has no plan.json: whether every planned case ran was not checked")
    return GateResult(cases, thresholds.source, notes)


def _bounded(row: dict, keys: dict) -> bool:
    """Whether some bound of ``keys`` had a value to check in ``row``."""
    return any(metric_value(row, BOUNDS[k][0]) is not None for k in keys if k in BOUNDS)


def judge(row: dict, keys: dict, verdict: CaseVerdict | None = None) -> list[Violation]:
    """Every rule this row breaks: its verdict not allowed, a bound, a NaN metric, metrics missing
    despite a preview."""
    name = row["name"]
    out = [Violation(name, m, math.nan, "a number", "nan") for m in METRICS
           if (v := metric_value(row, m)) is not None and math.isnan(v)]
    compares = any(BOUNDS[key][0] in METRICS for key in keys if key in BOUNDS) or "verdicts" in keys
    if row.get("preview_file") and "ssim" not in row and compares:
        out.append(Violation(name, "metrics", "missing", "a comparison with the preview", "preview"))
    allowed = keys.get("verdicts")
    if verdict is not None and allowed and verdict.verdict not in allowed:
        out.append(Violation(name, "verdict", f"{verdict.verdict}: {verdict.reason}", " | ".join(allowed),
                             "verdicts"))
    for key, limit in keys.items():
        if key not in BOUNDS:
            continue
        column, side = BOUNDS[key]
        value = metric_value(row, column)
        if value is None or math.isnan(value):
            continue  # absent (no preview, no floor_* for a PNG preview, no LoRA twin) or reported as NaN
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
