"""Reports of a run folder, regenerated from its results alone (results.jsonl and the image files).

``write_reports`` writes report.html, summary.md and junit.xml at the top of the run folder and
charts under report_assets/, and returns their paths with a one-screen text summary.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ParityError
from ..gate import load_thresholds
from ..files import write_atomic
from ..results import planned_cases, selected
from . import charts, html, junit, markdown, text
from .data import build
from .rows import load_rows

FILES = {"html": "report.html", "markdown": "summary.md", "junit": "junit.xml"}


def write_reports(run_dir: str | Path, thresholds: str | Path | None = None, *, select: str | None = None) -> dict:
    """Gate with ``thresholds`` (the shipped defaults when None) and write every report; ``select``: only
    the cases a -k expression matches."""
    run_dir = Path(run_dir)
    rows, planned = selected(load_rows(run_dir), planned_cases(run_dir), select)
    data = build(run_dir, rows, load_thresholds(thresholds), planned)
    paths = {key: run_dir / name for key, name in FILES.items()}
    try:
        chart_files = {"attribution": charts.attribution_chart(run_dir, data.effects),
                       "latency": charts.latency_chart(run_dir, data.rows)}
        write_atomic(paths["html"], html.render(data, chart_files))
        write_atomic(paths["markdown"], markdown.render(data, FILES["html"]))
        write_atomic(paths["junit"], junit.render(data))
    except OSError as err:
        raise ParityError(f"cannot write the reports: {err.strerror or err}", source=run_dir) from None
    return {**paths, "charts": {k: run_dir / v for k, v in chart_files.items() if v},
            "passed": data.gate.passed, "exit_code": data.gate.exit_code, "gate": data.gate,
            "summary_text": text.render(data, paths["html"])}
