"""AI Toolkit's prompt grammar, seeds, trigger words, sizes and config defaults (no model runs)."""
from __future__ import annotations

import textwrap

import pytest

from parity.aitk import inject_trigger, load_job_config, parse_prompt, sample_args
from parity.errors import ParityError
from parity.knobs import lookup
from parity.knobs.sizing import pipeline_output_size

PARSE_TABLE = [
    # prompt string -> (prompt text, attributes set by flags)
    ("make it red", "make it red", {}),
    ("  make it red  ", "make it red", {}),
    ("", "", {}),
    ("make it red --w 200 --h 136", "make it red", {"width": 200, "height": 136}),
    ("make it red --h 136 --w 200", "make it red", {"width": 200, "height": 136}),
    ("a --d 5", "a", {"seed": 5}),
    ("a --seed 5 --d 6", "a", {"seed": 6}),  # last one wins
    ("a --l 2.5", "a", {"guidance_scale": 2.5}),
    ("a --cfg 3", "a", {"guidance_scale": 3.0}),
    ("a --s 12", "a", {"num_inference_steps": 12}),
    ("a --steps 12", "a", {"num_inference_steps": 12}),
    ("a --m 0.5", "a", {"network_multiplier": 0.5}),
    ("a --network_multiplier -1", "a", {"network_multiplier": -1.0}),
    ("a --n blurry, low quality", "a", {"negative_prompt": "blurry, low quality"}),
    ("a --n", "a", {"negative_prompt": ""}),
    ("a --ctrl_img /data/my folder/ctrl 1.png", "a", {"ctrl_img": "/data/my folder/ctrl 1.png"}),
    ("a --ctrl_idx 1", "a", {"ctrl_idx": 1}),
    ("a --p2 second --n2 neg2 --gr 0.7", "a", {"prompt_2": "second", "negative_prompt_2": "neg2",
                                                "guidance_rescale": 0.7}),
    ("a --a 0.5 --ref 0.4 --ev 1,2.5", "a", {"adapter_conditioning_scale": 0.5, "refiner_start_at": 0.4,
                                            "extra_values": [1.0, 2.5]}),
    ("a --frames 9 --fps 8", "a", {"num_frames": 9, "fps": 8}),
    ("a --seed -1", "a", {"seed": -1}),
    ("a --w  202 ", "a", {"width": 202}),
    # a literal "--" ends the prompt: the rest is an empty, unknown flag and is dropped
    ("before -- after --w 64", "before", {"width": 64}),
    # ... and cuts a path in two
    ("a --ctrl_img /x/my--file.png", "a", {"ctrl_img": "/x/my"}),
    ("em--dash text", "em", {}),
    # flags stick to their names: "--width" is unknown and ignored
    ("a --width 300", "a", {}),
]


@pytest.mark.parametrize("text, prompt, values", PARSE_TABLE)
def test_parse_prompt_table(text, prompt, values):
    parsed = parse_prompt(text)
    assert parsed.prompt == prompt
    assert parsed.values == values


def test_unknown_flags_are_reported():
    parsed = parse_prompt("a --width 300 --w 64 -- b")
    assert parsed.unknown == ("width", "")
    assert parsed.flags == ("w",)


@pytest.mark.parametrize("text", ["a --w 20.5", "a --seed x", "a --m half", "a --ev 1,x", "a --s"])
def test_bad_flag_values_fail_like_aitk(text):
    with pytest.raises(ParityError, match="needs"):
        parse_prompt(text)


def test_trigger_replaces_tags_and_is_never_prepended():
    assert inject_trigger("[trigger] style photo", "zxq") == "zxq style photo"
    assert inject_trigger("[name] and [trigger]", "zxq") == "zxq and zxq"
    assert inject_trigger("a photo", "zxq") == "a photo"  # add_if_not_present=False
    assert inject_trigger("[trigger] photo", "") == " photo"


def _config(tmp_path, sample: str, extra: str = "", name: str = "job"):
    text = textwrap.dedent(f"""\
        job: extension
        config:
          name: {name}
          process:
          - type: sd_trainer
            model: {{name_or_path: base, arch: flux_kontext}}
        """) + textwrap.indent(textwrap.dedent(extra), "    ") + "    sample:\n" + textwrap.indent(
        textwrap.dedent(sample), "      ")
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return load_job_config(path)


