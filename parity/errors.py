"""One error type for everything a user can get wrong.

The CLI turns a ``ParityError`` into a one-line message and exit code 2; anything
else is a bug in kontext-parity and keeps its traceback.
"""
from __future__ import annotations

import difflib
from pathlib import Path


class ParityError(Exception):
    """Bad input: names the file (or field) at fault and what is wrong with it."""

    def __init__(self, problem: str, *, source: str | Path | None = None):
        self.problem = problem
        self.source = str(source) if source is not None else None
        super().__init__(f"{self.source}: {problem}" if self.source else problem)


def did_you_mean(word: str, choices) -> str:
    """' (did you mean "x"?)' when a close choice exists, else ''."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.5)
    return f' (did you mean "{close[0]}"?)' if close else ""


def unknown_value(what: str, value, choices) -> str:
    listed = ", ".join(str(c) for c in choices)
    return f'unknown {what} "{value}"{did_you_mean(value, choices)}; choose one of: {listed}'


def yaml_problem(err, what: str = "YAML") -> str:
    """A PyYAML error in one line: what is wrong, where (1-based), and in which construct."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(err, "problem", None) or str(err)
    context = getattr(err, "context", None)
    text = f"{problem} ({context})" if context else problem
    return f"malformed {what}{where}: {' '.join(text.split())}"
