"""SIGKILL in the middle of `parity run`, then the same command again: nothing done is lost or redone."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from parity.results import ResultsStore

ROOT = Path(__file__).resolve().parent.parent


def test_killed_run_resumes_without_recomputing(tmp_path, control_png):
    spec = {"defaults": {"prompt": "make it red", "control_image": str(control_png), "width": 64, "height": 64,
                         "max_area": None, "steps": 3, "control_auto_resize": False},
            "cases": [{"name": "sweep", "matrix": {"seed": list(range(12))}}]}
    cases = tmp_path / "cases.yaml"
    cases.write_text(yaml.safe_dump(spec))
    out = tmp_path / "run"
    command = [sys.executable, "-m", "parity.cli", "run", str(cases), "--out", str(out), "--no-report",
               "--no-progress", "--threads", "1", "--no-metrics"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    rows_file = out / "results.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if rows_file.is_file() and len(rows_file.read_text().splitlines()) >= 3:
            break
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {r["run_key"]: r for r in ResultsStore(out).rows()}
    assert 3 <= len(before) < 12, "the kill must land mid-run"
    outputs_before = {k: (out / r["output_file"]).read_bytes() for k, r in before.items()}

    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    computed, resumed = map(int, re.search(r"computed (\d+), resumed (\d+)", again.stderr).groups())
    assert resumed == len(before) and computed == 12 - len(before)

    after = ResultsStore(out).rows()
    assert len(after) == 12 and len({r["run_key"] for r in after}) == 12
    for key, row in before.items():  # rows and files of finished cases are untouched
        assert row in after
        assert (out / row["output_file"]).read_bytes() == outputs_before[key]
    assert len(pd.read_csv(out / "results.csv")) == 12
    assert len(json.loads((out / "results.json").read_text())) == 12
    assert not list(out.rglob("*.partial"))
