"""Importing AI Toolkit runs: every demo preview against its sidecar, pairing, control paths, Cases."""
from __future__ import annotations

import builtins
import io
import json
import shutil
import textwrap
from pathlib import Path

import pytest

from parity.aitk import load_run, preview_cases, sample_args
from parity.profiles import load_profile
from parity.errors import ParityError

RUNS = ("tiny_bf16", "tiny_odd")
SIDECAR_KEYS = ("prompt", "negative_prompt", "seed", "width_after_8px_floor", "height_after_8px_floor",
                "pipeline_width", "pipeline_height", "max_area", "auto_resize", "num_inference_steps",
                "guidance_scale", "network_multiplier", "lora_merged_into_base", "ctrl_img")


def _sidecar(sidecars: Path, run: str, preview_path: str) -> dict:
    return json.loads((sidecars / run / (Path(preview_path).stem + ".json")).read_text())


@pytest.mark.parametrize("run_name", RUNS)
def test_every_demo_preview_matches_its_sidecar(demo_runs, sidecars, run_name):
    run = load_run(demo_runs / run_name)
    index = json.loads((sidecars / run_name / "index.json").read_text())
    assert len(run.previews) == len(index) and run.ignored == [".thumbs/"]
    batch = sample_args(run.config.sample, run.config.trigger_word)
    for p in run.previews:
        side = _sidecar(sidecars, run_name, p.path)
        args, parse = batch[p.prompt_index], side["prompt_parse"]
        assert (args.prompt_from_config, args.prompt_after_trigger) == (
            side["prompt_from_config"], side["prompt_after_trigger_injection"])
        assert (args.constructor_seed, args.width, args.height) == (
            parse["constructor_seed"], parse["after_flags"]["width"], parse["after_flags"]["height"])
        assert (p.step, p.prompt_index) == (side["step"], side["prompt_index"])
        assert p.reproducible and not [n for n in p.notes if "drifted" not in n], p.notes
        for key in SIDECAR_KEYS:
            assert p.effective[key] == side["effective"][key], (p.name, key)
        assert p.effective["seed"] == side["pipeline_kwargs"]["generator"]["initial_seed"]
        assert (p.lora_mode == "merged_fp32") == side["effective"]["lora_merged_into_base"]
        assert (p.lora_mode == "merged_fp32") == side["network_at_call"]["is_merged_in"]
        assert p.lora_scale == side["network_at_call"]["multiplier"]
        assert (Path(p.checkpoint).name if p.checkpoint else None) == side["lora_file_paired"]
        assert Path(p.control_image) == (demo_runs / side["effective"]["ctrl_img"]).resolve()
        assert (p.output_format, p.output_quality) == ("jpeg", 75)


@pytest.mark.parametrize("run_name", RUNS)
def test_demo_cases_are_the_verified_aitk_preview_cases(demo_runs, sidecars, run_name):
    run = load_run(demo_runs / run_name)
    cases = preview_cases(run)
    assert [c.name for c in cases] == [p.name for p in run.previews]
    for case, p in zip(cases, run.previews):
        side = _sidecar(sidecars, run_name, p.path)
        parse = side["prompt_parse"]["after_flags"]
        assert (case.prompt, case.seed, case.width, case.height) == (
            parse["prompt"], parse["seed"], parse["width"], parse["height"])
        assert (case.steps, case.guidance) == (parse["num_inference_steps"], parse["guidance_scale"])
        assert case.control_image == p.control_image and case.preview == p.path
        assert (case.dtype, case.quantize, case.output_format, case.output_quality) == ("bf16", "none", "jpeg", 75)
        for knob, value in load_profile("aitk-preview").knobs.items():
            if knob not in ("output_format", "output_quality"):  # the run's sample format decides these
                assert getattr(case, knob) == value
        if p.step == 0:
            assert case.loras == ()
        else:
            [lora] = case.loras
            assert (Path(lora.path).name, lora.scale, lora.mode) == (
                side["lora_file_paired"], side["network_at_call"]["multiplier"], p.lora_mode)
        assert case.tag("profile") == "aitk-preview" and case.tag("run") == run_name
        assert (case.tag("step"), case.tag("prompt_index")) == (str(p.step), str(p.prompt_index))