def test_sample_config_defaults(tmp_path):
    job = _config(tmp_path, "prompts: [a]\n")
    s = job.sample
    assert (s.sampler, s.width, s.height, s.neg, s.seed, s.walk_seed) == ("ddpm", 512, 512, False, 0, False)
    assert (s.guidance_scale, s.sample_steps, s.network_multiplier, s.ext) == (7, 20, 1, "jpg")
    assert (s.sample_every, s.sample_start_step) == (100, 0)
    assert (job.train_dtype, job.train_steps, job.save_dtype, job.save_every) == ("fp32", 1000, "float16", 1000)
    assert (job.quantize, job.quantize_te, job.qtype, job.trigger_word, job.network_type) == (
        False, False, "qfloat8", None, None)
    [args] = sample_args(s, None)
    eff = args.effective()
    assert (eff["seed"], eff["negative_prompt"], eff["num_inference_steps"], eff["guidance_scale"]) == (0, False, 20, 7)
    assert (eff["pipeline_width"], eff["pipeline_height"], eff["ctrl_img"]) == (512, 512, None)


def test_quantize_te_follows_quantize(tmp_path):
    job = _config(tmp_path, "prompts: [a]\n", "", "job")
    path = tmp_path / "config.yaml"
    path.write_text(path.read_text().replace("arch: flux_kontext}", "arch: flux_kontext, quantize: true}"))
    job = load_job_config(path)
    assert job.quantize and job.quantize_te


def test_walk_seed_and_item_seeds(tmp_path):
    job = _config(tmp_path, """\
        seed: 7
        walk_seed: true
        samples:
        - prompt: a
        - prompt: b --seed 1234
        - {prompt: c, seed: 99}
        - prompt: d
        """)
    assert [a.seed for a in sample_args(job.sample, None)] == [7, 1234, 99, 10]
    assert [a.constructor_seed for a in sample_args(job.sample, None)] == [7, 8, 99, 10]


def test_item_seed_carries_over_without_walk_seed(tmp_path):
    job = _config(tmp_path, """\
        seed: 5
        samples:
        - prompt: a
        - {prompt: b, seed: 99}
        - prompt: c
        """)
    assert [a.seed for a in sample_args(job.sample, None)] == [5, 99, 99]


def test_seed_minus_one_is_random_unless_a_flag_sets_it(tmp_path):
    job = _config(tmp_path, """\
        seed: -1
        walk_seed: true
        prompts: [a, b, c --seed 3]
        """)
    seeds = [a.seed for a in sample_args(job.sample, None)]
    assert seeds == [None, 0, 3]  # -1+0 is random, -1+1 is seed 0
    assert "random" in sample_args(job.sample, None)[0].notes[0]


def test_item_values_override_section_and_flags_override_items(tmp_path):
    job = _config(tmp_path, """\
        width: 256
        height: 256
        guidance_scale: 4
        sample_steps: 8
        network_multiplier: 0.75
        neg: ugly
        samples:
        - {prompt: a --l 2 --s 3 --n bad, width: 300, guidance_scale: 3, ctrl_img: c.png}
        - {prompt: b, network_multiplier: "0.5", sample_steps: 5}
        - {prompt: c, network_multiplier: lots}
        """)
    a, b, c = sample_args(job.sample, None)
    assert (a.width, a.height, a.guidance, a.steps, a.negative_prompt, a.ctrl_img) == (300, 256, 2.0, 3, "bad", "c.png")
    assert (b.network_multiplier, b.steps, b.guidance, b.negative_prompt) == (0.5, 5, 4, "ugly")
    assert c.network_multiplier == 1.0  # SampleItem falls back to 1.0 for a non-number string
    assert any("lots" in n for n in job.notes)


def test_samples_win_over_prompts_and_unknown_item_keys_are_noted(tmp_path):
    job = _config(tmp_path, """\
        prompts: [old]
        samples:
        - {prompt: new, colour: red}
        """)
    assert job.sample.prompts == ["new"]
    assert any("colour" in n for n in job.notes) and any("uses samples" in n for n in job.notes)


