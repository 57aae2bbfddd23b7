"""The demo model and its exports: the scene generator, the tokenizers, the committed model, the LoRA
files and the AI Toolkit run definitions. Fast: no training, at most a few 8-step 64-128 px edits."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from parity.demo import scenes

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "parity" / "data" / "shapes-kontext"
RUNS = ROOT / "parity" / "data" / "demo-runs"
SIDECARS = Path(__file__).resolve().parent / "data" / "aitk-sidecars"
AITK_FIXTURE_LORA = Path(__file__).resolve().parent / "data" / "aitk-sidecars" / "tiny_bf16" / "lora_A_fp32_as_sampled.safetensors"


def test_examples_are_deterministic_per_seed():
    a, b = scenes.example(123), scenes.example(123)
    assert a.prompt == b.prompt and a.edit == b.edit
    assert np.array_equal(np.asarray(a.control), np.asarray(b.control))
    assert np.array_equal(np.asarray(a.target), np.asarray(b.target))
    others = [scenes.example(s) for s in range(124, 130)]
    assert any(not np.array_equal(np.asarray(a.control), np.asarray(o.control)) for o in others if o.control.size == a.control.size) \
        or all(o.control.size != a.control.size for o in others)
    assert len({o.prompt for o in others}) > 1


@pytest.mark.parametrize("kind", scenes.EDITS)
def test_each_edit_changes_what_it_names(kind):
    for seed in range(20):
        ex = scenes.example(seed, width=96, height=96, kind=kind)
        edit, target = ex.edit, np.asarray(ex.target, np.float64)
        assert edit.kind == kind or (kind in ("recolour", "remove") and not edit.source.shapes)
        if edit.kind == "recolour":
            mean = target[scenes.shape_mask(edit.target, edit.shape_index)].mean(0)
            assert np.abs(mean - scenes.PALETTE[edit.color]).max() < 3
            assert edit.color in ex.prompt and edit.source.shapes[edit.shape_index].kind in ex.prompt
        elif edit.kind == "background":
            mean = target[scenes.background_mask(edit.target)].mean(0)
            assert np.abs(mean - scenes.PALETTE[edit.color]).max() < 3
        elif edit.kind == "frame":
            mean = target[scenes.frame_mask(edit.target)].mean(0)
            assert np.abs(mean - scenes.PALETTE[edit.color]).max() < 3
        else:
            assert len(edit.target.shapes) == len(edit.source.shapes) - 1
            mask = scenes.shape_mask(edit.source, edit.shape_index) & scenes.background_mask(edit.target, erode=0)
            assert np.abs(target[mask].mean(0) - edit.target.background_rgb).max() < 3
        # the control is the unedited scene
        assert np.array_equal(np.asarray(ex.control), np.asarray(scenes.render(edit.source)))


def test_zxq_style_is_aligned_to_the_latent_grid():
    img = scenes.render(scenes.example(5, width=64, height=64).edit.source)
    styled = np.asarray(scenes.zxq_style(img), np.int16)
    flat = np.asarray(scenes.zxq_style(Image.new("RGB", (64, 64), (120, 120, 120))), np.int16)
    assert np.array_equal(flat[:8, :8], flat[8:16, 8:16])  # 8 px tiles: flat inside, alternating
    assert (flat[:8, :8] == flat[0, 0]).all() and (flat[:8, 8:16] < flat[:8, :8]).all()
    assert np.abs(styled - np.asarray(img, np.int16)).mean() > 20
    assert scenes.styled_prompt("add a red frame") == "zxq style, add a red frame"


def test_tokenizers_keep_instruction_words_whole():
    from parity.demo.components import make_clip_tokenizer, make_t5_tokenizer

    clip, t5 = make_clip_tokenizer(), make_t5_tokenizer()
    for word in scenes.WORDS:
        assert len(clip(word, add_special_tokens=False).input_ids) == 1, word
        assert len(t5(word, add_special_tokens=False).input_ids) == 1, word
    assert t5("zebra?").input_ids[-1] == 1  # anything else still tokenizes, ending in </s>
    assert len(clip("zebra?").input_ids) > 3


def test_t5_encodes_word_order():
    """Which colour a recolour prompt names first decides the edit; a bag-of-words T5 cannot tell (0.4%)."""
    import torch

    from parity.demo.components import make_clip_tokenizer, make_t5_tokenizer, make_text_encoders

    clip_tok, t5_tok = make_clip_tokenizer(), make_t5_tokenizer()
    t5 = make_text_encoders(clip_tok, t5_tok)[1]

    def encode(prompt):
        ids = t5_tok(prompt, padding="max_length", max_length=512, return_tensors="pt").input_ids
        with torch.no_grad():
            return t5(ids).last_hidden_state[0]

    first, second = encode("make the red circle blue"), encode("make the blue circle red")
    red_as_source, red_as_target = first[2], second[4]  # tokens: make the red circle blue </s>
    assert (red_as_source - red_as_target).norm() > 0.3 * red_as_source.norm()


def test_lora_targets_follow_ai_toolkits_rule():
    """Same module set as AI Toolkit's own save of the fixture model (every Linear in the blocks)."""
    from safetensors import safe_open

    from parity.demo import components, lora

    def kinds(modules):  # "single_transformer_blocks.1.attn.to_q" -> ("single_transformer_blocks", "attn.to_q")
        return {(m.split(".")[0], m.split(".", 2)[2]) for m in modules}

    tr = components.make_transformer()
    with safe_open(str(AITK_FIXTURE_LORA), "pt") as f:
        theirs = [k[len("transformer."):-len(".lora_A.weight")] for k in f.keys() if k.endswith(".lora_A.weight")]
    assert kinds(lora.target_modules(tr)) == kinds(theirs)


