"""The gate: threshold precedence, validation, what counts as a failure, and `parity check` exit codes."""
from __future__ import annotations

import math

import pytest
from click.testing import CliRunner
from test_report import make_run, row

from parity.cli import main
from parity.errors import ParityError
from parity.gate import DEFAULT_THRESHOLDS, check, judge, load_thresholds


def _thresholds(tmp_path, text: str):
    path = tmp_path / "thresholds.yaml"
    path.write_text(text)
    return load_thresholds(path)


PRECEDENCE = """
defaults: {lpips_max: 0.1, ssim_min: 0.9, latency_max_s: 10}
profiles:
  fast: {lpips_max: 0.2, latency_max_s: 1}
cases:
  "run/*": {lpips_max: 0.3}
  "run/*[guidance=2.5]": {lpips_max: 0.4}
  "run/p0[guidance=2.5]": {lpips_max: 0.5, ssim_min: null}
"""


def test_more_specific_level_wins_key_by_key(tmp_path):
    limits = _thresholds(tmp_path, PRECEDENCE)
    assert limits.for_row({"name": "other"}) == {"lpips_max": 0.1, "ssim_min": 0.9, "latency_max_s": 10}
    assert limits.for_row({"name": "other", "tag_profile": "fast"}) == {"lpips_max": 0.2, "ssim_min": 0.9,
                                                                         "latency_max_s": 1}
    assert limits.for_row({"name": "run/p1", "tag_profile": "fast"})["lpips_max"] == 0.3  # case beats profile
    assert limits.for_row({"name": "run/p1[guidance=2.5]"})["lpips_max"] == 0.4  # later glob; brackets literal
    exact = limits.for_row({"name": "run/p0[guidance=2.5]", "tag_profile": "fast"})
    assert exact == {"lpips_max": 0.5, "latency_max_s": 1}  # exact name last; null removes ssim_min


