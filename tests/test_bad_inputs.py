"""Bad input through the real CLI: exit code 2, one line naming the file and the problem, no traceback,
nothing computed before it lost, and a rerun after the fix resumes. Inputs that are odd but usable
(image modes, long prompts, flags AI Toolkit ignores) run as AI Toolkit would and say so.

Runs share the session's tiny engine (parity.engine.Engine is patched to return it) and draw 64x64
images in 2 steps; most bad inputs fail in plan validation or check_inputs, before any model work.
"""
from __future__ import annotations

import errno
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner, Result
from PIL import Image
from safetensors.torch import save_file

import parity.results
from parity.cli import main

ROOT = Path(__file__).resolve().parent.parent
GOOD_LORA = "tiny_odd/tiny_odd_000000010.safetensors"  # an AI Toolkit LoRA of the tiny model


@pytest.fixture(autouse=True)
def shared_engine(monkeypatch, engine):
    """Every `parity run` here uses the session's loaded engine instead of loading the model again."""
    monkeypatch.setattr("parity.engine.Engine", lambda *args, **kwargs: engine)


@pytest.fixture()
def control(tmp_path) -> Path:
    path = tmp_path / "control.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)
    return path


def cli(*args) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def run(cases: Path, out: Path, *extra) -> Result:
    """Previews here are stand-ins, not reproductions: the verdicts do not decide the exit code (--no-gate)."""
    return cli("run", cases, "--out", out, "--no-report", "--no-progress", "--no-gate", *extra)


def fails(result: Result, *says: str) -> str:
    """Exit 2, no traceback, and exactly one `error: <file>: <problem>` line saying all of ``says``."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for text in says:
        assert text in errors[0], errors[0]
    return errors[0]


def succeeds(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.stderr


def case_file(tmp_path: Path, cases: list[dict], control: Path | None = None) -> Path:
    defaults = {"prompt": "make it red", "width": 64, "height": 64, "max_area": None, "steps": 2,
                "control_auto_resize": False}
    if control is not None:
        defaults["control_image"] = str(control)
    path = tmp_path / "cases.yaml"
    path.write_text(yaml.safe_dump({"defaults": defaults, "cases": cases}))
    return path


def ok_rows(out: Path) -> dict[str, dict]:
    return {r["name"]: r for r in parity.results.read_rows(out) if r["status"] == "ok"}


GOOD = [{"name": "ok1"}, {"name": "ok2", "seed": 1}]  # the cases finished before the bad one


def assert_kept(out: Path) -> None:
    """The finished cases' rows and files are all still there."""
    rows = ok_rows(out)
    assert {"ok1", "ok2"} <= set(rows), rows.keys()
    for name in ("ok1", "ok2"):
        assert (out / rows[name]["output_file"]).is_file()


def assert_resumes(cases: Path, out: Path) -> None:
    """After the fix, the same command picks up the two finished cases and computes only the third."""
    stderr = succeeds(run(cases, out))
    assert "computed 1, resumed 2" in stderr, stderr


def good_then_bad(tmp_path: Path, control: Path, bad: dict) -> tuple[Path, Path, Result]:
    """Two cases finished, then the plan gains a third with a bad input: (case file, run folder, result)."""
    out = tmp_path / "run"
    succeeds(run(case_file(tmp_path, GOOD, control), out))
    cases = case_file(tmp_path, GOOD + [{"name": "bad", **bad}], control)
    return cases, out, run(cases, out)


# --- the case file --------------------------------------------------------------------------------------------

def test_missing_case_file(tmp_path):
    fails(cli("run", tmp_path / "nope.yaml"), "nope.yaml: case file not found")


def test_folder_as_case_file(tmp_path):
    fails(cli("run", tmp_path), f"{tmp_path}: is a folder; give the case file itself")


def test_malformed_case_file(tmp_path):
    path = tmp_path / "cases.yaml"
    path.write_text("cases:\n  - name: a\n    prompt: [unclosed\n")
    line = fails(cli("run", path), "cases.yaml: malformed YAML at line 4, column 1:")
    assert "while parsing a flow sequence" in line


