"""How values read in reports and terminal output: one short, stable spelling everywhere."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .gate import Violation


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
