"""What drives the mismatch: each ablation's metric change against its own baseline.

An ablation row changes one knob of a baseline case: tag_ablation names the knob, tag_ablation_value
its value and tag_ablation_of the baseline case (the plan writes them; a variant of its own sets
``tags: {ablation: knob, ablation_value: ..., ablation_of: <baseline variant>}``). Both are compared
with the same preview, so the difference of their metrics is that knob's effect on the mismatch.
Knobs are ranked by mean |delta LPIPS| over every preview they were tried on.
"""
from __future__ import annotations

import math
from collections import defaultdict

from ..files import metric_value

def ablation_deltas(rows: list[dict]) -> list[dict]:
    """One record per ablation row with a baseline and metrics: delta = ablation - baseline."""
    ok = {r["name"]: r for r in rows if r.get("status") == "ok"}
    out = []
    for row in ok.values():
        knob, base = row.get("tag_ablation"), ok.get(row.get("tag_ablation_of"))
        if not knob or knob == "baseline" or base is None:
            continue
        delta_lpips, delta_ssim = _delta(row, base, "lpips"), _delta(row, base, "ssim")
        if delta_lpips is None and delta_ssim is None:
            continue
        out.append({"name": row["name"], "baseline": base["name"], "knob": knob,
                    "value": str(row.get("tag_ablation_value", "")), "delta_lpips": delta_lpips,
                    "delta_ssim": delta_ssim})
    return out


def _delta(row: dict, base: dict, metric: str) -> float | None:
    a, b = metric_value(row, metric), metric_value(base, metric)
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
        return None
    return a - b


def attribution(deltas: list[dict]) -> list[dict]:
    """Per knob: how much it moves LPIPS and SSIM, ranked by mean |delta LPIPS| (largest first)."""
    by_knob = defaultdict(list)
    for record in deltas:
        by_knob[record["knob"]].append(record)
    table = []
    for knob, records in by_knob.items():
        lpips = [r for r in records if r["delta_lpips"] is not None]
        worst = max(lpips, key=lambda r: abs(r["delta_lpips"]), default=None)
        table.append({
            "knob": knob,
            "n": len(records),
            "mean_abs_delta_lpips": _mean([abs(r["delta_lpips"]) for r in lpips]),
            "mean_delta_lpips": _mean([r["delta_lpips"] for r in lpips]),
            "mean_delta_ssim": _mean([r["delta_ssim"] for r in records if r["delta_ssim"] is not None]),
            "worst_value": worst["value"] if worst else None,
            "worst_delta_lpips": worst["delta_lpips"] if worst else None,
        })
    return sorted(table, key=lambda t: (t["mean_abs_delta_lpips"] is None, -(t["mean_abs_delta_lpips"] or 0),
                                        t["knob"]))


def value_effects(deltas: list[dict], ranking: list[dict]) -> list[dict]:
    """Mean deltas per knob=value, knobs in ranking order: the bars of the attribution chart."""
    groups = defaultdict(list)
    for record in deltas:
        groups[(record["knob"], record["value"])].append(record)
    order = {row["knob"]: i for i, row in enumerate(ranking)}
    out = [{"knob": knob, "value": value,
            "delta_lpips": _mean([r["delta_lpips"] for r in records if r["delta_lpips"] is not None]),
            "delta_ssim": _mean([r["delta_ssim"] for r in records if r["delta_ssim"] is not None])}
           for (knob, value), records in groups.items()]
    return sorted(out, key=lambda e: (order.get(e["knob"], len(order)), e["value"]))


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
