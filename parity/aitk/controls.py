"""Finding a control image named by a config written on another machine.

AI Toolkit opens `ctrl_img` as given, relative to its own working directory, so a config
holds training-machine paths. Here a path is tried as given (if absolute), then relative to
the run folder and its parent (AI Toolkit's training_folder), then inside `ctrl_root` by its
trailing path components (longest first) and finally by its file name anywhere below it.
"""
from __future__ import annotations

import re
from pathlib import Path


def resolve_control(raw: str, roots: list[Path], ctrl_root: Path | None) -> tuple[Path | None, list[str]]:
    """(the file found, places tried) or (None, places tried)."""
    tried: list[str] = []
    parts = [p for p in re.split(r"[\\/]+", raw) if p and not re.fullmatch(r"[A-Za-z]:", p)]
    given = Path(raw).expanduser()
    candidates = [given] if given.is_absolute() else []
    relative = Path(*parts) if parts else None
    if relative is not None and not given.is_absolute():
        candidates += [root / relative for root in roots]
    if ctrl_root is not None:
        candidates += [ctrl_root.joinpath(*parts[-k:]) for k in range(len(parts), 0, -1)]
    for candidate in candidates:
        tried.append(str(candidate))
        if candidate.is_file():
            return candidate.resolve(), tried
    if ctrl_root is not None and parts:
        # compared literally: a file name is no glob pattern ("a[1].png", "*.png" are names too)
        matches = sorted(p for p in ctrl_root.rglob("*") if p.name == parts[-1] and p.is_file())
        tried.append(f"{ctrl_root}/**/{parts[-1]}")
        if len(matches) == 1:
            return matches[0].resolve(), tried
        if matches:
            tried.append(f"(ambiguous: {len(matches)} files named {parts[-1]} under {ctrl_root})")
    return None, tried
