"""The runner and the run folder: outputs and table written, resume, caches that change nothing."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from parity.case import Case
from parity.errors import ParityError
from parity.plan import load_plan
from parity.results import ResultsStore

ROOT = Path(__file__).resolve().parent.parent
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


def _compared_plan(tmp_path, control_png):
    """Three cases compared with a preview: each comparison may overlap the next generation."""
    preview = tmp_path / "preview.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(preview)
    return load_plan(_case_file(tmp_path, control_png, {"cases": [{"name": "base", "preview": str(preview),
                                                                   "matrix": {"seed": [0, 1, 2]}}]}))


def test_serial_metrics_give_identical_images_and_metrics(tmp_path, control_png, engine):
    plan = _compared_plan(tmp_path, control_png)
    runs = {}
    for serial in (False, True):
        out = tmp_path / f"serial={serial}"
        Runner(out, engine=engine, progress=False, serial_metrics=serial).run(plan)
        runs[serial] = {r["name"]: r for r in ResultsStore(out).latest_rows()}
    assert sorted(runs[False]) == sorted(runs[True]) and len(runs[True]) == 3
    for name, row in runs[True].items():
        other = runs[False][name]
        assert (tmp_path / "serial=True" / row["output_file"]).read_bytes() == \
               (tmp_path / "serial=False" / other["output_file"]).read_bytes()
        for metric in ("ssim", "lpips", "psnr", "mean_abs", "max_abs"):
            assert row[metric] == other[metric], (name, metric)
        assert row["metrics_overlapped"] is False  # each comparison finished before the next case started
        assert isinstance(other["metrics_overlapped"], bool)
    first = next(iter(runs[False].values()))
    assert first["metrics_overlapped"] is False  # nothing ran before the first case


def test_lpips_is_built_before_the_comparison_thread_can_race_a_model_load(tmp_path, control_png, engine,
                                                                           monkeypatch):
    """Loading a pipeline or a LoRA patches torch's parameter registration for every thread for a moment
    (accelerate's / PEFT's meta-device init). A network built meanwhile in the comparison thread got meta
    tensors and its case crashed; the runner builds LPIPS on its own thread first. Here every render holds
    such a patch while the previous case is compared: no case may crash."""
    import threading
    import time

    from accelerate import init_empty_weights

    from parity.metrics import lpips

    lpips._cached_model.cache_clear()
    built_on = []
    original_init = lpips.LPIPS.__init__

    def recording_init(self, *args, **kwargs):
        built_on.append(threading.current_thread().name)
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(lpips.LPIPS, "__init__", recording_init)
    render = Runner._render

    def render_while_loading(self, case, pixels):
        with init_empty_weights():  # as from_pretrained / load_lora_weights do while they build modules
            time.sleep(0.5)  # the previous case's comparison runs now
        return render(self, case, pixels)

    monkeypatch.setattr(Runner, "_render", render_while_loading)
    plan = _compared_plan(tmp_path, control_png)  # no noise floor: it would build LPIPS on this thread anyway
    summary = Runner(tmp_path / "run", engine=engine, progress=False, noise_floor=0).run(plan)
    rows = ResultsStore(tmp_path / "run").latest_rows()
    assert summary.failed == 0 and summary.crashed == [] and len(rows) == 3
    assert all(r["status"] == "ok" and r["lpips"] >= 0 for r in rows)
    assert built_on == ["MainThread"]


def test_serial_metrics_flag_is_documented():
    from click.testing import CliRunner

    from parity.cli import main

    help_text = " ".join(CliRunner().invoke(main, ["run", "--help"]).output.split())
    assert "--serial-metrics" in help_text and "CPU timings and memory are clean" in help_text


def test_single_process_cli_run_writes_the_tables_once(tmp_path, control_png, engine, monkeypatch):
    from click.testing import CliRunner

    from parity.cli import main

    monkeypatch.setattr("parity.engine.Engine", lambda *args, **kwargs: engine)
    written = []
    real = ResultsStore.write_tables
    monkeypatch.setattr(ResultsStore, "write_tables", lambda self, *args: written.append(self.dir) or real(self, *args))
    result = CliRunner().invoke(main, ["run", str(_case_file(tmp_path, control_png)), "--out", str(tmp_path / "run"),
                                       "--no-report", "--no-progress", "--no-metrics"])
    assert result.exit_code == 0, result.output
    assert written == [tmp_path / "run"]


def test_cases_needing_another_pipeline_run_together(tmp_path, control_png):
    """A dtype ablation interleaved per preview loads each pipeline variant once, not once per case."""
    from parity.engine import Engine

    spec = {"defaults": {"prompt": "make it red", "control_image": str(control_png), "width": 64, "height": 64,
                         "max_area": None, "steps": 1, "control_auto_resize": False},
            "cases": [{"name": f"c{i}", "seed": i, "ablate": {"dtype": ["fp32"]}} for i in range(3)]}
    path = tmp_path / "cases.yaml"
    path.write_text(yaml.safe_dump(spec))
    engine = Engine("embedded", keep_pipelines=1)
    Runner(tmp_path / "run", engine=engine, progress=False, metrics=False).run(load_plan(path))
    assert engine.counters["pipelines_loaded"] == 2
    assert len(ResultsStore(tmp_path / "run").rows()) == 6


def test_identical_work_is_computed_once(tmp_path, control_png, engine):
    """Cases that draw the same pixels (a knob that changes nothing here, another output encoding) run the
    pipeline once; each still gets its own files and row, saying which case it is the same as."""
    spec = {"defaults": {"prompt": "make it red", "control_image": str(control_png), "width": 64, "height": 64,
                         "max_area": None, "steps": 2, "control_auto_resize": False, "seed": 5},
            "cases": [{"name": "a", "ablate": {"generator": ["global"], "output_format": ["jpeg"],
                                               "guidance": [2.0], "control_alpha": ["white"], "snap": ["floor16"]}}]}
    path = tmp_path / "cases.yaml"
    path.write_text(yaml.safe_dump(spec))
    calls = engine.counters["transformer_calls"]
    summary = Runner(tmp_path / "run", engine=engine, progress=False, metrics=False).run(load_plan(path))
    assert engine.counters["transformer_calls"] - calls == 3 * 2  # baseline, global generator, guidance
    assert (summary.computed, summary.reused) == (6, 3)
    rows = {r["name"]: r for r in ResultsStore(tmp_path / "run").rows()}
    assert rows["a[generator=global]"]["same_as"] is None and rows["a[output_format=jpeg]"]["same_as"] == "a"
    # an opaque control image has no alpha to composite; 64 px is already a multiple of 16
    assert rows["a[control_alpha=white]"]["same_as"] == rows["a[snap=floor16]"]["same_as"] == "a"
    assert rows["a"]["same_as"] is None and rows["a[guidance=2.0]"]["same_as"] is None
    baseline = Image.open(tmp_path / "run" / rows["a"]["output_file"])
    same = Image.open(tmp_path / "run" / rows["a[generator=global]"]["output_file"])
    assert np.array_equal(np.asarray(baseline), np.asarray(same))
    assert rows["a[output_format=jpeg]"]["output_file"].endswith(".jpg")


def test_reused_images_are_exactly_what_the_case_would_draw(tmp_path, engine, demo_runs):
    """Every ablation of the demo's final previews, drawn with reuse and without: the same bytes everywhere."""
    spec = {"previews": {"runs": [str(demo_runs / "tiny_odd")], "train_steps": "last"},
            "variants": [{"name": "ablation", "profile": "aitk-preview", "gated": False,
                          "ablate": yaml.safe_load((ROOT / "cases" / "default.yaml").read_text())
                          ["variants"][1]["ablate"]}]}
    path = tmp_path / "cases.yaml"
    path.write_text(yaml.safe_dump(spec))
    plan = load_plan(path)
    reused = Runner(tmp_path / "reused", engine=engine, progress=False, metrics=False).run(plan)
    fresh = Runner(tmp_path / "fresh", engine=engine, progress=False, metrics=False, reuse=False).run(plan)
    assert reused.reused >= 0.3 * len(plan.cases) and fresh.reused == 0
    files = {r["name"]: r["output_file"] for r in ResultsStore(tmp_path / "fresh").rows()}
    for row in ResultsStore(tmp_path / "reused").rows():
        assert (tmp_path / "reused" / row["output_file"]).read_bytes() == \
            (tmp_path / "fresh" / files[row["name"]]).read_bytes(), (row["name"], row["same_as"])