def test_case_file_that_is_a_list(tmp_path):
    path = tmp_path / "cases.yaml"
    path.write_text("- name: a\n- name: b\n")
    fails(cli("run", path), "cases.yaml: a case file is a mapping with base, previews, defaults, cases, variants, "
                            "description, not a list")


def test_case_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "cases.yaml"
    path.write_bytes(b"cases:\n  - name: caf\xe9\n")
    fails(cli("run", path), "cases.yaml: not a UTF-8 text file")


@pytest.mark.parametrize("spec, says", [
    ({"casse": []}, 'unknown top-level key "casse" (did you mean "cases"?)'),
    ({"cases": [{"name": "a", "promtp": "x"}]}, 'case "a": unknown key "promtp" (did you mean "prompt"?)'),
    ({"cases": [{"name": "a", "control_fit": "strech"}]},
     'control_fit must be one of stretch, crop, crop_then_resize, fit, not "strech" (did you mean "stretch"?)'),
    ({"cases": [{"name": "a", "profile": "aitk-preveiw"}]},
     'unknown profile "aitk-preveiw" (did you mean "aitk-preview"?)'),
    ({"cases": [{"name": "a", "loras": [{"path": "x.safetensors", "mode": "fussed"}]}]},
     'case "a", loras[0]: mode must be one of dynamic, fused, merged_fp32, branch, patched_fp32, not "fussed" '
     '(did you mean "fused"?)'),
], ids=["top-level key", "case key", "knob value", "profile", "lora mode"])
def test_unknown_names_get_a_did_you_mean(tmp_path, spec, says):
    path = tmp_path / "cases.yaml"
    path.write_text(yaml.safe_dump(spec))
    fails(cli("run", path), "cases.yaml: ", says)


@pytest.mark.parametrize("side, size", [("width", 0), ("height", -64), ("width", 100000)])
def test_absurd_sizes_in_a_case_file(tmp_path, side, size):
    fails(cli("run", case_file(tmp_path, [{"name": "a", side: size}])),
          f'cases.yaml: case "a": {side} must be an integer in [16, 16384], not {size}')


# --- thresholds and run folders --------------------------------------------------------------------------------

def test_malformed_thresholds_file(tmp_path):
    path = tmp_path / "limits.yaml"
    path.write_text("defaults: {lpips_max: 0.1\n")
    fails(cli("check", tmp_path, "--thresholds", path), "limits.yaml: malformed YAML at line 2, column 1:")


def test_unknown_threshold_gets_a_did_you_mean(tmp_path):
    path = tmp_path / "limits.yaml"
    path.write_text("defaults: {lpips_mx: 0.1}\n")
    fails(cli("check", tmp_path, "--thresholds", path),
          'limits.yaml: defaults: unknown bound "lpips_mx" (did you mean "lpips_max"?)')


def test_check_on_a_folder_without_results(tmp_path):
    fails(cli("check", tmp_path), f"{tmp_path}: no results.jsonl: not a run folder")


def test_report_on_results_with_a_corrupt_line(tmp_path, control):
    out = tmp_path / "run"
    succeeds(run(case_file(tmp_path, GOOD, control), out))
    rows = out / "results.jsonl"
    rows.write_text(rows.read_text() + "garbage\n" + rows.read_text().splitlines()[0] + "\n")
    fails(cli("report", out), "results.jsonl: line 3 is not a JSON results row")


# --- control images and previews ------------------------------------------------------------------------------

def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims width x height (PIL refuses it before allocating anything)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b""))
                     + chunk(b"IEND", b""))
    return path