def test_item_without_prompt_shifts_prompts_onto_later_items(tmp_path):
    job = _config(tmp_path, """\
        samples:
        - {width: 100}
        - {prompt: b, width: 200}
        """)
    [args] = sample_args(job.sample, None)
    assert (args.prompt, args.width) == ("b", 100)  # prompt 0 is "b", settings are item 0's
    assert "no prompt" in args.notes[0]


def test_trigger_handling_in_sample_args(tmp_path):
    job = _config(tmp_path, "prompts: ['[trigger] photo --n no [trigger]', plain]\n", "trigger_word: zxq\n")
    a, b = sample_args(job.sample, job.trigger_word)
    assert (a.prompt_after_trigger, a.prompt, a.negative_prompt) == ("zxq photo --n no zxq", "zxq photo", "no zxq")
    assert b.prompt == "plain"
    job = _config(tmp_path, "prompts: ['[trigger] photo']\n")
    [a] = sample_args(job.sample, job.trigger_word)
    assert a.prompt == "[trigger] photo" and "trigger_word" in a.notes[0]


def test_name_tag_is_replaced_at_load(tmp_path):
    job = _config(tmp_path, "prompts: ['[name] photo']\n", name="myjob")
    assert job.sample.prompts == ["myjob photo"]


def test_exponent_floats_read_as_numbers(tmp_path):
    job = _config(tmp_path, "prompts: [a]\nguidance_scale: 25e-1\nnetwork_multiplier: 1.0e0\n")
    assert job.sample.guidance_scale == 2.5 and job.sample.network_multiplier == 1.0


def test_env_vars_are_substituted(tmp_path, monkeypatch):
    monkeypatch.setenv("PARITY_TEST_PROMPT", "from env")
    job = _config(tmp_path, "prompts: ['${PARITY_TEST_PROMPT}']\n")
    assert job.sample.prompts == ["from env"]
    assert any("environment variables PARITY_TEST_PROMPT:" in n and "from env" not in n for n in job.notes)
    monkeypatch.delenv("PARITY_TEST_PROMPT")
    with pytest.raises(ParityError, match="PARITY_TEST_PROMPT"):
        load_job_config(tmp_path / "config.yaml")


def test_env_vars_give_aitks_values_but_cannot_change_the_structure(tmp_path, monkeypatch):
    """AI Toolkit substitutes the raw text: an unquoted ${SEED} is a number; here a value stays one value."""
    monkeypatch.setenv("PARITY_SEED", "42")
    monkeypatch.setenv("PARITY_STEPS", "1.5e1")
    monkeypatch.setenv("PARITY_WORDS", "a: b\n  sample_steps: 3 # c")
    job = _config(tmp_path, "seed: ${PARITY_SEED}\nguidance_scale: ${PARITY_STEPS}\n"
                            "samples: [{prompt: x ${PARITY_WORDS}, seed: ${PARITY_SEED}}, {prompt: \"${PARITY_SEED}\"},"
                            " {prompt: 'x ${PARITY_WORDS}'}]\n# ${PARITY_IN_A_COMMENT}\n")
    assert (job.sample.seed, job.sample.guidance_scale, job.sample.sample_steps) == (42, 15.0, 20)
    words = "x a: b\n  sample_steps: 3 # c"
    assert [(i.prompt, i.seed) for i in job.sample.items] == [(words, 42), ("42", None), (words, None)]
    assert any("environment variables PARITY_SEED, PARITY_STEPS, PARITY_WORDS:" in n for n in job.notes)
    assert not any("1.5e1" in n or "42" in n for n in job.notes)  # names only, never values


def test_env_vars_in_a_json_config(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("PARITY_TEST_PROMPT", "from env")
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"job": "extension", "config": {"name": "j", "process": [
        {"type": "sd_trainer", "model": {"name_or_path": "b", "arch": "flux_kontext"},
         "sample": {"prompts": ["a ${PARITY_TEST_PROMPT}"]}}]}}))
    job = load_job_config(path)
    assert job.sample.prompts == ["a from env"] and any("PARITY_TEST_PROMPT" in n for n in job.notes)


