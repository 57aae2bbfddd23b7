"""The one-screen plain-text summary printed after a run and by `parity report`."""
from __future__ import annotations

from pathlib import Path

from ..files import metric_value
from ..format import fmt, violation_table
from .data import ReportData

MAX_VIOLATIONS = 5
MAX_NOTES = 2
TOP_KNOBS = 3


def render(data: ReportData, html: Path) -> str:
    gate = data.gate
    lines = [f"kontext-parity · {data.run_dir}",
             f"cases: {len(data.rows)} ({len(data.ok_rows)} ok, {len(data.error_rows)} error); "
             f"{len(data.compared_rows)} compared with a preview",
             f"{gate.headline()} (thresholds: {gate.source})"]
    ungated = gate.verdict_counts(gated_only=False)
    if any(ungated.values()):
        lines.append("verdicts, all compared cases: " + ", ".join(f"{n} {v}" for v, n in ungated.items()))
    if data.missing:
        lines.append(f"  {len(data.missing)} gated case(s) have no result row (incomplete run): "
                     + ", ".join(data.missing[:3]) + (" ..." if len(data.missing) > 3 else ""))
    floors, seconds = data.noise_cost
    if floors:
        total = sum(metric_value(r, "time_total_s") or 0.0 for r in data.ok_rows)
        lines.append(f"noise floor: {floors} floor(s) measured in {seconds:.1f} s "
                     f"({100 * seconds / total if total else 0:.0f}% of the generation time)")
    for _, text, n in data.hardware:
        lines.append(f"hardware: {text}" + (f" ({n} cases)" if len(data.hardware) > 1 else ""))
    if gate.violations:
        lines += ["  " + line for line in violation_table(gate.violations, MAX_VIOLATIONS).splitlines()]
    lines += [f"  note: {note}" for note in gate.notes[:MAX_NOTES]]
    for metric, label in (("ssim", "SSIM "), ("lpips", "LPIPS")):
        stat = data.stat(metric)
        if stat:
            lines.append(f"{label} ({data.stat_scope} cases) mean {fmt(stat['mean'])}  worst {fmt(stat['worst'])}"
                         f" ({stat['worst_case']})")
    if data.attribution:
        lines.append("what drives the mismatch (mean |Δ LPIPS| vs baseline):")
        lines += [f"  {i}. {a['knob']:<24} {fmt(a['mean_abs_delta_lpips'])}"
                  f"  (n={a['n']})" for i, a in enumerate(data.attribution[:TOP_KNOBS], 1)]
    lines.append(f"report: {html}  (also summary.md, junit.xml)")
    return "\n".join(lines)
