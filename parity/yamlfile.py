"""Reading the YAML files a user writes (case files, thresholds, profiles, AI Toolkit configs).

Every way such a file can be unusable ends in one ParityError naming the file, so each reader
only checks its own content. Kept apart from errors.py, which stays free of file I/O and PyYAML.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from .errors import ParityError, did_you_mean, yaml_problem


def read_text(path: str | Path, *, what: str) -> str:
    """The file's UTF-8 text; a missing file, a folder or unreadable bytes are a ParityError."""
    path = Path(path)
    if path.is_dir():
        raise ParityError(f"is a folder; give the {what} itself", source=path)
    if not path.is_file():
        raise ParityError(f"{what} not found", source=path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ParityError("not a UTF-8 text file", source=path) from None
    except OSError as err:
        raise ParityError(f"cannot read the {what}: {err.strerror or err}", source=path) from None


def read_yaml_mapping(path: str | Path, *, what: str, allowed: tuple | None = None,
                      loader=yaml.SafeLoader) -> dict:
    """The file's top-level mapping ({} for an empty file); ``allowed`` lists its only valid keys.

    ``loader`` is a SafeLoader subclass (or a callable building one from the text).
    """
    text = read_text(path, what=what)
    parser = loader(text)  # a SafeLoader: builds plain data only, never objects a file names
    try:
        data = parser.get_single_data()
    except yaml.YAMLError as err:
        raise ParityError(yaml_problem(err), source=path) from None
    finally:
        parser.dispose()
    if data is None:
        return {}
    if not isinstance(data, dict):
        keys = f" with {', '.join(allowed)}" if allowed else ""
        raise ParityError(f"a {what} is a mapping{keys}, not a {type(data).__name__}", source=path)
    for key in data:
        if allowed is not None and key not in allowed:
            raise ParityError(f'unknown top-level key "{key}"{did_you_mean(key, allowed)}', source=path)
    return data