def test_mixed_multipliers_use_the_branch_and_one_multiplier_merges(demo_runs):
    assert {p.lora_mode for p in load_run(demo_runs / "tiny_bf16").previews} == {"branch"}
    assert {p.lora_mode for p in load_run(demo_runs / "tiny_odd").previews} == {"merged_fp32"}


def test_import_never_opens_a_pickle(demo_runs, monkeypatch):
    real_open = builtins.open

    def guarded(file, *args, **kwargs):
        assert not str(file).endswith(".pt"), f"opened {file}"
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    monkeypatch.setattr(io, "open", guarded)
    for run_name in RUNS:
        preview_cases(load_run(demo_runs / run_name))


# --- a synthetic run folder ---------------------------------------------------------------------

def _write_run(root: Path, *, name="synth", steps=30, save_every=10, sample: str | None = None,
               model="{name_or_path: base, arch: flux_kontext}", extra="", files=()) -> Path:
    run = root / name
    (run / "samples" / ".thumbs").mkdir(parents=True)
    (run / "samples" / ".tmp").mkdir()
    (root / "ctrl").mkdir(exist_ok=True)
    (root / "ctrl" / "c.png").write_bytes(b"png")
    sample = sample or "seed: 3\nwalk_seed: true\nprompts: ['a --ctrl_img ctrl/c.png', 'b --ctrl_img ctrl/c.png']\n"
    config = textwrap.dedent(f"""\
        job: extension
        config:
          name: {name}
          process:
          - type: sd_trainer
            training_folder: /far/away/output
            network: {{type: lora, linear: 4, linear_alpha: 4}}
            save: {{dtype: float16, save_every: {save_every}, max_step_saves_to_keep: 2}}
            train: {{steps: {steps}, dtype: bf16}}
            model: {model}
        """) + textwrap.indent(textwrap.dedent(extra), "    ") + "    sample:\n" + textwrap.indent(sample, "      ")
    (run / "config.yaml").write_text(config)
    (run / "optimizer.pt").write_bytes(b"not a pickle you may load")
    for f in files:
        (run / f).write_bytes(b"x")
    return run


def _previews(run: Path, steps, prompts=2, ext="jpg", ms=1000):
    for step in steps:
        for i in range(prompts):
            ms += 1
            (run / "samples" / f"{ms}__{step:09d}_{i}.{ext}").write_bytes(b"img")


def test_synthetic_pairing_final_save_and_unpaired(tmp_path):
    run = _write_run(tmp_path, files=["synth_000000010.safetensors", "synth_000000020.safetensors",
                                      "synth.safetensors"])
    _previews(run, [0, 5, 10, 20, 30])
    (run / "samples" / "notes.txt").write_text("x")
    (run / "samples" / "1__000000010_0.mp4").write_bytes(b"x")
    with pytest.raises(ParityError, match=r"2 preview\(s\) have no checkpoint: .*synth_000000005.safetensors"
                                          r".*save_every=10 saved no LoRA") as err:
        load_run(run)
    assert err.value.source == str((run / "samples").resolve())
    loaded = load_run(run, unpaired="skip")
    by_step = {}
    for p in loaded.previews:
        by_step.setdefault(p.step, set()).add(Path(p.checkpoint).name if p.checkpoint else None)
    assert by_step == {0: {None}, 5: {None}, 10: {"synth_000000010.safetensors"},
                       20: {"synth_000000020.safetensors"}, 30: {"synth.safetensors"}}
    unpaired = [p for p in loaded.previews if p.step == 5]
    assert all(not p.reproducible and "unpaired" in p.notes[0] for p in unpaired)
    assert sorted(loaded.ignored) == sorted([".thumbs/", ".tmp/", "notes.txt", "1__000000010_0.mp4"])
    cases = preview_cases(loaded)
    assert len(cases) == 8 and all(c.tag("step") != "5" for c in cases)
    assert [c.seed for c in cases[:2]] == [3, 4]
    # paths in the config are relative to the training folder: the run folder's parent here
    assert cases[0].control_image == str((tmp_path / "ctrl" / "c.png").resolve())