def test_json_config(tmp_path):
    import json

    path = tmp_path / "job.json"
    path.write_text(json.dumps({"job": "extension", "config": {"name": "j", "process": [
        {"type": "sd_trainer", "model": {"name_or_path": "b", "arch": "flux_kontext"},
         "sample": {"prompts": ["a --w 100"]}}]}}))
    [args] = sample_args(load_job_config(path).sample, None)
    assert args.effective()["width_after_8px_floor"] == 96


@pytest.mark.parametrize("text, problem", [
    ("config: [", "malformed YAML at line 1"),
    ("job: x\n", "`config` is missing"),
    ("config: {name: j}\n", "config.process is missing"),
    ("config: {name: j, process: [{type: t}]}\n", "no process"),
    ("config: {name: j, process: [{type: t, sample: {prompts: [a]}}]}\n", r"config.process\[0\].model is missing"),
    ("config: {name: j, process: [{type: t, model: {name_or_path: b, arch: flux}, sample: {}}]}\n",
     "flux_kontext runs only"),
    ("config: {name: j, process: [{type: t, model: {name_or_path: b, arch: flux_kontext}, sample: {width: big}}]}\n",
     r"config.process\[0\].sample.width must be an integer, not 'big'"),
    ("config: {name: j, process: [{type: t, model: {name_or_path: b, arch: flux_kontext}, "
     "sample: {samples: [{prompt: a, seed: 1.5}]}}]}\n", r"sample.samples\[0\].seed must be an integer"),
    ("config: {name: j, process: [{type: t, model: {name_or_path: b, arch: flux_kontext}, sample: {prompts: a}}]}\n",
     "prompts must be a list"),
    ("config: {name: j, process: [{type: t, model: {name_or_path: b, arch: flux_kontext}, sample: {}, "
     "trigger_word: 5}]}\n", "trigger_word must be a string"),
])
def test_config_errors_name_file_and_key(tmp_path, text, problem):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ParityError, match=problem) as err:
        load_job_config(path)
    assert err.value.source == str(path)


def test_bad_flag_error_names_prompt_and_file(tmp_path):
    job = _config(tmp_path, "prompts: [a, 'b --w wide']\n")
    with pytest.raises(ParityError, match=r"sample prompt 1: --w needs an integer") as err:
        sample_args(job.sample, None, source=job.path)
    assert err.value.source == job.path


@pytest.mark.parametrize("w, h, w8, h8, w16, h16", [
    (1000, 750, 1000, 744, 992, 736),
    (200, 136, 200, 136, 192, 128),
    (202, 150, 200, 144, 192, 144),
    (100, 60, 96, 64, 96, 64),
    (120, 232, 120, 232, 112, 224),
    (10, -5, 64, 64, 64, 64),
])
def test_size_chain_matches_the_snap_knobs(tmp_path, w, h, w8, h8, w16, h16):
    job = _config(tmp_path, f"prompts: ['a --w {w} --h {h}']\n")
    [args] = sample_args(job.sample, None)
    eff = args.effective()
    assert (eff["width_after_8px_floor"], eff["height_after_8px_floor"]) == (w8, h8)
    assert (eff["pipeline_width"], eff["pipeline_height"], eff["max_area"]) == (w16, h16, w16 * h16)
    # the Case path: snap "aitk" then the pipeline's own rule (max_area = snapped area)
    snapped = lookup("snap", "aitk")(max(w, 16), max(h, 16))
    assert snapped == (w8, h8)
    assert pipeline_output_size(*snapped, snapped[0] * snapped[1]) == (w16, h16)


def test_snap_chain_equals_aitk_on_a_grid():
    for w in range(64, 1100, 13):
        for h in range(64, 1100, 29):
            w8, h8 = max(64, w - w % 8), max(64, h - h % 8)
            snapped = lookup("snap", "aitk")(w, h)
            assert pipeline_output_size(*snapped, snapped[0] * snapped[1]) == (w8 // 16 * 16, h8 // 16 * 16)
