"""A run folder's results, read strictly: a gate must not pass on rows it could not read.

Reading never writes to the folder (CI artifacts are often read-only); a corrupt line is an
error, except the last line of a killed run.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ParityError
from ..results import ROWS, latest_rows, row_files


def load_rows(run_dir: str | Path) -> list[dict]:
    """The newest row of each case of the run's plan, in first-seen order (see results.latest_rows)."""
    if not row_files(run_dir):
        raise ParityError(f"no {ROWS}: not a run folder, or no case has finished", source=run_dir)
    rows = latest_rows(run_dir, strict=True)
    if not rows:
        raise ParityError("the results hold no row", source=run_dir)
    return rows