def _bad_image(kind: str, folder: Path, control: Path) -> tuple[Path, str]:
    """(a bad image file, what the error says about it)."""
    jpeg = folder / "whole.jpg"
    Image.open(control).save(jpeg, quality=90)
    if kind == "missing":
        return folder / "gone.jpg", "not found"
    path = folder / f"{kind}.{'png' if kind == 'truncated png' else 'jpg'}".replace(" ", "_")
    if kind == "empty":
        path.write_bytes(b"")
        return path, "is empty (0 bytes)"
    if kind == "truncated jpeg":
        path.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
        return path, "cannot be decoded (truncated or corrupt?): image file is truncated"
    if kind == "truncated png":
        path.write_bytes(control.read_bytes()[: control.stat().st_size // 2])
        return path, "cannot be decoded (truncated or corrupt?)"
    if kind == "corrupt":
        path.write_bytes(np.random.default_rng(1).bytes(4000))
        return path, "is not an image PIL can read"
    if kind == "decompression bomb":
        return _png_claiming(folder / "bomb.png", 30000, 30000), "refused as a decompression bomb"
    raise AssertionError(kind)


BAD_IMAGES = ["missing", "empty", "truncated jpeg", "truncated png", "corrupt", "decompression bomb"]


@pytest.mark.parametrize("field, what", [("preview", "preview"), ("control_image", "control image")])
@pytest.mark.parametrize("kind", BAD_IMAGES)
def test_bad_image_keeps_finished_cases(tmp_path, control, kind, field, what):
    path, says = _bad_image(kind, tmp_path, control)
    cases, out, result = good_then_bad(tmp_path, control, {field: str(path)})
    fails(result, f'{path}: case "bad": {what} {says}')
    assert_kept(out)
    shutil.copy(control, path)  # the fix: a readable image at the same place
    assert_resumes(cases, out)


def test_preview_that_breaks_during_the_run_keeps_finished_cases(tmp_path, control, monkeypatch):
    """A preview rewritten after the up-front check (a sync tool, a second job) fails in the comparison."""
    path, _ = _bad_image("truncated jpeg", tmp_path, control)
    monkeypatch.setattr("parity.runner.check_inputs", lambda cases: None)  # the file was fine when checked
    cases = case_file(tmp_path, GOOD + [{"name": "bad", "preview": str(path)}], control)
    out = tmp_path / "run"
    fails(run(cases, out), f'{path}: case "bad": preview cannot be decoded (truncated or corrupt?)')
    assert_kept(out)
    assert [r["name"] for r in parity.results.read_rows(out) if r["status"] == "error"] == ["bad"]
    shutil.copy(control, path)
    assert_resumes(cases, out)


def test_image_over_twice_the_pixel_limit_is_refused(tmp_path, control, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 48 // 3)  # the 64x48 control is 3x over
    fails(run(case_file(tmp_path, [{"name": "a"}], control), tmp_path / "run"),
          f'{control}: case "a": control image refused as a decompression bomb')


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # the 64x64 output is over it too
def test_image_over_the_pixel_limit_is_used_and_said(tmp_path, monkeypatch):
    control = tmp_path / "big.png"  # bytes of its own: the engine caches encoded controls by content
    Image.fromarray(np.random.default_rng(7).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(control)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 48 - 1)  # over PIL's warning limit, under twice it
    stderr = succeeds(run(case_file(tmp_path, [{"name": "a"}], control), tmp_path / "run"))
    assert ('warning: case "a": control image: 64x48 is 3072 pixels, above PIL\'s decompression-bomb warning '
            "limit of 3071; decoded anyway") in stderr


@pytest.mark.parametrize("auto_resize", [False, True])
def test_control_image_under_16_px(tmp_path, auto_resize):
    """diffusers floors each side to 16 px: nothing would be left (PIL and a division by zero used to crash)."""
    thin = tmp_path / "thin.png"
    Image.new("RGB", (40, 10)).save(thin)
    fails(run(case_file(tmp_path, [{"name": "a", "control_auto_resize": auto_resize}], thin), tmp_path / "run"),
          'case "a": control image 40x10 is smaller than 16 px after loading')


# --- image modes: converted as AI Toolkit converts them (convert("RGB"), no EXIF transpose), and said ----------

def _mode_images(folder: Path) -> dict[str, tuple[Path, str, str]]:
    """name -> (file, the mode PIL opens it in, what its warning says)."""
    rng = np.random.default_rng(3)
    rgb = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    alpha = Image.fromarray(np.where(np.arange(64) < 32, 0, 255).astype(np.uint8)[None].repeat(48, 0))
    images = {}
    rgba = rgb.copy()
    rgba.putalpha(alpha)
    rgba.save(folder / "rgba.png")
    images["RGBA"] = (folder / "rgba.png", "RGBA", "mode RGBA with transparent pixels: convert(\"RGB\") drops")
    la = rgb.convert("L")
    la.putalpha(alpha)
    la.save(folder / "la.png")
    images["LA"] = (folder / "la.png", "LA", "mode LA with transparent pixels")
    rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(folder / "p.png", transparency=0)
    images["P"] = (folder / "p.png", "P", "mode P with transparent pixels")
    rgb.convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    images["CMYK"] = (folder / "cmyk.jpg", "CMYK", "mode CMYK: convert(\"RGB\") uses PIL's plain formula")
    deep = (np.asarray(rgb.convert("L")).astype(np.uint16) * 257)  # 16-bit grey spanning 0-65535
    Image.fromarray(deep).save(folder / "i16.png")
    images["I;16"] = (folder / "i16.png", "I;16", "clips values to 0-255 instead of scaling them")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    rgb.save(folder / "exif.jpg", exif=exif, quality=95)
    images["EXIF"] = (folder / "exif.jpg", "RGB", "EXIF orientation 6 ignored: the pixels are used as stored")
    return images


@pytest.fixture(scope="module")
def modes_run(tmp_path_factory, engine):
    """One run: each odd image once as a control image and once as a preview."""
    folder = tmp_path_factory.mktemp("modes")
    images = _mode_images(folder)
    plain = folder / "plain.png"
    Image.fromarray(np.full((48, 64, 3), 128, np.uint8)).save(plain)
    cases = [{"name": f"control {name}", "control_image": str(path)} for name, (path, _, _) in images.items()]
    cases += [{"name": f"preview {name}", "preview": str(path)} for name, (path, _, _) in images.items()]
    out = folder / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("parity.engine.Engine", lambda *args, **kwargs: engine)
        result = run(case_file(folder, cases, plain), out)
    return images, succeeds(result), ok_rows(out), out


@pytest.mark.parametrize("name", ["RGBA", "LA", "P", "CMYK", "I;16", "EXIF"])
def test_control_image_mode_is_converted_as_aitk_does_and_said(modes_run, name):
    images, stderr, rows, out = modes_run
    path, mode, says = images[name]
    row = rows[f"control {name}"]
    assert row["eff_control_mode"] == mode
    assert f'warning: case "control {name}": control image: ' in stderr and says in stderr
    assert any(says in w and w.endswith("as AI Toolkit does") for w in row["warnings"]), row["warnings"]
    with Image.open(path) as original, Image.open(out / row["control_file"]) as handed:
        aitk = original.convert("RGB")  # AI Toolkit: Image.open(ctrl_img).convert("RGB"), nothing else
        assert handed.size == aitk.size == (64, 48)  # EXIF orientation 6 would make it 48x64
        assert np.array_equal(np.asarray(handed), np.asarray(aitk))
    if name == "I;16":  # explicit: values above 255 saturate instead of being scaled down
        deep = np.asarray(Image.open(path)).astype(np.int64)
        assert np.array_equal(np.asarray(aitk)[..., 0], np.clip(deep, 0, 255))
        assert "of pixels lie outside 0-255 and saturate" in stderr


@pytest.mark.parametrize("name", ["RGBA", "LA", "P", "CMYK", "I;16", "EXIF"])
def test_preview_mode_is_converted_to_rgb_and_said(modes_run, name):
    images, stderr, rows, _ = modes_run
    _, mode, says = images[name]
    row = rows[f"preview {name}"]
    assert row["preview_mode"] == mode and 0 <= row["ssim"] <= 1 and row["preview_size"] == [64, 48]
    assert f'warning: case "preview {name}": preview: ' in stderr
    assert any(w.startswith("preview: ") and says in w for w in row["warnings"]), row["warnings"]


# --- prompts --------------------------------------------------------------------------------------------------

def test_prompt_beyond_t5s_512_tokens_runs_and_says_what_was_dropped(tmp_path, control):
    prompt = "make it red " * 180 + "and then the dog blue"  # 3 tokens a repeat in the tiny T5 vocabulary
    out = tmp_path / "run"
    stderr = succeeds(run(case_file(tmp_path, [{"name": "long", "prompt": prompt}], control), out))
    warning = next(line for line in stderr.splitlines() if line.startswith('warning: case "long": '))
    assert "prompt longer than T5's 512 tokens: its end was dropped" in warning and "dog blue" in warning
    row = ok_rows(out)["long"]
    assert row["eff_prompt_truncated"].endswith("and then the dog blue")
    assert row["warnings"] == [warning.removeprefix('warning: case "long": ')]


# --- AI Toolkit runs: config, prompt flags, controls, checkpoints ------------------------------------------------

@pytest.fixture()
def aitk_run(tmp_path, demo_runs) -> Path:
    """A copy of the genuine tiny_odd run (its config resolves control images from the copy's parent)."""
    runs = tmp_path / "runs"
    shutil.copytree(demo_runs / "tiny_odd", runs / "tiny_odd")
    return runs / "tiny_odd"


def previews_file(tmp_path: Path, run_dir: Path, steps=(0,)) -> Path:
    path = tmp_path / "previews.yaml"
    path.write_text(yaml.safe_dump({"previews": {"runs": [str(run_dir)], "train_steps": list(steps)},
                                    "variants": [{"name": "quick", "steps": 2}]}))
    return path


def edit_config(run_dir: Path, old: str, new: str) -> Path:
    config = run_dir / "config.yaml"
    text = config.read_text()
    assert old in text
    config.write_text(text.replace(old, new))
    return config


@pytest.mark.parametrize("old, new, says", [
    ("--w 202", "--w abc", "sample prompt 1: --w needs an integer, not 'abc' (AI Toolkit fails on this prompt)"),
    ("--h 150", "--h 1.5e2", "sample prompt 1: --h needs an integer, not '1.5e2' (AI Toolkit fails on this prompt)"),
    ("--seed 1234", "--seed x", "sample prompt 1: --seed needs an integer, not 'x' (AI Toolkit fails on this prompt)"),
    ("--w 202", "--w 100000", 'case "tiny_odd/step0/p1": width must be an integer in [16, 16384], not 100000'),
], ids=["--w abc", "--h float", "--seed x", "--w 100000"])
def test_prompt_flag_aitk_would_crash_on(tmp_path, aitk_run, old, new, says):
    config = edit_config(aitk_run, old, new)
    fails(cli("run", previews_file(tmp_path, aitk_run)), f"{config}: {says}")


@pytest.mark.parametrize("old, new, says", [
    ("turn it blue --seed", "turn it blue --colour red --seed", "tiny_odd/step0/p1: unknown flag --colour ignored, "
                                                                 "as AI Toolkit does"),
    ("--w 202", "--w 0", "tiny_odd/step0/p1: width 0 is below 16 px: AI Toolkit samples at 64 (its 64 px floor)"),
    ("--h 150", "--h -50", "tiny_odd/step0/p1: height -50 is below 16 px: AI Toolkit samples at 64 (its 64 px floor)"),
], ids=["unknown flag", "--w 0", "--h negative"])
def test_prompt_flag_aitk_tolerates_runs_and_is_said(tmp_path, aitk_run, old, new, says):
    edit_config(aitk_run, old, new)
    stderr = succeeds(run(previews_file(tmp_path, aitk_run), tmp_path / "out", "--no-metrics"))
    assert f"note: {says}" in stderr.splitlines()
    assert "computed 4, resumed 0" in stderr


def test_missing_control_image_of_a_prompt(tmp_path, aitk_run):
    config = edit_config(aitk_run, "ctrl_img: tiny_odd/control/ctrl_wide_192x108.png",
                         "ctrl_img: tiny_odd/control/gone.png")
    fails(cli("run", previews_file(tmp_path, aitk_run)),
          f"{config}: prompt 2: control image 'tiny_odd/control/gone.png' not found (tried ",
          "pass ctrl_root=<folder holding the control images>")


def test_prompt_without_ctrl_img(tmp_path, aitk_run):
    config = edit_config(aitk_run, "        ctrl_img: tiny_odd/control/ctrl_wide_192x108.png\n", "")
    line = fails(cli("run", previews_file(tmp_path, aitk_run)),
                 f"{config}: prompt 2: no ctrl_img (AI Toolkit's Kontext sampler needs one)")
    assert "ctrl_root" not in line  # no folder can supply a file the config never names


def test_malformed_aitk_config(tmp_path, aitk_run):
    config = edit_config(aitk_run, "    sample:\n", "    sample: [\n")
    fails(cli("run", previews_file(tmp_path, aitk_run)), f"{config}: malformed YAML at line ")


def test_previews_without_checkpoint_are_an_error_naming_them(tmp_path, aitk_run):
    (aitk_run / "tiny_odd_000000010.safetensors").unlink()
    line = fails(cli("run", previews_file(tmp_path, aitk_run, steps=(0, 10))),
                 f"{aitk_run / 'samples'}: 4 preview(s) have no checkpoint: ", "(pass unpaired='skip'")
    assert re.search(r"\d+__000000010_0\.jpg: no checkpoint tiny_odd_000000010\.safetensors", line)


def test_previews_without_checkpoint_skipped_on_request_and_said(tmp_path, aitk_run):
    (aitk_run / "tiny_odd_000000010.safetensors").unlink()
    stderr = succeeds(run(previews_file(tmp_path, aitk_run, steps=(0, 10)), tmp_path / "out", "--unpaired", "skip",
                          "--no-metrics"))
    assert ("note: tiny_odd/step10/p0, tiny_odd/step10/p1, tiny_odd/step10/p2 and 1 more: not reproduced: "
            "unpaired: no checkpoint tiny_odd_000000010.safetensors") in stderr
    assert "computed 4, resumed 0" in stderr  # the step-0 previews


def test_samples_folder_without_config(tmp_path, aitk_run):
    samples = tmp_path / "copied-samples"
    shutil.copytree(aitk_run / "samples", samples)
    fails(cli("run", previews_file(tmp_path, aitk_run), "--previews", samples),
          f"{samples}: no job config at {tmp_path / 'config.yaml'}")


def test_previews_pointing_at_an_empty_folder(tmp_path, aitk_run):
    empty = tmp_path / "empty"
    empty.mkdir()
    fails(cli("run", previews_file(tmp_path, aitk_run), "--previews", empty),
          f"{empty}: holds neither samples/ nor preview files")


# --- LoRA files -----------------------------------------------------------------------------------------------

class _Payload:
    """Unpickling this creates a marker file: proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("name, says", [
    ("lora.pt", "LoRA is a pickle-based checkpoint; kontext-parity loads LoRAs only from .safetensors"),
    ("lora.safetensors", "LoRA is not a readable safetensors file (truncated or corrupt?)"),
], ids=["pt", "pickle named safetensors"])
def test_pickled_lora_is_never_loaded(tmp_path, control, name, says):
    marker = tmp_path / "unpickled"
    lora = tmp_path / name
    lora.write_bytes(pickle.dumps(_Payload(marker)))
    fails(run(case_file(tmp_path, [{"name": "a", "loras": [str(lora)]}], control), tmp_path / "run"),
          f'{lora}: case "a": {says}')
    assert not marker.exists()


def test_truncated_lora_fails_before_any_model_work(tmp_path, control, demo_runs, engine):
    lora = tmp_path / "cut.safetensors"
    whole = (demo_runs / GOOD_LORA).read_bytes()
    lora.write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "run"
    succeeds(run(case_file(tmp_path, GOOD, control), out))
    cases = case_file(tmp_path, GOOD + [{"name": "bad", "loras": [[str(lora), 1.0, "branch"]]}], control)
    calls = engine.counters["transformer_calls"]
    fails(run(cases, out), f'{lora}: case "bad": LoRA is not a readable safetensors file (truncated or corrupt?)')
    assert engine.counters["transformer_calls"] == calls
    assert_kept(out)
    lora.write_bytes(whole)
    assert_resumes(cases, out)


def _foreign_lora(kind: str, path: Path) -> tuple[Path, str]:
    if kind == "other architecture":  # FLUX.1-dev shapes, 3072 wide, on the tiny 32-wide model
        save_file({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 3072),
                   "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(3072, 4)}, str(path))
        return path, "does not fit Linear(32, 32)"
    if kind == "no matching keys":
        save_file({"text_model.encoder.layers.0.mlp.fc1.lora_A.weight": torch.zeros(4, 8)}, str(path))
        return path, "no key of this LoRA applies to the FLUX.1-Kontext transformer"
    # BFL names (ComfyUI's layout) load through diffusers' converter; FLUX.1-dev's fused qkv does not fit here
    save_file({"diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight": torch.zeros(4, 3072),
               "diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight": torch.zeros(9216, 4)}, str(path))
    return path, "does not fit Linear(32, 32)"


@pytest.mark.parametrize("kind", ["other architecture", "no matching keys", "BFL names, other size"])
def test_lora_that_does_not_fit_fails_mid_run_keeping_earlier_cases(tmp_path, control, demo_runs, kind):
    lora, says = _foreign_lora(kind, tmp_path / "foreign.safetensors")
    cases = case_file(tmp_path, GOOD + [{"name": "bad", "loras": [[str(lora), 1.0, "branch"]]}], control)
    out = tmp_path / "run"
    fails(run(cases, out), f'{lora}: case "bad": ', says)
    assert_kept(out)  # computed in this same run, before the bad case
    error = [r for r in parity.results.read_rows(out) if r["status"] == "error"]
    assert [r["name"] for r in error] == ["bad"] and says in error[0]["error"]
    shutil.copy(demo_runs / GOOD_LORA, lora)
    assert_resumes(cases, out)


# --- the output folder ----------------------------------------------------------------------------------------

def test_read_only_output_folder(tmp_path, control):
    if os.geteuid() == 0:  # root writes through chmod 0o555; sysfs refuses new folders even to root
        out, why = Path(f"/sys/parity-test-{os.getpid()}"), "Operation not permitted"
    else:
        out, why = tmp_path / "locked", "Permission denied"
        out.mkdir(mode=0o555)
    fails(run(case_file(tmp_path, GOOD, control), out), f"{out}: cannot write to the output folder: {why}")


def test_output_folder_under_a_file(tmp_path, control):
    (tmp_path / "taken").write_text("a file, not a folder")
    out = tmp_path / "taken" / "run"
    fails(run(case_file(tmp_path, GOOD, control), out), f"{out}: cannot write to the output folder: Not a directory")


def _disk_full_for_rows_after(monkeypatch, rows: int) -> None:
    """results.jsonl takes `rows` more rows, then every write to it fails as on a full disk."""
    real_open, taken = open, []

    class FullFile:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def write(self, text):
            if len(taken) >= rows:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            taken.append(text)
            return self.handle.write(text)

    monkeypatch.setattr(parity.results, "open", lambda *a, **k: FullFile(real_open(*a, **k)), raising=False)


def _disk_full_for_outputs_after(monkeypatch, files: int) -> None:
    """The first `files` output images are written, then fsync of the next one fails with ENOSPC."""
    real_fsync, written = os.fsync, []

    def fsync(fd):
        if "/outputs/" in os.readlink(f"/proc/self/fd/{fd}"):
            if len(written) >= files:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written.append(fd)
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("where", ["results", "output image"])
def test_full_disk_keeps_the_rows_written_before(tmp_path, control, monkeypatch, where):
    cases = case_file(tmp_path, GOOD + [{"name": "ok3", "seed": 2}], control)
    out = tmp_path / "run"
    if where == "results":
        _disk_full_for_rows_after(monkeypatch, 2)
        says = f"{out / 'results.jsonl'}: cannot append a result row: No space left on device"
    else:
        _disk_full_for_outputs_after(monkeypatch, 2)
        says = "cannot write: No space left on device"
    line = fails(run(cases, out), says)
    assert "/outputs/ok3-" in line or where == "results"
    monkeypatch.undo()  # space freed
    assert_kept(out)
    assert not list(out.rglob("*.partial"))
    assert_resumes(cases, out)


# --- the real process -----------------------------------------------------------------------------------------

def test_real_process_prints_one_line_and_exits_2(tmp_path, control):
    """Outside CliRunner too: the installed entry point's stderr ends in the one error line."""
    path, _ = _bad_image("truncated jpeg", tmp_path, control)
    cases = case_file(tmp_path, [{"name": "a", "preview": str(path)}], control)
    done = subprocess.run([sys.executable, "-m", "parity.cli", "run", str(cases), "--out", str(tmp_path / "run")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.splitlines()[-1].startswith(
        f'error: {path}: case "a": preview cannot be decoded (truncated or corrupt?): image file is truncated')
