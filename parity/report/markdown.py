"""summary.md: the gate result, counts, worst cases and attribution for CI logs and pull requests.

Every cell is user text as far as Markdown is concerned (prompts, case names, paths, error
messages): HTML characters become entities, and every character that Markdown or GitHub gives a
meaning inside a table cell (emphasis, code, links, images, cell breaks, strikethrough, autolinks,
@mentions, #references)
is backslash-escaped, so a prompt can neither inject HTML nor restyle, link or ping anything in a
rendered PR comment. Line breaks are folded to spaces.
"""
from __future__ import annotations

import re

from ..files import metric_value
from ..format import fmt
from .data import ReportData

WORST = 10
HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
MARKDOWN = re.compile(r"([\\`*_{}\[\]()#|~@:])")


def cell(value) -> str:
    if isinstance(value, (int, float)):  # numbers as numbers: nothing in them is Markdown
        return fmt(value)
    text = " ".join(fmt(value).split())
    text = "".join(HTML.get(ch, ch) for ch in text)
    return MARKDOWN.sub(r"\\\1", text)


def _table(header: tuple, rows: list[tuple]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows] + [""]


def render(data: ReportData, html_name: str) -> str:
    gate = data.gate
    lines = [f"# kontext-parity: {cell(data.run_dir.resolve().name)}", "",
             f"**{gate.headline()}** (thresholds: {cell(gate.source)})", ""]
    counts = gate.verdict_counts()
    everything = gate.verdict_counts(gated_only=False)
    lines += _table(("verdicts", *counts), [("gated cases", *counts.values()), ("all compared cases", *everything.values())])
    lines += [f"Hardware: {cell(text)}" + (f" ({n} cases)" if len(data.hardware) > 1 else "") for _, text, n in data.hardware]
    lines += [""] if data.hardware else []
    if data.assumptions:
        lines += ["Assumed values (the system's documents are silent; see each profile's notes):", ""]
        lines += [f"- {cell(profile)}: {cell(', '.join(items))}" for profile, items in data.assumptions] + [""]
    if data.missing:
        lines += [f"**{len(data.missing)} gated case(s) have no result row** (the run is incomplete): "
                  + cell(", ".join(data.missing[:10])), ""]
    stats = {m: data.stat(m) for m in ("ssim", "lpips")}
    lines += [f"SSIM and LPIPS over {data.stat_scope} compared cases.", ""]
    lines += _table(("cases", "ok", "errors", "compared", "mean SSIM", "worst SSIM", "mean LPIPS", "worst LPIPS"),
                    [(len(data.rows), len(data.ok_rows), len(data.error_rows), len(data.compared_rows),
                      *[(stats[m] or {}).get(k) for m in ("ssim", "lpips") for k in ("mean", "worst")])])
    if gate.violations:
        lines += ["## Gate violations", ""]
        lines += _table(("case", "metric", "value", "threshold"),
                        [(v.case, v.metric, v.value, f"{v.threshold} ({v.rule})") for v in gate.violations])
    lines += [f"## Worst cases by LPIPS (top {WORST})", ""]
    worst = data.worst_by_lpips(WORST)
    if worst:
        verdicts = gate.by_name()
        lines += _table(("case", "profile", "gate", "verdict", "LPIPS", "SSIM", "PSNR", "floor LPIPS", "LoRA gap"),
                        [(r["name"], r.get("tag_profile"), verdicts[r["name"]].status,
                          verdicts[r["name"]].verdict.verdict if verdicts[r["name"]].verdict else None,
                          *[metric_value(r, m) for m in ("lpips", "ssim", "psnr", "floor_lpips", "lora_gap_fraction")])
                         for r in worst])
    else:
        lines += ["No case was compared with a preview.", ""]
    lines += ["## What drives the mismatch", ""]
    if data.attribution:
        lines += _table(("rank", "knob", "n", "mean \\|Δ LPIPS\\|", "mean Δ LPIPS", "mean Δ SSIM", "worst value"),
                        [(i, a["knob"], a["n"], a["mean_abs_delta_lpips"], a["mean_delta_lpips"], a["mean_delta_ssim"],
                          a["worst_value"]) for i, a in enumerate(data.attribution, 1)])
    else:
        lines += ["No ablation compared with a preview.", ""]
    if data.error_rows:
        lines += ["## Errors", ""]
        lines += _table(("case", "error"), [(r["name"], r.get("error")) for r in data.error_rows])
    lines += [f"Full report: `{html_name}` in the run folder.", ""]
    return "\n".join(lines)