def test_deleted_step_checkpoint_is_explained(tmp_path):
    run = _write_run(tmp_path, files=["synth_000000020.safetensors", "synth.safetensors"])
    _previews(run, [10])
    with pytest.raises(ParityError, match="max_step_saves_to_keep=2"):
        load_run(run)


def test_missing_final_checkpoint(tmp_path):
    run = _write_run(tmp_path)
    _previews(run, [30])
    with pytest.raises(ParityError, match=r"no final checkpoint synth.safetensors .*train.steps=30"):
        load_run(run)


def test_rerun_duplicates_keep_only_the_newest_reproducible(tmp_path):
    run = _write_run(tmp_path, files=["synth_000000010.safetensors"])
    _previews(run, [10], ms=1000)
    _previews(run, [10], ms=2000)
    loaded = load_run(run)
    names = sorted(p.name for p in loaded.previews)
    assert names == ["synth/step10/p0", "synth/step10/p0~1001", "synth/step10/p1", "synth/step10/p1~1002"]
    assert sorted(c.name for c in preview_cases(loaded)) == ["synth/step10/p0", "synth/step10/p1"]


def test_seed_minus_one_is_not_reproducible(tmp_path):
    sample = "seed: -1\nprompts: ['a --ctrl_img ctrl/c.png', 'b --seed 8 --ctrl_img ctrl/c.png']\n"
    run = _write_run(tmp_path, sample=sample)
    _previews(run, [0])
    loaded = load_run(run)
    p0, p1 = loaded.previews
    assert not p0.reproducible and p0.effective["seed"] is None and any("random" in n for n in p0.notes)
    assert p1.reproducible and p1.effective["seed"] == 8
    assert [c.name for c in preview_cases(loaded)] == ["synth/step0/p1"]


def test_quantized_run_uses_the_branch_and_qfloat8(tmp_path):
    run = _write_run(tmp_path, model="{name_or_path: base, arch: flux_kontext, quantize: true}",
                     files=["synth_000000010.safetensors"])
    _previews(run, [10])
    loaded = load_run(run)
    assert loaded.quantize == "qfloat8" and {p.lora_mode for p in loaded.previews} == {"branch"}
    assert {c.quantize for c in preview_cases(loaded)} == {"qfloat8"}
    assert {c.loras[0].mode for c in preview_cases(loaded)} == {"branch"}


@pytest.mark.parametrize("model, problem", [
    ("{name_or_path: b, arch: flux_kontext, quantize: true, qtype: uint4}", "qtype 'uint4' is not modelled"),
    ("{name_or_path: b, arch: flux_kontext, quantize: true, quantize_te: false}", "quantize_te=False"),
    ("{name_or_path: b, arch: flux_kontext, assistant_lora_path: x}", "assistant_lora_path is set"),
])
def test_unmodelled_setups_are_not_reproducible(tmp_path, model, problem):
    run = _write_run(tmp_path, model=model)
    _previews(run, [0])
    loaded = load_run(run)
    assert not any(p.reproducible for p in loaded.previews)
    assert all(any(problem in n for n in p.notes) for p in loaded.previews)
    assert preview_cases(loaded) == []


def test_png_format_and_fp32(tmp_path):
    sample = "format: png\nprompts: ['a --ctrl_img ctrl/c.png']\n"
    run = _write_run(tmp_path, sample=sample)
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("dtype: bf16", "dtype: float32"))
    _previews(run, [0], prompts=1, ext="png")
    [case] = preview_cases(load_run(run))
    assert (case.output_format, case.output_quality, case.dtype) == ("png", None, "fp32")


def test_bare_samples_folder_with_explicit_config(tmp_path):
    run = _write_run(tmp_path, files=["synth_000000010.safetensors"])
    _previews(run, [0, 10])
    bare = tmp_path / "elsewhere" / "samples"
    shutil.copytree(run / "samples", bare)
    with pytest.raises(ParityError, match="no job config"):
        load_run(bare)
    loaded = load_run(bare, config=run / "config.yaml", ctrl_root=tmp_path / "ctrl")
    assert Path(loaded.samples_dir) == bare.resolve() and len(loaded.previews) == 4
    assert {Path(p.checkpoint).name for p in loaded.previews if p.step == 10} == {"synth_000000010.safetensors"}
    assert load_run(run / "samples").previews[0].name == "synth/step0/p0"  # config found in the parent


