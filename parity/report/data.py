"""Everything the reports show, computed once from the results rows and the gate."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..files import metric_value
from ..gate import GateResult, Thresholds, check
from .attribution import ablation_deltas, attribution, value_effects

HIGHER_IS_BETTER = {"ssim": True, "lpips": False, "psnr": True}


@dataclass
class ReportData:
    run_dir: Path
    rows: list[dict]
    gate: GateResult
    deltas: list[dict]
    attribution: list[dict]
    effects: list[dict]
    generated: datetime = field(default_factory=lambda: datetime.now(timezone.utc).replace(microsecond=0))

    @property
    def ok_rows(self) -> list[dict]:
        return [r for r in self.rows if r.get("status") == "ok"]

    @property
    def compared_rows(self) -> list[dict]:
        """Rows with a metric comparison (a preview and metrics)."""
        return [r for r in self.ok_rows if metric_value(r, "lpips") is not None]

    @property
    def stat_scope(self) -> str:
        """Summary statistics describe the gated cases (the reproduction) when any was compared,
        since ungated serving setups are expected to differ; otherwise every compared case."""
        return "gated" if any(r.get("gated") is not False for r in self.compared_rows) else "all"

    @property
    def error_rows(self) -> list[dict]:
        return [r for r in self.rows if r.get("status") != "ok"]

    def stat(self, metric: str) -> dict | None:
        """Mean and worst value of a metric over the stat_scope rows, with the worst case's name."""
        rows = [r for r in self.compared_rows if self.stat_scope == "all" or r.get("gated") is not False]
        values = [(v, r["name"]) for r in rows if (v := metric_value(r, metric)) is not None and not math.isnan(v)]
        if not values:
            return None
        finite = [v for v, _ in values if math.isfinite(v)]
        worst = (min if HIGHER_IS_BETTER[metric] else max)(values, key=lambda pair: pair[0])
        return {"mean": sum(finite) / len(finite) if finite else math.inf, "worst": worst[0], "worst_case": worst[1]}

    def worst_by_lpips(self, n: int) -> list[dict]:
        return sorted(self.compared_rows, key=lambda r: -_sortable(metric_value(r, "lpips")))[:n]

    @property
    def hardware(self) -> list[tuple[str, str, int]]:
        """(hardware_id, description, rows) of each machine the rows were computed on."""
        from ..hardware import describe_row

        seen: dict[str, list] = {}
        for row in self.ok_rows:
            if row.get("hardware_id"):
                entry = seen.setdefault(row["hardware_id"], [describe_row(row), 0])
                entry[1] += 1
        return [(key, text, n) for key, (text, n) in seen.items()]

    @property
    def noise_cost(self) -> tuple[int, float]:
        """(floors measured, seconds their reruns took) over the rows: what the noise floor cost."""
        measured = [r for r in self.ok_rows if r.get("noise_from") and r.get("noise_from") == r["name"]]
        return len(measured), sum(metric_value(r, "noise_time_s") or 0.0 for r in measured)

    @property
    def missing(self) -> list[str]:
        """Gated cases of the plan that have no row."""
        return [c.row["name"] for c in self.gate.cases if c.row.get("status") == "missing"]

    @property
    def assumptions(self) -> list[tuple[str, list[str]]]:
        """(profile, ["field=value", ...]) of every profile whose values the rows carry as assumed (the
        system's documents are silent there; the profile's `assumed:` list, tag `assumed`)."""
        seen: dict[str, list[str]] = {}
        for row in self.rows:
            if row.get("tag_profile") and row.get("tag_assumed"):
                kept = seen.setdefault(row["tag_profile"], [])
                kept += [item for item in str(row["tag_assumed"]).split() if item not in kept]
        return list(seen.items())

    def delta_of(self, name: str) -> dict | None:
        return next((d for d in self.deltas if d["name"] == name), None)


def _sortable(value: float | None) -> float:
    return math.inf if value is None or math.isnan(value) else value


def build(run_dir: Path, rows: list[dict], thresholds: Thresholds, planned: list[dict] | None) -> ReportData:
    """``planned``: the run's plan (``results.planned_cases``), so a missing row is an error."""
    deltas = ablation_deltas(rows)
    ranking = attribution(deltas)
    gate = check(rows, thresholds, planned)
    return ReportData(run_dir=Path(run_dir), rows=rows, gate=gate, deltas=deltas,
                      attribution=ranking, effects=value_effects(deltas, ranking))
