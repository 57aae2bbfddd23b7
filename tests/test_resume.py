"""Which row of a case counts, and when a finished case is reused: the newest row wins whatever file it is in,
cases removed from the plan leave the tables, and a resume never stands in for a different measurement."""
from __future__ import annotations

import json

import diffusers
import numpy as np
import pandas as pd
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from parity.case import Case
from parity.cli import main
from parity.plan import load_plan
from parity.report.rows import load_rows
from parity.results import ResultsStore, latest_rows, row_files
from parity.runner import Runner, run_key


def _ok(name: str, key: str, out_dir, **extra) -> dict:
    output = out_dir / "outputs" / f"{name}.png"
    output.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(output)
    return {"name": name, "run_key": key, "status": "ok", "output_file": f"outputs/{name}.png", **extra}


def _error(name: str, key: str) -> dict:
    return {"name": name, "run_key": key, "status": "error", "error": "out of memory"}


# --- the newest row of a case ------------------------------------------------------------------------------

def test_newest_row_wins_whatever_file_holds_it(tmp_path):
    run = tmp_path / "run"
    ResultsStore(run, shard=0).append(_error("x", "k1"))  # a multi-process run failed on x ...
    ResultsStore(run).append(_ok("x", "k1", run))  # ... then a single-process rerun fixed it
    assert [r["status"] for r in ResultsStore(run).latest_rows()] == ["ok"]
    assert [r["status"] for r in load_rows(run)] == ["ok"]
    assert list(ResultsStore(run).done()) == ["k1"]


def test_stamps_increase_even_if_the_clock_goes_back(tmp_path):
    run = tmp_path / "run"
    future = 4 * 10**18  # a row stamped before the clock was set back by years
    shard = run / "shards" / "results-rank3.jsonl"
    shard.parent.mkdir(parents=True)
    shard.write_text(json.dumps({**_ok("x", "k1", run), "finished_at": future}) + "\n")
    ResultsStore(run).append(_error("x", "k1"))
    assert ResultsStore(run).rows()[0]["finished_at"] > future
    assert [r["status"] for r in load_rows(run)] == ["error"]


def test_shards_are_read_by_rank_number(tmp_path):
    """Rows written before `finished_at` existed fall back to file order: rank 10 is read after rank 2."""
    run = tmp_path / "run"
    shards = run / "shards"
    shards.mkdir(parents=True)
    (shards / "results-rank2.jsonl").write_text(json.dumps(_error("x", "k1")) + "\n")
    (shards / "results-rank10.jsonl").write_text(json.dumps(_ok("x", "k1", run)) + "\n")
    assert [p.name for p in row_files(run)] == ["results-rank2.jsonl", "results-rank10.jsonl"]
    assert [r["status"] for r in latest_rows(run)] == ["ok"]


def test_a_case_whose_newest_row_is_an_error_is_not_done(tmp_path):
    run = tmp_path / "run"
    ResultsStore(run, shard=0).append(_ok("x", "k1", run))
    ResultsStore(run, shard=0).append(_ok("y", "k2", run))
    ResultsStore(run).append(_error("x", "k1"))  # e.g. the comparison failed on a rerun
    assert list(ResultsStore(run).done()) == ["k2"]


# --- cases removed from the case file ---------------------------------------------------------------------

def _case_file(tmp_path, control_png, names, preview=None):
    cases = [{"name": n, "seed": i} for i, n in enumerate(names)]
    if preview:
        cases.append({"name": "compared", "preview": str(preview)})
    spec = {"defaults": {"prompt": "make it red", "control_image": str(control_png), "width": 64, "height": 64,
                         "max_area": None, "steps": 2, "control_auto_resize": False},
            "cases": cases}
    path = tmp_path / "cases.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_plan(path)


def test_cases_removed_from_the_plan_leave_tables_reports_and_gate(tmp_path, control_png, engine):
    run = tmp_path / "run"
    Runner(run, engine=engine, progress=False, metrics=False).run(_case_file(tmp_path, control_png, ["a", "b", "c"]))
    Runner(run, engine=engine, progress=False, metrics=False).run(_case_file(tmp_path, control_png, ["a", "b"]))
    assert len(ResultsStore(run).rows()) == 3  # the row of c stays in results.jsonl ...
    assert [r["name"] for r in load_rows(run)] == ["a", "b"]  # ... but counts nowhere
    assert list(pd.read_csv(run / "results.csv")["name"]) == ["a", "b"]
    assert [r["name"] for r in json.loads((run / "results.json").read_text())] == ["a", "b"]
    checked = CliRunner().invoke(main, ["check", str(run)])
    assert "2 pass, 0 fail, 0 error, 0 not gated" in checked.output, checked.output


# --- what a resume may reuse ------------------------------------------------------------------------------

def test_rerun_with_metrics_measures_what_a_no_metrics_run_left_out(tmp_path, control_png, engine):
    preview = tmp_path / "preview.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(preview)
    plan = _case_file(tmp_path, control_png, ["plain"], preview=preview)
    run = tmp_path / "run"
    first = Runner(run, engine=engine, progress=False, metrics=False).run(plan)
    assert first.computed == 2 and not any("ssim" in r for r in first.rows)
    measured = Runner(run, engine=engine, progress=False).run(plan)
    assert (measured.computed, measured.resumed) == (1, 1)  # the case without a preview needs nothing more
    rows = {r["name"]: r for r in load_rows(run)}
    assert "ssim" in rows["compared"] and rows["compared"]["lpips_net"] == "alex"
    assert Runner(run, engine=engine, progress=False).run(plan).computed == 0
    other_net = Runner(run, engine=engine, progress=False, lpips_net="vgg").run(plan)
    assert other_net.computed == 1 and load_rows(run)[-1]["lpips_net"] == "vgg"
    # a --no-metrics run reuses measured rows as they are
    assert Runner(run, engine=engine, progress=False, metrics=False).run(plan).computed == 0


def test_run_key_holds_device_type_and_library_versions(monkeypatch, control_png):
    case = Case(name="a", prompt="make it red", control_image=str(control_png), width=64, height=64)
    cpu = run_key(case, "embedded", "cpu")
    assert run_key(case, "embedded", "cuda") != cpu != run_key(case, "embedded", "mps")
    assert run_key(case, "embedded", "cuda:0") == run_key(case, "embedded", "cuda:1")  # the type, not the index
    monkeypatch.setattr(torch, "__version__", "99.0")
    assert run_key(case, "embedded", "cpu") != cpu
    monkeypatch.undo()
    monkeypatch.setattr(diffusers, "__version__", "99.0")
    assert run_key(case, "embedded", "cpu") != cpu