@pytest.fixture(scope="module")
def demo_pipe():
    from parity.demo.components import load_pipeline

    pipe = load_pipeline(MODEL)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_model_loads_through_from_pretrained_in_the_flux_layout(demo_pipe):
    cfg = demo_pipe.transformer.config
    assert cfg.in_channels == 64 and cfg.guidance_embeds and cfg.patch_size == 1
    assert demo_pipe.vae.config.latent_channels == 16 and demo_pipe.vae_scale_factor == 8
    assert demo_pipe.vae.config.scaling_factor != 1.0  # measured on the data, not left at the default
    for f in MODEL.rglob("*.safetensors"):
        assert f.stat().st_size < 5_000_000, f


def test_model_does_a_held_out_edit(demo_pipe):
    from parity.demo.evaluate import edit_done, generate

    ex = scenes.example(900_003_001, width=96, height=96, kind="background")
    out = generate(demo_pipe, ex.control, ex.prompt, 0)
    assert edit_done(ex.edit, out)["done"]


def test_model_recolours_the_shape_the_prompt_names(demo_pipe):
    """The edit that needs word order (which colour is there, which is wanted): 8 held-out scenes of the build's
    own evaluation (docs/demo-model/report.json: 88% of 25 done)."""
    from parity.demo.build import HELD_OUT
    from parity.demo.evaluate import edit_done, generate

    done = 0
    for seed in range(HELD_OUT + 1000, HELD_OUT + 1008):
        ex = scenes.example(seed, width=128, height=128, kind="recolour")
        done += edit_done(ex.edit, generate(demo_pipe, ex.control, ex.prompt, seed))["done"]
    assert done >= 6


def _lora_files():
    return sorted(SIDECARS.glob("shapes_*/lora_*_fp32_as_sampled.safetensors"))


