"""Images of the report, all inside the run folder so it can be moved or uploaded as one artifact.

Outputs, controls and diff maps are already there. Previews live in the AI Toolkit run folder,
so a copy goes to report_assets/previews/, named after the preview's path: a later
`parity report` on another machine, where that path is gone, still finds it.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from urllib.parse import quote

ASSETS = "report_assets"


def preview_copy(run_dir: Path, preview_file: str) -> str | None:
    """The run-folder-relative path of a preview's copy, refreshed when the original exists."""
    if not preview_file:
        return None
    source = Path(preview_file)
    digest = hashlib.sha256(preview_file.encode()).hexdigest()[:16]
    relative = f"{ASSETS}/previews/{digest}{source.suffix.lower()}"
    target = run_dir / relative
    if source.is_file() and not _same_file(source, target):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return relative if target.is_file() else None


def _same_file(source: Path, target: Path) -> bool:
    if not target.is_file():
        return False
    a, b = source.stat(), target.stat()
    return a.st_size == b.st_size and a.st_mtime_ns == b.st_mtime_ns


def image_src(run_dir: Path, relative: str | None) -> str | None:
    """A URL for an <img> in a page at the run folder's top, or None when the file is missing."""
    if not relative or not (run_dir / relative).is_file():
        return None
    return quote(Path(relative).as_posix())


def case_images(run_dir: Path, row: dict) -> list[tuple[str, str | None]]:
    """(caption, src) in the order of the per-case grid: control | preview | output | diff maps."""
    return [
        ("control", image_src(run_dir, row.get("control_file"))),
        ("preview", image_src(run_dir, preview_copy(run_dir, row.get("preview_file") or ""))),
        ("output", image_src(run_dir, row.get("output_file"))),
        ("abs diff", image_src(run_dir, row.get("heatmap_file"))),
        ("SSIM map", image_src(run_dir, row.get("ssim_map_file"))),
    ]
