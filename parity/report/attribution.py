"""What drives the mismatch: each ablation's metric change against its own baseline.

An ablation row changes one knob of a baseline case (tag_ablation names the knob; the baseline
has tag_ablation "baseline"). Both are compared with the same preview, so the difference of
their metrics is that knob's effect on the mismatch. Knobs are ranked by mean |delta LPIPS|
over every preview they were tried on.
"""
from __future__ import annotations

import math
from collections import defaultdict

from ..files import metric_value

GROUP_TAGS = ("tag_run", "tag_step", "tag_prompt_index")


def ablation_name_base(row: dict) -> str:
    """The case name without its "[knob=value]" suffix: the baseline's name when the plan made it."""
    suffix = f"[{row.get('tag_ablation')}={row.get('tag_ablation_value')}]"
    return row["name"][: -len(suffix)] if row["name"].endswith(suffix) else row["name"]


def preview_group(name: str, row: dict) -> tuple:
    """Rows of one preview: the case name up to its last "/" and the run/step/prompt tags."""
    return (name.rpartition("/")[0], *(str(row.get(tag, "")) for tag in GROUP_TAGS))


def ablation_deltas(rows: list[dict]) -> list[dict]:
    """One record per ablation row with a baseline and metrics: delta = ablation - baseline."""
    ok = [r for r in rows if r.get("status") == "ok"]
    baselines = [r for r in ok if r.get("tag_ablation") == "baseline"]
    by_name = {r["name"]: r for r in baselines}
    by_group = defaultdict(list)
    for base in baselines:
        by_group[preview_group(base["name"], base)].append(base)
    out = []
    for row in ok:
        knob = row.get("tag_ablation")
        if not knob or knob == "baseline":
            continue
        name = ablation_name_base(row)
        base = by_name.get(name)
        if base is None and len(by_group[preview_group(name, row)]) == 1:
            base = by_group[preview_group(name, row)][0]
        if base is None:
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