def test_control_paths_remapped_with_ctrl_root(tmp_path):
    sample = ("samples:\n- {prompt: a, ctrl_img: /workspace/data/ctrl/c.png}\n"
              "- {prompt: b, ctrl_img: 'C:\\Users\\me\\pics\\d.png'}\n")
    run = _write_run(tmp_path, sample=sample)
    _previews(run, [0])
    with pytest.raises(ParityError, match=r"prompt 0: control image '/workspace/data/ctrl/c.png' not found "
                                          r"\(tried /workspace/data/ctrl/c.png\).*prompt 1: .*d.png") as err:
        load_run(run)
    assert err.value.source.endswith("config.yaml")
    pics = tmp_path / "mine"
    (pics / "ctrl").mkdir(parents=True)
    (pics / "ctrl" / "c.png").write_bytes(b"1")
    (pics / "deep" / "er").mkdir(parents=True)
    (pics / "deep" / "er" / "d.png").write_bytes(b"2")
    p0, p1 = load_run(run, ctrl_root=pics).previews
    assert p0.control_image == str((pics / "ctrl" / "c.png").resolve())  # by trailing components
    assert p1.control_image == str((pics / "deep" / "er" / "d.png").resolve())  # by file name below ctrl_root


@pytest.mark.parametrize("name", ["a[1].png", "*.png"])
def test_control_file_names_are_not_glob_patterns(tmp_path, name):
    sample = f"samples:\n- {{prompt: a, ctrl_img: '/train/{name}'}}\n"
    run = _write_run(tmp_path, sample=sample)
    _previews(run, [0], prompts=1)
    pics = tmp_path / "mine" / "deep"
    pics.mkdir(parents=True)
    (pics / "b.png").write_bytes(b"1")  # what the pattern would match
    (pics / "a1.png").write_bytes(b"2")
    with pytest.raises(ParityError, match="not found"):
        load_run(run, ctrl_root=tmp_path / "mine")
    (pics / name).write_bytes(b"3")
    [p] = load_run(run, ctrl_root=tmp_path / "mine").previews
    assert p.control_image == str((pics / name).resolve())


def test_missing_ctrl_img_is_an_error(tmp_path):
    run = _write_run(tmp_path, sample="prompts: [a]\n")
    _previews(run, [0], prompts=1)
    with pytest.raises(ParityError, match="prompt 0: no ctrl_img"):
        load_run(run)


def test_run_errors(tmp_path):
    with pytest.raises(ParityError, match="not a folder"):
        load_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ParityError, match="neither samples/ nor preview files"):
        load_run(tmp_path / "empty")
    run = _write_run(tmp_path)
    with pytest.raises(ParityError, match="no preview files"):
        load_run(run)
    with pytest.raises(ParityError, match="unpaired must be"):
        load_run(run, unpaired="maybe")


def test_first_sample_section(tmp_path):
    sample = "seed: 3\nprompts: ['a --ctrl_img ctrl/c.png', 'b --ctrl_img ctrl/c.png']\n"
    first = "first_sample: {seed: 50, prompts: ['first --ctrl_img ctrl/c.png', 'second --ctrl_img ctrl/c.png']}\n"
    run = _write_run(tmp_path, sample=sample, extra=first)
    _previews(run, [0])
    # baseline and first_sample previews share the step-0 names: not told apart
    assert not any(p.reproducible for p in load_run(run).previews)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("dtype: bf16}", "dtype: bf16, skip_first_sample: true}"))
    cases = preview_cases(load_run(run))
    assert [(c.prompt, c.seed) for c in cases] == [("first", 50), ("second", 50)]


def test_layer_offloading_cannot_merge(tmp_path):
    run = _write_run(tmp_path, model="{name_or_path: b, arch: flux_kontext, layer_offloading: true}")
    _previews(run, [0])
    assert {p.lora_mode for p in load_run(run).previews} == {"branch"}
