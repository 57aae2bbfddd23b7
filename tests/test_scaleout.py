"""Scale-out with torchrun: 2 CPU processes split the cases and their merged results equal one process's."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from parity.results import ResultsStore

ROOT = Path(__file__).resolve().parent.parent


def _plan(tmp_path, control_png) -> Path:
    spec = {"defaults": {"prompt": "make it red", "control_image": str(control_png), "width": 64, "height": 64,
                         "max_area": None, "steps": 2, "control_auto_resize": False},
            "cases": [{"name": "base", "matrix": {"seed": [1, 2], "guidance": [2.0, 3.0]}}, {"name": "solo"}]}
    path = tmp_path / "cases.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _run(args, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_two_processes_merge_into_the_single_process_results(tmp_path, control_png):
    cases = _plan(tmp_path, control_png)
    common = ["run", str(cases), "--no-report", "--no-progress", "--threads", "1", "--no-metrics"]
    _run([sys.executable, "-m", "parity.cli", *common, "--out", str(tmp_path / "single")])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    _run([*torchrun, "-m", "parity.cli", *common, "--out", str(tmp_path / "multi")])

    single = {r["name"]: r for r in ResultsStore(tmp_path / "single").latest_rows()}
    multi = {r["name"]: r for r in ResultsStore(tmp_path / "multi").latest_rows()}
    assert sorted(single) == sorted(multi) and len(single) == 5
    shards = sorted(p.name for p in (tmp_path / "multi" / "shards").glob("*.jsonl"))
    assert shards == ["results-rank0.jsonl", "results-rank1.jsonl"]
    for name, row in single.items():
        other = multi[name]
        assert row["run_key"] == other["run_key"]
        a = np.asarray(Image.open(tmp_path / "single" / row["output_file"]))
        b = np.asarray(Image.open(tmp_path / "multi" / other["output_file"]))
        assert np.array_equal(a, b), name
        assert {k: v for k, v in row.items() if not k.startswith(("time_", "mem_"))} == \
               {k: v for k, v in other.items() if not k.startswith(("time_", "mem_"))}
    merged_csv = (tmp_path / "multi" / "results.csv").read_text().splitlines()
    assert len(merged_csv) == 6
