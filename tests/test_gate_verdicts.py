"""The gate on genuine AI Toolkit runs it must not get wrong, in either direction.

tests/data/aitk-png/tiny_fp32 is a run AI Toolkit's own trainer drew (../shared/tools/aitk-previews, the seeded
tiny model and LoRA sets A/B): float32, `format: png`, 96x96, two prompts, previews at steps 0, 10 and 20. Its
PNG previews are lossless, so no JPEG bound can catch a wrong setup: only the verdict and the LoRA yardstick can.
Each test here was a wrong answer of the absolute-threshold gate.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from parity.cli import main
from parity.results import latest_rows

DATA = Path(__file__).resolve().parent / "data"
PNG_RUN = DATA / "aitk-png" / "tiny_fp32"
ROOT = Path(__file__).resolve().parent.parent


def case_file(tmp_path: Path, variant: dict, run: Path = PNG_RUN, name: str = "cases.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"base": "embedded", "previews": {"runs": [str(run)]},
                                    "variants": [{"name": "v", "profile": "aitk-preview", **variant}]}))
    return path


def run_cli(*args) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def verdicts(out: Path) -> dict[str, str]:
    table = json.loads((out / "results.json").read_text())
    return {row["name"]: row.get("verdict") for row in table}


def test_png_previews_are_redrawn_as_png_and_pass(tmp_path):
    out = tmp_path / "run"
    code, output = run_cli("run", case_file(tmp_path, {}), "--out", out, "--no-progress")
    assert code == 0, output
    rows = latest_rows(out)
    assert len(rows) == 6 and all(r["output_format"] == "png" for r in rows)  # the preview's own format
    assert all(r["ssim"] >= 0.9999 for r in rows), [(r["name"], r["ssim"]) for r in rows]
    assert set(verdicts(out).values()) <= {"exact", "noise"}
    twins = [r for r in rows if r.get("lora_effect_mean_abs")]
    assert len(twins) == 4 and all(r["lora_gap_fraction"] < 0.1 for r in twins)
    assert "gate PASS: 6 pass" in output


@pytest.mark.parametrize("variant", [
    pytest.param({"train_steps": "last", "lora_scale": 0.8}, id="lora-scale-0.8"),
    pytest.param({"train_steps": "last", "set": {"loras": []}}, id="lora-missing"),
    pytest.param({"set": {"guidance": 3.5}}, id="guidance-3.5-not-4"),
    pytest.param({"set": {"steps": 7}}, id="7-steps-not-8"),
    pytest.param({"set": {"control_resize": "nearest"}}, id="nearest-not-bilinear"),
    pytest.param({"set": {"seed": 0}}, id="seed-0-everywhere"),
])
def test_a_wrong_setup_is_a_mismatch_and_exits_1(tmp_path, variant):
    out = tmp_path / "run"
    code, output = run_cli("run", case_file(tmp_path, variant), "--out", out, "--no-progress")
    assert code == 1, output
    judged = verdicts(out)
    assert "mismatch" in judged.values() and "gate FAIL" in output
    if "lora_scale" in variant or "set" in variant and variant["set"].get("loras") == []:
        rows = latest_rows(out)
        assert all(judged[r["name"]] == "mismatch" for r in rows), judged  # every final-checkpoint preview
        assert all(r["lora_gap_fraction"] > 0.1 for r in rows)


def test_a_missing_lora_is_about_all_of_the_loras_effect(tmp_path):
    out = tmp_path / "run"
    run_cli("run", case_file(tmp_path, {"train_steps": "last", "set": {"loras": []}}), "--out", out, "--no-progress")
    for row in latest_rows(out):
        assert row["lora_gap_fraction"] == pytest.approx(1.0, abs=0.05)  # the output is the step-0 preview's image


def jpeg_run(tmp_path: Path, sidecars: Path, demo_runs: Path, quality: int) -> Path:
    """tiny_bf16 as AI Toolkit would have saved it at another JPEG quality: its exact pre-JPEG pixels re-encoded."""
    run = tmp_path / "tiny_bf16"
    shutil.copytree(demo_runs / "tiny_bf16", run, ignore=shutil.ignore_patterns(".thumbs", "optimizer.pt"))
    for preview in (run / "samples").glob("*.jpg"):
        raw = Image.open(sidecars / "tiny_bf16" / f"{preview.stem}.raw.png")
        buffer = io.BytesIO()
        raw.save(buffer, format="JPEG", quality=quality)
        preview.write_bytes(buffer.getvalue())
    return run


def test_a_jpeg_run_at_another_quality_is_redrawn_at_that_quality(tmp_path, sidecars, demo_runs):
    run = jpeg_run(tmp_path, sidecars, demo_runs, quality=90)
    out = tmp_path / "out"
    code, output = run_cli("run", case_file(tmp_path, {}, run=run), "--out", out, "--no-progress")
    assert code == 0, output
    rows = latest_rows(out)
    assert {(r["output_format"], r["output_quality"], r["preview_jpeg_quality"]) for r in rows} == {("jpeg", 90, 90)}
    assert set(verdicts(out).values()) <= {"exact", "noise"}


def test_an_incomplete_run_is_an_error_not_a_pass(tmp_path):
    out = tmp_path / "run"
    assert run_cli("run", case_file(tmp_path, {}), "--out", out, "--no-progress")[0] == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(lines[:2]) + "\n")  # rows for 2 of 6 planned cases
    code, output = run_cli("check", out)
    assert code == 2, output
    assert "gate ERROR" in output and output.count("missing") >= 4


def test_a_case_that_raises_gets_an_error_row_and_the_run_goes_on(tmp_path, monkeypatch):
    """An out-of-memory (the outside world, simulated) must not leave a hole in the results."""
    import torch

    from parity.engine import Engine

    real_run = Engine.run

    def run(self, case):
        if case.name.endswith("step10/p1/v"):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_run(self, case)

    monkeypatch.setattr(Engine, "run", run)
    out = tmp_path / "run"
    code, output = run_cli("run", case_file(tmp_path, {}), "--out", out, "--no-progress")
    assert code == 2, output
    rows = {r["name"]: r for r in latest_rows(out)}
    assert len(rows) == 6  # the other five ran
    crashed = rows["tiny_fp32/step10/p1/v"]
    assert crashed["status"] == "error" and crashed["error_type"] == "OutOfMemoryError"
    assert "out of memory" in crashed["error"] and crashed["error_where"]
    assert "OutOfMemoryError" in output


def test_nothing_gated_is_an_error(tmp_path):
    out = tmp_path / "run"
    code, output = run_cli("run", case_file(tmp_path, {"gated": False}), "--out", out, "--no-progress")
    assert code == 2 and "nothing was verified" in output
    assert run_cli("check", out)[0] == 2
    assert run_cli("run", case_file(tmp_path, {"gated": False}), "--out", out, "--no-gate", "--no-progress")[0] == 0


def test_no_gate_explores_without_failing(tmp_path):
    out = tmp_path / "run"
    code, output = run_cli("run", case_file(tmp_path, {"set": {"seed": 0}}), "--out", out, "--no-gate",
                           "--no-progress")
    assert code == 0 and "gate FAIL" in output


def test_make_parity_exits_with_the_verdict(tmp_path):
    """`make parity` is what users and CI run: its exit status must be the gate's."""
    cases = case_file(tmp_path, {"train_steps": "last", "lora_scale": 0.8})
    env = {**os.environ, "MAKEFLAGS": ""}
    done = subprocess.run(["make", "-s", "-C", str(ROOT), "parity", f"CASES={cases}", f"OUT={tmp_path / 'out'}"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode != 0, done.stdout + done.stderr
    assert "gate FAIL" in done.stdout


def test_hardware_fingerprint_in_run_info_rows_and_report(tmp_path):
    out = tmp_path / "run"
    run_cli("run", case_file(tmp_path, {"train_steps": "first"}), "--out", out, "--no-progress")
    info = json.loads((out / "run_info.json").read_text())["hardware"]
    assert info["cpu"] and "torch_cpu_capability" in info and info["versions"]["torch"]
    assert info["threads"] >= 1 and len(info["hardware_id"]) == 12
    for row in latest_rows(out):
        assert row["hardware_id"] == info["hardware_id"] and row["hw_torch_cpu_capability"]
    assert info["cpu"] in (out / "report.html").read_text()


def test_calibrate_writes_thresholds_that_pass_the_run_and_catch_drift(tmp_path):
    good = tmp_path / "good"
    assert run_cli("run", case_file(tmp_path, {}), "--out", good, "--no-progress")[0] == 0
    thresholds = tmp_path / "calibrated.yaml"
    code, output = run_cli("calibrate", good, "--out", thresholds)
    assert code == 0, output
    data = yaml.safe_load(thresholds.read_text())
    assert data["profiles"]["aitk-preview"]["verdicts"][0] == "exact"
    assert "tiny_fp32/*/v" in data["cases"]
    assert run_cli("check", good, "--thresholds", thresholds)[0] == 0
    drifted = tmp_path / "drifted"
    run_cli("run", case_file(tmp_path, {"set": {"guidance": 3.5}}), "--out", drifted, "--no-progress")
    assert run_cli("check", drifted, "--thresholds", thresholds)[0] == 1


def test_calibrate_margin_loosens_the_bounds(tmp_path):
    good = tmp_path / "good"
    run_cli("run", case_file(tmp_path, {"set": {"guidance": 3.9}}), "--out", good, "--no-progress", "--no-gate")
    tight = yaml.safe_load(run_cli("calibrate", good, "--margin", "0")[1])
    loose = yaml.safe_load(run_cli("calibrate", good, "--margin", "0.5")[1])
    t, lo = tight["profiles"]["aitk-preview"], loose["profiles"]["aitk-preview"]
    assert lo["mean_abs_max"] > t["mean_abs_max"] and lo["ssim_min"] < t["ssim_min"]
    assert t["lpips_max"] >= max(r["lpips"] for r in latest_rows(good))


@pytest.mark.parametrize("run", [PNG_RUN, ROOT / "tests" / "data" / "tiny-runs" / "tiny_bf16",
                                 ROOT / "tests" / "data" / "tiny-runs" / "tiny_odd"], ids=lambda p: p.name)
def test_the_aitk_preview_profile_overrides_nothing_a_preview_says(tmp_path, run):
    """Field by field, the case a plan runs is the case the import read off the preview and its config."""
    from parity.aitk import load_run, preview_cases
    from parity.plan import load_plan

    imported = {c.name: c for c in preview_cases(load_run(run))}
    planned = load_plan(case_file(tmp_path, {}, run=run)).cases
    assert len(planned) == len(imported)
    for case in planned:
        ours, theirs = case.to_dict(), imported[case.name.rsplit("/", 1)[0]].to_dict()
        for skip in ("name", "tags"):
            ours.pop(skip), theirs.pop(skip)
        assert ours == theirs, {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