@pytest.mark.parametrize("text, message", [
    ("defaults: {ssim_mn: 0.9}", 'unknown bound "ssim_mn" (did you mean "ssim_min"?)'),
    ("profiles: {fast: {latency_max: 3}}",
     'profiles.fast: unknown bound "latency_max" (did you mean "latency_max_s"?)'),
    ("default: {ssim_min: 0.9}", 'unknown top-level key "default" (did you mean "defaults"?)'),
    ("defaults: {ssim_min: high}", "ssim_min must be a number or null"),
    ("defaults: {ssim_min: true}", "ssim_min must be a number or null"),
    ("cases: [a, b]", "cases: must map names to bounds"),
    ("defaults: [", "malformed YAML"),
    ("- 1", "a thresholds file is a mapping"),
])
def test_bad_thresholds_name_the_problem(tmp_path, text, message):
    with pytest.raises(ParityError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        _thresholds(tmp_path, text)


def test_shipped_defaults_gate_on_the_verdict_and_the_loras_effect():
    limits = load_thresholds()
    assert limits.source == str(DEFAULT_THRESHOLDS)
    assert limits.defaults["verdicts"] == ["exact", "noise"] and limits.defaults["lora_gap_fraction_max"] == 0.1
    assert not {"lpips_max", "floor_lpips_max"} & set(limits.defaults)  # absolute bounds are the user's choice


def test_metric_failures_nan_and_infinite_psnr():
    bounds = {"lpips_max": 0.1, "psnr_min": 30, "floor_ssim_min": 0.95}
    assert judge(row("ok", psnr="inf"), bounds) == []  # identical pixels: PSNR is "inf" in JSON
    (violation,) = judge(row("bad", lpips=0.25), bounds)
    assert (violation.case, violation.metric, violation.value, violation.threshold, violation.rule) == \
        ("bad", "lpips", 0.25, "<= 0.1", "lpips_max")
    nan = judge(row("nan", ssim="nan"), {})  # NaN fails even with no bound on it
    assert [(v.metric, v.threshold) for v in nan] == [("ssim", "a number")] and math.isnan(nan[0].value)
    png_preview = row("png", preview_file="/x.png")
    for key in [k for k in png_preview if k.startswith("floor_")]:
        del png_preview[key]
    assert judge(png_preview, bounds) == []  # no floor_* for a PNG preview: that bound does not apply


def test_rows_without_preview_are_gated_on_latency_only():
    bounds = {"lpips_max": 0.01, "latency_max_s": 1.0}
    assert judge(row("slow", preview=False, time_total_s=0.5), bounds) == []
    (violation,) = judge(row("slow", preview=False, time_total_s=3.0), bounds)
    assert violation.metric == "time_total_s" and violation.rule == "latency_max_s"
    unmeasured = row("unmeasured", preview=False, preview_file="/p.jpg", time_total_s=0.5)  # run with --no-metrics
    assert [v.metric for v in judge(unmeasured, bounds)] == ["metrics"]


def test_ungated_rows_are_not_judged_but_error_rows_always_fail(tmp_path):
    limits = _thresholds(tmp_path, "defaults: {lpips_max: 0.1}")
    rows = [row("good"), row("ablation", lpips=0.9, gated=False),
            {"name": "crashed", "status": "error", "error": "out of\nmemory", "gated": False}]
    result = check(rows, limits)
    assert [v.status for v in result.cases] == ["pass", "ungated", "error"]
    assert not result.passed and result.exit_code == 2 and result.violations[0].value == "error: out of memory"
    assert check(rows[:2], limits).passed


def test_unused_profiles_and_patterns_are_noted(tmp_path):
    limits = _thresholds(tmp_path, "profiles: {aitk-preveiw: {lpips_max: 0.1}}\ncases: {'nothing/*': {}}")
    notes = check([row("a/b", tag_profile="aitk-preview")], limits).notes
    assert any('"aitk-preveiw" matches no case (did you mean "aitk-preview"?)' in n for n in notes)
    assert any('"nothing/*" matches no case' in n for n in notes)


# --- parity check ------------------------------------------------------------------------------
def _check(*args):
    return CliRunner().invoke(main, ["check", *map(str, args)])


def test_check_exits_0_when_every_gated_case_passes(tmp_path):
    run = make_run(tmp_path, [row("a"), row("b", lpips=0.9, gated=False)])
    result = _check(run)
    assert result.exit_code == 0, result.output
    assert "gate PASS: 1 pass, 0 fail, 0 error, 1 not gated" in result.output


def test_check_exits_1_and_prints_violations(tmp_path):
    run = make_run(tmp_path, [row("a"), row("b", lpips=0.3)])
    thresholds = tmp_path / "t.yaml"
    thresholds.write_text("defaults: {lpips_max: 0.1}\n")
    result = _check(run, "--thresholds", thresholds)
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["case", "metric", "value", "threshold"]
    assert lines[1].split() == ["b", "lpips", "0.3", "<=", "0.1", "(lpips_max)"]
    assert "gate FAIL: 1 pass, 1 fail" in result.output


def test_check_exits_2_on_an_error_row(tmp_path):
    run = make_run(tmp_path, [row("a"), {"name": "c", "status": "error", "error": "LoRA not found", "gated": True}])
    result = _check(run)
    assert result.exit_code == 2 and "error: LoRA not found" in result.output and "gate ERROR" in result.output


@pytest.mark.parametrize("damage", ["missing", "corrupt", "empty", "bad-thresholds", "missing-thresholds"])
def test_check_exits_2_on_unreadable_input(tmp_path, damage):
    run = make_run(tmp_path, [row("a")])
    args = [run]
    if damage == "missing":
        args = [tmp_path / "nowhere"]
    elif damage == "corrupt":
        (run / "results.jsonl").write_text("{not json\n" + (run / "results.jsonl").read_text())
    elif damage == "empty":
        (run / "results.jsonl").write_text("")
    elif damage == "bad-thresholds":
        (tmp_path / "t.yaml").write_text("defaults: {lpips_maxx: 0.1}\n")
        args += ["--thresholds", tmp_path / "t.yaml"]
    else:
        args += ["--thresholds", tmp_path / "absent.yaml"]
    result = _check(*args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ")
    assert not (tmp_path / "nowhere").exists()  # checking never creates a folder


# --- verdicts, completeness, nothing checked ------------------------------------------------------
def test_verdicts_and_noise_k_are_keys_of_every_level(tmp_path):
    limits = _thresholds(tmp_path, "defaults: {verdicts: [exact, noise]}\n"
                                   "profiles: {fal: {verdicts: [exact, noise, mismatch], noise_k: 3}}")
    assert limits.for_row({"name": "a"}) == {"verdicts": ["exact", "noise"]}
    assert limits.noise_k({"name": "a"}) == 2.0 and limits.noise_k({"name": "a", "tag_profile": "fal"}) == 3.0
    mismatch = row("m", floor_mean_abs=5.0, floor_max_abs=80.0)
    assert check([mismatch], limits).exit_code == 1
    assert check([{**mismatch, "tag_profile": "fal"}], limits).exit_code == 0


@pytest.mark.parametrize("text, message", [
    ("defaults: {verdicts: [exact, close]}", 'verdicts must be one of exact, noise, mismatch, not "close"'),
    ("defaults: {verdicts: exact}", "verdicts must be a list"),
    ("defaults: {noise_k: -1}", "noise_k must be a number >= 0, not -1"),
    ("defaults: {verdict: [exact]}", 'unknown bound "verdict" (did you mean "verdicts"?)'),
])
def test_bad_verdict_keys_name_the_problem(tmp_path, text, message):
    with pytest.raises(ParityError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        _thresholds(tmp_path, text)


def test_a_planned_gated_case_without_a_row_is_an_error(tmp_path):
    limits = _thresholds(tmp_path, "defaults: {}")
    planned = [{"name": "a", "gated": True}, {"name": "b", "gated": True}, {"name": "c", "gated": False}]
    result = check([row("a")], limits, planned)
    assert result.exit_code == 2 and result.count("error") == 1
    assert [c.row["name"] for c in result.cases if c.status == "error"] == ["b"]
    assert any("1 ungated case(s) of the plan have no result row" in n for n in result.notes)
    assert check([row("a"), row("b")], limits, planned).exit_code == 0


def test_nothing_checked_is_not_a_pass(tmp_path):
    limits = load_thresholds()
    no_preview = check([row("a", preview=False)], limits, [{"name": "a", "gated": True}])
    assert no_preview.exit_code == 2 and "nothing was checked" in no_preview.headline()
    ungated = check([row("a", gated=False)], limits, [{"name": "a", "gated": False}])
    assert ungated.exit_code == 2