def test_lora_sets_have_ai_toolkits_key_format_and_load(demo_pipe):
    from safetensors import safe_open

    from parity.engine.lora import detect_format, load_lora_file

    with safe_open(str(AITK_FIXTURE_LORA), "pt") as f:
        fixture_keys = list(f.keys())
    assert _lora_files()
    for path in _lora_files():
        with safe_open(str(path), "pt") as f:
            keys = list(f.keys())
            assert {f.get_slice(k).get_dtype() for k in keys} == {"F32"}
            for k in keys:
                shape = f.get_slice(k).get_shape()
                assert shape[0 if k.endswith("lora_A.weight") else 1] == 4  # rank 4 (linear: 4)
        assert detect_format(keys) == detect_format(fixture_keys) == "peft"
        assert all(k.startswith("transformer.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)
        lf = load_lora_file(path, demo_pipe.transformer)
        assert lf.audit.modules_applied == lf.audit.modules_in_file == len(keys) // 2 and not lf.audit.dropped


def test_runs_are_genuine_previews_with_their_checkpoints():
    runs = sorted(p for p in RUNS.iterdir() if p.is_dir())
    assert {p.name for p in runs} >= {"shapes_bf16", "shapes_odd"}
    for run in runs:
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        proc = cfg["config"]["process"][0]
        assert proc["train"]["steps"] == 20 and proc["save"]["save_every"] == 10
        assert proc["sample"]["sample_every"] == 10 and proc["model"]["arch"] == "flux_kontext"
        assert (run / f"{run.name}.safetensors").is_file() and (run / f"{run.name}_000000010.safetensors").is_file()
        steps = {int(p.name.split("__")[1].split("_")[0]) for p in (run / "samples").glob("*__*_*.*")}
        assert steps == {0, 10, 20}
        side = SIDECARS / run.name
        info = json.loads((side / "run_info.json").read_text())
        assert info["n_previews"] == len(list((run / "samples").glob("*__*_*.*")))
        assert len(list(side.glob("*.raw.png"))) == info["n_previews"]


def test_odd_run_has_the_awkward_controls():
    control = RUNS / "shapes_odd" / "control"
    with Image.open(control / "alpha_112x80.png") as im:
        assert im.mode == "RGBA" and im.getchannel("A").getextrema()[0] < 255
    with Image.open(control / "exif_orient6_128x96.jpg") as im:
        assert im.getexif().get(0x0112) == 6


def test_the_build_warns_of_a_busy_machine_and_rejects_zero_threads(tmp_path, capsys):
    from parity.demo import build

    assert "--threads 1" in build.busy_machine_warning(2, 1.7)
    assert build.busy_machine_warning(2, 0.3) is None and build.busy_machine_warning(1, 1.7) is None
    with pytest.raises(SystemExit) as exc:
        build.main(["--out", str(tmp_path), "--threads", "0"])
    assert exc.value.code == 2 and "--threads must be >= 1, not 0" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_the_build_runs_end_to_end_at_toy_sizes(tmp_path, monkeypatch):
    """`make demo-model` in miniature (~25 s): every step, the saved files and the report, at toy sizes."""
    from parity.demo import build

    for name, value in {"VAE_STEPS": 10, "BASE_SEEDS": range(40), "BASE_STEPS": 10, "LORA_STEPS": 10,
                        "LORA_SEEDS": range(10_000_000, 10_000_020), "LORA_CHECKPOINTS": (5, 10),
                        "EVAL_PER_KIND": 1, "EVAL_LORA": 1, "FACTOR_SEEDS": range(20_000_000, 20_000_005)}.items():
        monkeypatch.setattr(build, name, value)
    report = build.build(tmp_path, threads=1)
    assert set(report["edits"]) == set(scenes.EDITS) and set(report["lora_effect"]) == {"step5", "step10"}
    assert (tmp_path / "shapes-kontext" / "model_index.json").is_file() and (tmp_path / "aitk" / "runs.yaml").is_file()
    assert json.loads((tmp_path / "report.json").read_text())["timings_s"]["total"] > 0
    assert sorted(p.name for p in (tmp_path / "lora").iterdir()) == ["zxq_step10.safetensors", "zxq_step5.safetensors"]
    # --resume reuses the finished stages; a LoRA checkpoint gone missing is trained again, not assumed
    (tmp_path / "lora" / "zxq_step5.safetensors").unlink()
    build.build(tmp_path, threads=1, resume=True)
    log = (tmp_path / "build.log").read_text()
    assert "VAE reused" in log and "base model reused" in log and "LoRA checkpoints reused" not in log
    assert (tmp_path / "lora" / "zxq_step5.safetensors").is_file()
