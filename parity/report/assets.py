"""Images of the report, all inside the run folder so it can be moved or uploaded as one artifact.

Outputs, controls and diff maps are already there. Previews live in the AI Toolkit run folder,
so a copy goes to report_assets/previews/, named after the preview's path: a later
`parity report` on another machine, where that path is gone, still finds it.

A results file is data, possibly from someone else (a CI artifact, a shared folder): a row may
name any path as its preview. Only images inside the run folder or inside a folder the run's
plan drew previews from are copied; anything else would leak a file into the report's artifact.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from urllib.parse import quote

from PIL import Image

from ..results import PLAN

ASSETS = "report_assets"


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def preview_roots(run_dir: Path) -> list[Path]:
    """Where previews may be copied from: the run folder and the folders of its plan's previews."""
    roots = {Path(run_dir).resolve()}
    try:
        cases = json.loads((Path(run_dir) / PLAN).read_text(encoding="utf-8")).get("cases", [])
    except (OSError, ValueError, AttributeError):
        cases = []
    for case in cases if isinstance(cases, list) else []:
        for key in ("preview", "base_preview"):
            if isinstance(case, dict) and isinstance(case.get(key), str) and case[key]:
                roots.add(Path(case[key]).resolve().parent)
    return sorted(roots)


def _copyable(source: Path, roots: list[Path]) -> bool:
    """An image file (by name and by its header) inside one of ``roots``."""
    resolved = source.resolve()
    if resolved.suffix.lower() not in IMAGE_SUFFIXES or not resolved.is_file():
        return False
    if not any(resolved.is_relative_to(root) for root in roots):
        return False
    try:
        with Image.open(resolved) as image:
            image.verify()
    except Exception:  # PIL raises many kinds on a non-image: none of them may copy the file
        return False
    return True


def preview_copy(run_dir: Path, preview_file: str, roots: list[Path] | None = None) -> str | None:
    """The run-folder-relative path of a preview's copy, refreshed when the original exists and may be copied
    (see the module docstring); an earlier copy still shows when the original is gone."""
    if not preview_file:
        return None
    source = Path(preview_file)
    digest = hashlib.sha256(preview_file.encode()).hexdigest()[:16]
    relative = f"{ASSETS}/previews/{digest}{source.suffix.lower()}"
    target = run_dir / relative
    if source.is_file() and not _same_file(source, target) and \
            _copyable(source, preview_roots(run_dir) if roots is None else roots):
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


def case_images(run_dir: Path, row: dict, roots: list[Path] | None = None) -> list[tuple[str, str | None]]:
    """(caption, src) in the order of the per-case grid: control | preview | output | diff maps."""
    return [
        ("control", image_src(run_dir, row.get("control_file"))),
        ("preview", image_src(run_dir, preview_copy(run_dir, row.get("preview_file") or "", roots))),
        ("output", image_src(run_dir, row.get("output_file"))),
        ("abs diff", image_src(run_dir, row.get("heatmap_file"))),
        ("SSIM map", image_src(run_dir, row.get("ssim_map_file"))),
    ]
