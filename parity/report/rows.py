"""A run folder's results, read strictly: a gate must not pass on rows it could not read.

Reading never writes to the folder (CI artifacts are often read-only); a corrupt line is an
error, except the last line of a killed run.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ParityError
from ..results import ROWS, read_rows, row_files



def load_rows(run_dir: str | Path) -> list[dict]:
    """The newest row of each case, in first-seen order (a rerun replaces an error row)."""
    if not row_files(run_dir):
        raise ParityError(f"no {ROWS}: not a run folder, or no case has finished", source=run_dir)
    latest: dict[str, dict] = {}
    for row in read_rows(run_dir, strict=True):
        if not isinstance(row.get("name"), str) or row.get("status") not in ("ok", "error"):
            raise ParityError(f'a results row needs a name and a status "ok" or "error": {str(row)[:80]}',
                              source=run_dir)
        latest[row["name"]] = row
    if not latest:
        raise ParityError("the results hold no row", source=run_dir)
    return list(latest.values())
