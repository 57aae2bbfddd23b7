"""Files and values as kontext-parity writes them: atomic writes, safe names, JSON spellings, digests.

Every file of a run folder is written through ``write_atomic`` (a kill leaves the old file or the new
one, never half of one); non-finite floats are spelled for strict JSON by ``json_safe`` and read back
by ``number``; ``file_digest`` identifies an input by its bytes.
"""
from __future__ import annotations

import functools
import hashlib
import math
import os
import re
import tempfile
from pathlib import Path

from .errors import ParityError

PARTIAL = ".partial"  # suffix of a write that a kill interrupted before its rename


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write to a temporary file beside the target, fsync, then rename over it.

    A full disk or a folder that turned read-only is the user's to fix: a ParityError naming the file.
    """
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL, dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise ParityError(f"cannot write: {err.strerror or err}", source=path) from None
        raise


def json_safe(value):
    """Non-finite floats spelled "inf"/"-inf"/"nan" (strict JSON has none; float() reads them back)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def number(value) -> float | None:
    """A value as ``json_safe`` wrote it, as a float: None when absent, NaN when unreadable."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def metric_value(row: dict, column: str) -> float | None:
    """A results row's metric as a float (``number`` of its column)."""
    return number(row.get(column))


def safe_name(name: str) -> str:
    """A case name as a file name: readable, no path separators."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", name).strip("_")[:120] or "case"


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes ("missing" when it is not there), computed once per (path, size, mtime)."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return "missing"
    return _digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]
