"""The runner and the run folder: outputs and table written, resume, caches that change nothing."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from parity.case import Case
from parity.errors import ParityError
from parity.plan import load_plan
from parity.results import ResultsStore
from parity.runner import Runner


def _case_file(tmp_path, control_png, extra: dict | None = None):
    spec = {
        "defaults": {"prompt": "make it red", "control_image": str(control_png), "width": 64, "height": 64,
                     "max_area": None, "steps": 2, "control_auto_resize": False, "seed": 3},
        "cases": [{"name": "base", "ablate": {"guidance": [2.0], "control_resize": ["nearest"]}}],
    }
    spec.update(extra or {})
    path = tmp_path / "cases.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_run_writes_images_and_table(tmp_path, control_png, engine):
    plan = load_plan(_case_file(tmp_path, control_png))
    summary = Runner(tmp_path / "run", engine=engine, progress=False).run(plan)
    assert summary.computed == 3 and summary.resumed == 0
    rows = ResultsStore(tmp_path / "run").rows()
    assert sorted(r["name"] for r in rows) == ["base", "base[control_resize=nearest]", "base[guidance=2.0]"]
    for row in rows:
        assert (tmp_path / "run" / row["output_file"]).is_file()
        assert row["eff_width"] == 64 and row["time_denoise_s"] > 0 and len(row["time_steps_s"]) == 2
    table = (tmp_path / "run" / "results.csv").read_text().splitlines()
    assert len(table) == 4 and "control_resize" in table[0] and "time_total_s" in table[0]
    assert {r["name"] for r in json.loads((tmp_path / "run" / "results.json").read_text())} >= {"base"}


def test_rerun_resumes_without_recomputing(tmp_path, control_png, engine):
    plan = load_plan(_case_file(tmp_path, control_png))
    Runner(tmp_path / "run", engine=engine, progress=False).run(plan)
    calls = engine.counters["transformer_calls"]
    again = Runner(tmp_path / "run", engine=engine, progress=False).run(plan)
    assert again.computed == 0 and again.resumed == 3
    assert engine.counters["transformer_calls"] == calls
    # a changed knob is a new case; the others stay done
    changed = load_plan(_case_file(tmp_path, control_png, {"cases": [{"name": "base", "steps": 3}]}))
    third = Runner(tmp_path / "run", engine=engine, progress=False).run(changed)
    assert third.computed == 1


def test_cached_encodings_give_identical_images(tmp_path, control_png):
    from parity.engine import Engine

    cases = [Case(name=f"c{i}", prompt="make it red", control_image=str(control_png), width=64, height=64,
                  max_area=None, steps=2, seed=i % 2, control_auto_resize=False, guidance=2.0 + i)
             for i in range(3)]
    cached, uncached = Engine("embedded", cache_encodings=True), Engine("embedded", cache_encodings=False)
    for case in cases + cases:
        a, b = cached.run(case), uncached.run(case)
        assert np.array_equal(np.asarray(a.raw_image), np.asarray(b.raw_image))
    assert len(cached._prompt_cache) == 1 and len(uncached._prompt_cache) == 0


def test_missing_control_image_fails_before_any_model_work(tmp_path, control_png, engine):
    path = _case_file(tmp_path, control_png)
    spec = yaml.safe_load(path.read_text())
    spec["cases"].append({"name": "broken", "control_image": str(tmp_path / "nope.png")})
    path.write_text(yaml.safe_dump(spec))
    calls = engine.counters["transformer_calls"]
    with pytest.raises(ParityError, match="nope.png"):
        Runner(tmp_path / "run", engine=engine, progress=False).run(load_plan(path))
    assert engine.counters["transformer_calls"] == calls


def test_outputs_are_valid_images(tmp_path, control_png, engine):
    plan = load_plan(_case_file(tmp_path, control_png, {"cases": [{"name": "jpeg", "output_format": "jpeg",
                                                                   "output_quality": 90}]}))
    Runner(tmp_path / "run", engine=engine, progress=False).run(plan)
    row = ResultsStore(tmp_path / "run").rows()[0]
    with Image.open(tmp_path / "run" / row["output_file"]) as image:
        assert image.format == "JPEG" and image.size == (64, 64)
