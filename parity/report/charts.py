"""Report charts as PNGs under report_assets/, drawn with matplotlib's Agg canvas.

Figures are built with the object API on an explicit Agg canvas, so no global backend is
switched and no display is needed.
"""
from __future__ import annotations

import io
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..files import metric_value, write_atomic
from .assets import ASSETS

STAGES = (("time_text_encode_s", "text encode"), ("time_control_encode_s", "control encode"),
          ("time_denoise_s", "denoise"), ("time_decode_s", "decode"), ("time_output_encode_s", "output encode"))
ROW_INCHES = 0.26
MAX_BARS = 40  # rows per chart: more would be unreadable, and beyond ~2,500 over matplotlib's 2^16 px limit


def _label(text: str, width: int = 64) -> str:
    """Long names keep their informative tail; "$" would start matplotlib mathtext."""
    text = text if len(text) <= width else "…" + text[-(width - 1):]
    return text.replace("$", r"\$")


def _save(fig: Figure, run_dir: Path, name: str) -> str:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    relative = f"{ASSETS}/{name}"
    write_atomic(run_dir / relative, buffer.getvalue())
    return relative


def attribution_chart(run_dir: Path, effects: list[dict]) -> str | None:
    """Mean delta LPIPS and delta SSIM vs the baseline per knob=value (right of 0 in LPIPS = worse)."""
    if not effects:
        return None
    total, effects = len(effects), effects[:MAX_BARS]  # ordered by knob ranking: the most influential first
    labels = [_label(f"{e['knob']}={e['value']}", 48) for e in effects][::-1]
    fig = Figure(figsize=(11, 1.4 + ROW_INCHES * len(effects)), layout="constrained")
    if total > len(effects):
        fig.suptitle(f"the {len(effects)} knob=value effects of the most influential knobs (of {total})",
                     fontsize=10)
    panels = fig.subplots(1, 2, sharey=True)
    for ax, metric, title, color in ((panels[0], "delta_lpips", "Δ LPIPS vs baseline (higher = worse)", "#c0392b"),
                                     (panels[1], "delta_ssim", "Δ SSIM vs baseline (lower = worse)", "#2c7fb8")):
        values = [e[metric] if e[metric] is not None else 0.0 for e in effects][::-1]
        ax.barh(range(len(values)), values, color=color)
        ax.axvline(0, color="#333", linewidth=0.8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    panels[0].set_yticks(range(len(labels)), labels, fontsize=8)
    return _save(fig, run_dir, "attribution.png")


def latency_chart(run_dir: Path, rows: list[dict]) -> str | None:
    """Seconds per stage per case, stacked; "other" is the rest of time_total_s. At most the
    MAX_BARS slowest cases, in table order."""
    rows = [r for r in rows if metric_value(r, "time_total_s") is not None]
    if not rows:
        return None
    total = len(rows)
    slowest = {id(r) for r in sorted(rows, key=lambda r: metric_value(r, "time_total_s"), reverse=True)[:MAX_BARS]}
    rows = [r for r in rows if id(r) in slowest][::-1]
    fig = Figure(figsize=(11, 1.4 + ROW_INCHES * len(rows)), layout="constrained")
    ax = fig.subplots()
    if total > len(rows):
        ax.set_title(f"the {len(rows)} slowest of {total} cases", fontsize=10)
    left = [0.0] * len(rows)
    colors = ("#8da0cb", "#66c2a5", "#fc8d62", "#e78ac3", "#a6d854", "#bbbbbb")
    for (column, label), color in zip((*STAGES, ("", "other")), colors):
        if column:
            widths = [metric_value(r, column) or 0.0 for r in rows]
        else:
            widths = [max(0.0, metric_value(r, "time_total_s") - done) for r, done in zip(rows, left)]
        ax.barh(range(len(rows)), widths, left=left, color=color, label=label)
        left = [a + b for a, b in zip(left, widths)]
    ax.set_yticks(range(len(rows)), [_label(r["name"]) for r in rows], fontsize=8)
    ax.set_xlabel("seconds")
    fig.legend(loc="outside upper center", ncols=len(colors), fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, run_dir, "latency.png")
