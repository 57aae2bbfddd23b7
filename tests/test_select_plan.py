"""-k selection and `parity plan`: which cases, and what a run would do with them before it does it."""
from __future__ import annotations

import re

import pytest
import yaml
from click.testing import CliRunner

from parity.cli import main
from parity.errors import ParityError
from parity.select import compile_selection

NAMES = ["tiny_bf16/step0/p0/aitk-preview", "tiny_bf16/step20/p1/ablation[guidance=2.5]",
         "tiny_odd/step20/p0/fal", "tiny_odd/step10/p3/aitk-preview"]


@pytest.mark.parametrize("expression, expected", [
    ("step20", [1, 2]),
    ("STEP20 and not fal", [1]),
    ("aitk-preview or fal", [0, 2, 3]),
    ("tiny_odd and (step10 or fal)", [2, 3]),
    ("not (tiny_odd or guidance)", [0]),
    ("[guidance=2.5]", [1]),  # brackets are part of names, not syntax
    ("", [0, 1, 2, 3]),
])
def test_selection_matches_names_like_pytest_k(expression, expected):
    pick = compile_selection(expression)
    assert [i for i, name in enumerate(NAMES) if pick(name)] == expected


@pytest.mark.parametrize("expression, problem", [
    ("step20 and", "ends where a name"), ("(step20", "not closed"), ("step20 fal", "unexpected 'fal'"),
    ("or fal", "unexpected 'or'"), ("step20 )", "unexpected ')'"),
])
def test_a_bad_selection_names_the_problem(expression, problem):
    with pytest.raises(ParityError, match=re.escape(problem)):
        compile_selection(expression)


def _cases(tmp_path, control_png):
    spec = {"defaults": {"prompt": "make it red", "control_image": str(control_png), "width": 64, "height": 64,
                         "max_area": None, "steps": 2, "control_auto_resize": False},
            "cases": [{"name": "a", "ablate": {"output_format": ["jpeg"], "guidance": [2.0]}},
                      {"name": "b", "seed": 9}]}
    path = tmp_path / "cases.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_plan_lists_compute_same_image_and_done_with_estimates(tmp_path, control_png, engine, monkeypatch):
    monkeypatch.setattr("parity.engine.Engine", lambda *args, **kwargs: engine)
    cases, out = _cases(tmp_path, control_png), tmp_path / "run"
    first = _cli("plan", cases, "--out", out)
    assert first.exit_code == 0, first.output
    assert "4 cases: 3 to compute, 1 the same image as another case (drawn once), 0 done" in first.output
    assert "same image as a" in first.output and "pass --calibrate" in first.output
    assert not out.exists()  # a dry run writes nothing
    assert _cli("run", cases, "--out", out, "-k", "a[output", "--no-progress").exit_code == 0
    second = _cli("plan", cases, "--out", out)
    assert "4 cases: 3 to compute, 0 the same image as another case (drawn once), 1 done" in second.output
    assert "estimated" in second.output and "denoise" in second.output


def test_plan_calibrates_with_one_case_per_pipeline_variant(tmp_path, control_png, engine, monkeypatch):
    monkeypatch.setattr("parity.engine.Engine", lambda *args, **kwargs: engine)
    cases, out = _cases(tmp_path, control_png), tmp_path / "run"
    result = _cli("plan", cases, "--out", out, "--calibrate")
    assert result.exit_code == 0, result.output
    assert "calibrating: 1 case(s)" in result.output and "estimated" in result.output
    assert "1 done already" in result.output


def test_k_narrows_run_report_and_check(tmp_path, control_png, engine, monkeypatch):
    monkeypatch.setattr("parity.engine.Engine", lambda *args, **kwargs: engine)
    cases, out = _cases(tmp_path, control_png), tmp_path / "run"
    run = _cli("run", cases, "--out", out, "-k", "not b", "--no-progress")
    assert run.exit_code == 0 and "3 cases from" in run.output
    report = _cli("report", out, "-k", "guidance")
    assert "cases: 1 (1 ok, 0 error)" in report.output
    assert _cli("check", out, "-k", "zzz").exit_code == 2
    assert "matches none" in _cli("run", cases, "--out", out, "-k", "zzz").output
