"""The demo's genuine AI Toolkit previews (parity/data/demo-runs) reproduced on the demo model.

Same method and bars as test_aitk_fidelity.py (which holds them on the older seeded tiny model): every
preview's recorded arguments (tests/data/aitk-sidecars/<run>/) are what the harness reads from the run
folder, and the engine on parity/data/shapes-kontext redraws each preview `exact` or `noise`: step 0
bit-exact where this machine has the bf16 kernels of the one that drew them, the LoRA previews with the
run folders' float16 files within the noise floor, and with the float32 values AI Toolkit sampled with
(plus its merge history) exact.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SHAPES_BASE, SHAPES_RUNS
from test_aitk_fidelity import reproduce_runs
from test_aitk_import import SIDECAR_KEYS

RUNS = ("shapes_bf16", "shapes_odd")


@pytest.fixture(scope="module")
def demo_engine():
    from parity.engine import Engine

    return Engine(str(SHAPES_BASE), device="cpu", keep_pipelines=2)


@pytest.fixture(scope="module")
def figures(demo_engine, sidecars):
    return reproduce_runs(demo_engine, SHAPES_RUNS, sidecars, RUNS)


@pytest.mark.parametrize("run_name", RUNS)
def test_every_effective_argument_equals_the_sidecar(sidecars, run_name):
    from parity.aitk import load_run

    run = load_run(SHAPES_RUNS / run_name)
    index = json.loads((sidecars / run_name / "index.json").read_text())
    assert len(run.previews) == len(index) == len(list((sidecars / run_name).glob("*__*.json")))
    for p in run.previews:
        side = json.loads((sidecars / run_name / (Path(p.path).stem + ".json")).read_text())
        assert (p.step, p.prompt_index) == (side["step"], side["prompt_index"])
        for key in SIDECAR_KEYS:
            assert p.effective[key] == side["effective"][key], (p.name, key)
        assert p.effective["seed"] == side["pipeline_kwargs"]["generator"]["initial_seed"]
        assert (p.lora_mode == "merged_fp32") == side["effective"]["lora_merged_into_base"]
        assert p.lora_scale == side["network_at_call"]["multiplier"]
        assert (Path(p.checkpoint).name if p.checkpoint else None) == side["lora_file_paired"]


def test_demo_runs_cover_branch_and_merge(figures):
    assert {r["run"] for r in figures} == set(RUNS)
    assert {r["mode"] for r in figures} == {"-", "branch", "merged_fp32"}
    assert {r["step"] for r in figures} == {0, 10, 20}


def test_step0_and_lora_previews_are_exact_or_noise(figures):
    same_kernels = all(r["file"]["max"] == 0 for r in figures if r["step"] == 0)
    for r in figures:
        assert r["file"]["verdict"] in ("exact", "noise"), r
        if r["step"] == 0:
            assert r["file"]["verdict"] == ("exact" if same_kernels else "noise"), r
        else:
            verdict = r["fp32_history"]["verdict"]
            assert verdict == "exact" if same_kernels else verdict in ("exact", "noise"), r
