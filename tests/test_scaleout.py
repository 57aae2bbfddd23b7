"""Scale-out with torchrun: 2 CPU processes split the cases and their merged results equal one process's;
a process that fails on a bad case neither strands the others nor loses their results."""
from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from parity.results import ResultsStore, read_rows

ROOT = Path(__file__).resolve().parent.parent
VARYING = ("time_", "mem_", "finished_at")  # differ between any two runs of the same case


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
    leftover = tmp_path / "multi" / "outputs" / ".base.png.x1y2.partial"  # of an earlier, killed run
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half an image")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port())]
    _run([*torchrun, "-m", "parity.cli", *common, "--out", str(tmp_path / "multi")])
    assert not leftover.exists()  # rank 0 cleans up once every process is done writing

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
        assert {k: v for k, v in row.items() if not k.startswith(VARYING)} == \
               {k: v for k, v in other.items() if not k.startswith(VARYING)}
    merged_csv = (tmp_path / "multi" / "results.csv").read_text().splitlines()
    assert len(merged_csv) == 6


def _free_port() -> int:
    """A free port below the ephemeral range: an ephemeral one could be handed to a client socket
    before the store binds it, and a client connecting to its own port talks to itself (a hang)."""
    low, _ = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    for port in random.Random().sample(range(20000, min(low, 32768)), 50):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def test_a_failing_process_neither_strands_the_others_nor_loses_their_results(tmp_path, control_png):
    """Both processes started as torchrun starts them (RANK, WORLD_SIZE, MASTER_*), but without its agent,
    which kills every process once one fails and so would hide a process left waiting for a failed one."""
    lora = tmp_path / "foreign.safetensors"  # FLUX.1-dev shapes on the tiny 32-wide model: fails mid-run
    save_file({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 3072),
               "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(3072, 4)}, str(lora))
    spec = {"defaults": {"prompt": "make it red", "control_image": str(control_png), "width": 64, "height": 64,
                         "max_area": None, "steps": 2, "control_auto_resize": False},
            "cases": [{"name": "a0", "seed": 0}, {"name": "bad", "loras": [[str(lora), 1.0, "branch"]]},
                      {"name": "a2", "seed": 2}, {"name": "a3", "seed": 3}, {"name": "a4", "seed": 4}]}
    cases = tmp_path / "cases.yaml"
    cases.write_text(yaml.safe_dump(spec))
    out = tmp_path / "run"
    command = [sys.executable, "-m", "parity.cli", "run", str(cases), "--out", str(out), "--no-report",
               "--no-progress", "--threads", "1", "--no-metrics"]
    world = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(command, cwd=ROOT, env={**os.environ, **world, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        stderr = [proc.communicate(timeout=240)[1] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    assert [proc.returncode for proc in procs] == [2, 2], stderr
    says = f'{lora}: case "bad": '
    assert stderr[1].splitlines()[-1].startswith(f"error: {says}"), stderr[1]
    assert stderr[0].splitlines()[-1].startswith(f"error: process 2 of 2 failed: {says}"), stderr[0]
    assert "does not fit" in stderr[0]

    rank0 = {r["name"]: r for r in read_rows(out) if r["status"] == "ok"}
    assert sorted(rank0) == ["a0", "a2", "a4"]  # rank 0 ran all its cases; rank 1 stopped at "bad"
    assert all((out / r["output_file"]).is_file() for r in rank0.values())
    merged = pd.read_csv(out / "results.csv")  # merged by rank 0 although a process failed
    assert dict(zip(merged["name"], merged["status"])) == {"a0": "ok", "bad": "error", "a2": "ok", "a4": "ok"}
