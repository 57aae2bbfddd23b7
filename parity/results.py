"""The results table of a run folder: appended row by row, never rewritten in place.

``results.jsonl`` gets one line per finished case, flushed and fsynced before the next case
starts, so a killed run loses at most the case in flight; a rerun reads it back and skips
every case whose inputs and knobs are unchanged. Each row carries ``finished_at``, so the newest
row of a case wins whichever file (results.jsonl, a shard) it is in. The CSV/JSON views are
regenerated atomically from it.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from .errors import ParityError
from .files import PARTIAL, json_safe, write_atomic
from .validate import is_integer

ROWS = "results.jsonl"
ROW_START = '{"name": '  # every row is written with its name first
PLAN = "plan.json"  # the plan of the newest run into the folder
SHARD = re.compile(r"results-rank(\d+)\.jsonl")


class ResultsStore:
    """``shard``: this process's rank when several processes share the run folder."""

    def __init__(self, run_dir: str | Path, shard: int | None = None):
        self.dir = Path(run_dir)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / ".write-probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise ParityError(f"cannot write to the output folder: {err.strerror}", source=self.dir) from None
        self.rows_path = self.dir / ROWS if shard is None else self.dir / "shards" / f"results-rank{shard}.jsonl"
        self.rows_path.parent.mkdir(exist_ok=True)
        self._last_stamp: int | None = None
        if shard is None:  # alone in the folder
            self.remove_partials()

    def remove_partials(self) -> None:
        """Delete leftovers of writes a kill interrupted; only while no other process writes here."""
        for leftover in self.dir.rglob(f"*{PARTIAL}"):
            leftover.unlink(missing_ok=True)

    def rows(self) -> list[dict]:
        """Every complete row of every shard (see ``read_rows``)."""
        return read_rows(self.dir)

    def done(self) -> dict[str, dict]:
        """run_key -> row for cases whose newest row is ok and whose output file is still there
        (a newer error row, e.g. a comparison that failed on a rerun, means not done)."""
        return {key: row for key, row in newest(self.rows(), "run_key").items()
                if row.get("status") == "ok" and (self.dir / row.get("output_file", "")).is_file()}

    def append(self, row: dict) -> None:
        """Append ``row`` stamped with ``finished_at``, which decides which row of a case is the newest."""
        if self._last_stamp is None:  # newer than every row already here, even if the clock went back
            self._last_stamp = max((_stamp(r) or 0 for r in self.rows()), default=0)
        self._last_stamp = max(time.time_ns(), self._last_stamp + 1)
        line = json.dumps(json_safe({**row, "finished_at": self._last_stamp}), default=str) + "\n"
        try:
            with open(self.rows_path, "a+", encoding="utf-8") as handle:
                if handle.tell() > 0:  # after a kill mid-append, start on a fresh line
                    handle.seek(handle.tell() - 1)
                    if handle.read(1) != "\n":
                        line = "\n" + line
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as err:
            raise ParityError(f"cannot append a result row: {err.strerror}", source=self.rows_path) from None

    def latest_rows(self) -> list[dict]:
        """One row per case of the plan, the newest (see ``latest_rows``)."""
        return latest_rows(self.dir)

    def merge(self, noise_k_for=None) -> dict[str, Path]:
        """A multi-process run's tables, on rank 0 once every process is done writing."""
        self.remove_partials()
        return self.write_tables(noise_k_for)

    def write_tables(self, noise_k_for=None) -> dict[str, Path]:
        """results.csv and results.json (and results.parquet when pyarrow is present), each compared
        row with its verdict and the reason (``noise_k_for``: row -> k, the thresholds' own)."""
        import pandas as pd

        from .verdict import NOISE_K, judge_rows

        rows = self.latest_rows()
        verdicts = judge_rows(rows, noise_k_for or (lambda row: NOISE_K))
        rows = [{**row, "verdict": verdicts[row["name"]].verdict, "verdict_reason": verdicts[row["name"]].reason}
                if row["name"] in verdicts else row for row in rows]
        frame = pd.DataFrame([{k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in r.items()}
                              for r in rows])
        paths = {"csv": self.dir / "results.csv", "json": self.dir / "results.json"}
        write_atomic(paths["csv"], frame.map(spreadsheet_safe).to_csv(index=False))
        write_atomic(paths["json"], json.dumps(json_safe(rows), indent=1, default=str))
        try:
            import io

            buffer = io.BytesIO()
            frame.astype({c: "string" for c in frame.columns if frame[c].dtype == object}).to_parquet(buffer)
            paths["parquet"] = self.dir / "results.parquet"
            write_atomic(paths["parquet"], buffer.getvalue())
        except ImportError:
            pass
        return paths


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value):
    """A CSV cell no spreadsheet runs as a formula: text starting with = + - @ tab or CR gets a leading
    apostrophe (prompts and case names are user text; results.json keeps them as they are)."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_START) else value


def row_files(run_dir: str | Path) -> list[Path]:
    """results.jsonl and the shards of a multi-process run, by rank (rank10 after rank2)."""
    run_dir = Path(run_dir)
    shards = [p for p in (run_dir / "shards").glob("results-rank*.jsonl") if SHARD.fullmatch(p.name)]
    shards.sort(key=lambda p: int(SHARD.fullmatch(p.name)[1]))
    return [p for p in [run_dir / ROWS, *shards] if p.is_file()]


def _stamp(row: dict) -> int | None:
    value = row.get("finished_at")
    return int(value) if is_integer(value) else None


def _age(row: dict) -> tuple[bool, int]:
    """Rows written before ``finished_at`` existed are older than any stamped row."""
    stamp = _stamp(row)
    return stamp is not None, stamp or 0


def newest(rows: list[dict], by: str = "name") -> dict:
    """row[by] -> its newest row, in first-seen order: the larger ``finished_at`` wins, and between
    rows without one the later in file order (rows lacking ``by`` are left out)."""
    latest: dict = {}
    for row in rows:
        key = row.get(by)
        if key is not None and (key not in latest or _age(row) >= _age(latest[key])):
            latest[key] = row
    return latest


def planned_cases(run_dir: str | Path) -> list[dict] | None:
    """The cases of the folder's plan.json as {name, gated} (None without one): what a complete run has
    a row for, and which cases since removed from the case file must not linger in tables and reports."""
    path = Path(run_dir) / PLAN
    if not path.is_file():
        return None
    try:
        cases = json.loads(path.read_text(encoding="utf-8"))["cases"]
        return [{"name": case["name"], "gated": case.get("gated", True) is not False} for case in cases]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise ParityError(f"cannot read the plan of the run: {err}", source=path) from None


def selected(rows: list[dict], planned: list[dict] | None, expression: str | None):
    """Rows and planned cases narrowed to the names matching a -k expression (``parity.select``)."""
    from .select import compile_selection

    pick = compile_selection(expression)
    rows = [row for row in rows if pick(row["name"])]
    if not rows:
        raise ParityError(f"-k {expression!r} matches no case of the run")
    return rows, None if planned is None else [case for case in planned if pick(case["name"])]


def latest_rows(run_dir: str | Path, *, strict: bool = False) -> list[dict]:
    """The newest row of each case of the run's plan, in the plan's order (a rerun after a fix
    replaces an error row). ``strict``: a row without a name or an ok/error status is an error
    (a gate must not pass on rows it could not read); otherwise it is skipped."""
    rows = []
    for row in read_rows(run_dir, strict=strict):
        if not isinstance(row.get("name"), str) or row.get("status") not in ("ok", "error"):
            if strict:
                raise ParityError(f'a results row needs a name and a status "ok" or "error": {str(row)[:80]}',
                                  source=run_dir)
            continue
        rows.append(row)
    planned = planned_cases(run_dir)
    if planned is None:
        return list(newest(rows).values())
    order = {case["name"]: i for i, case in enumerate(planned)}  # the plan's order, not the order computed in
    return sorted((row for name, row in newest(rows).items() if name in order), key=lambda row: order[row["name"]])


def read_rows(run_dir: str | Path, *, strict: bool = False) -> list[dict]:
    """All rows of a run folder, without writing to it.

    A row cut short by a kill is skipped; any other unreadable line is skipped too, unless
    ``strict`` (a gate must not pass on rows it could not read).
    """
    rows = []
    for path in row_files(run_dir):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ParityError(f"cannot read the results: {err}", source=path) from None
        lines = text.splitlines()
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict):
                if line.startswith(ROW_START) and row is None:
                    continue  # a row cut short by a kill (the resumed run starts a fresh line)
                if strict:
                    raise ParityError(f"line {number} is not a JSON results row", source=path)
                continue
            rows.append(row)
    return rows
