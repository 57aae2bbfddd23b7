"""Serving profiles: each one's effective sizes and arguments on a table of requests, checked against
the knob functions and, for small sizes, against what the tiny engine really runs."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from parity.case import Case
from parity.cli import main
from parity.errors import ParityError
from parity.knobs.sizing import LUMENFALL_1K, pipeline_output_size, size_plan
from parity.plan import load_plan
from parity.profiles import available, load_profile

NEW = ("fal", "prodia-dev", "lumenfall", "oxen")
CASES = Path(__file__).resolve().parent.parent / "cases"
LORA = ["lora.safetensors", 0.8]


def sizes(case: Case, control: tuple[int, int] | None):
    """(requested, max_area, output, control encoded) of the case's size plan."""
    plan = size_plan(case, control)
    return plan.requested, plan.max_area, plan.output, plan.control_encoded


def cases(tmp_path, *specs) -> list[Case]:
    """Cases through the real path: a case file, load_plan, profile application."""
    path = tmp_path / "cases.yaml"
    path.write_text(yaml.safe_dump({"cases": [{"name": f"c{i}", **s} for i, s in enumerate(specs)]}))
    return load_plan(path).cases


def test_every_profile_is_documented_and_valid(tmp_path):
    assert set(NEW) | {"aitk-preview", "aitk-inference", "diffusers-default"} <= set(available())
    for name in available():
        profile = load_profile(name)
        assert profile.name == name and profile.description.strip() and profile.source.strip()
        assert profile.notes.strip() or name == "aitk-preview", name
        assert "\n" not in profile.description.strip(), "one line, as `parity profiles` prints it"
        [case] = cases(tmp_path, {"profile": name, "loras": [LORA]})
        assert case.tag("profile") == name


@pytest.mark.parametrize("name, steps, guidance, dtype, quantize, mode, generator, fmt, quality", [
    ("aitk-inference", 25, 4.0, "bf16", "none", "dynamic", "cpu", "jpeg", 95),
    ("diffusers-default", 28, 3.5, "bf16", "none", "dynamic", "cpu", "png", None),
    ("fal", 30, 2.5, "bf16", "none", "fused", "cpu", "png", None),
    ("prodia-dev", 30, 2.5, "bf16", "none", "dynamic", "cpu", "png", None),
    ("lumenfall", 30, 2.5, "bf16", "none", "fused", "cpu", "png", None),
    ("oxen", 28, 2.5, "bf16", "qfloat8", "branch", "cpu", "webp", 80),
])
def test_profile_arguments(tmp_path, name, steps, guidance, dtype, quantize, mode, generator, fmt, quality):
    [case] = cases(tmp_path, {"profile": name, "loras": [LORA]})
    assert (case.steps, case.guidance, case.dtype, case.quantize) == (steps, guidance, dtype, quantize)
    assert (case.loras[0].mode, case.loras[0].scale, case.generator) == (mode, 0.8, generator)
    assert (case.output_format, case.output_quality, case.guidance_mode) == (fmt, quality, "embedded")


# profile, request fields, control image size -> requested size, max_area, output size, control size encoded
SIZE_TABLE = [
    ("diffusers-default", {"width": 800, "height": 600}, (800, 600), (800, 600), 1024**2, (1168, 880), (1184, 880)),
    ("aitk-inference", {"width": 1000, "height": 750}, (800, 600), (992, 736), 992 * 736, (992, 736), (992, 736)),
    ("aitk-preview", {"width": 202, "height": 150}, (64, 48), (200, 144), 200 * 144, (192, 144), (192, 144)),
    ("prodia-dev", {"width": 1000, "height": 1000}, (800, 600), (992, 992), 992 * 992, (992, 992), (1184, 880)),
    ("prodia-dev", {"width": 1000, "height": 750}, None, (992, 736), 992 * 736, (992, 736), None),
    ("prodia-dev", {"width": 128, "height": 128}, None, (512, 512), 512 * 512, (512, 512), None),
    ("prodia-dev", {"width": 1040, "height": 300}, None, (1024, 512), 1024 * 512, (1024, 512), None),
    # "4:3" + "1K" as the importer writes it: the provider's pipeline floors 1183x887 to 1168x880
    ("lumenfall", {"width": 1183, "height": 887}, (800, 600), (1183, 887), 1049321, (1168, 880), (1184, 880)),
    ("lumenfall", {"width": 4000, "height": 3000}, None, (2048, 1536), 2048 * 1536, (2048, 1536), None),
    ("lumenfall", {"size_source": "lumenfall_1k"}, (600, 800), (887, 1182), 887 * 1182, (880, 1168), (880, 1184)),
    ("fal", {"width": 128, "height": 128}, (1000, 750), (992, 736), 992 * 736, (992, 736), (1184, 880)),
    ("fal", {}, (4000, 3000), (2048, 1536), 2048 * 1536, (2048, 1536), (1184, 880)),
    ("fal", {"size_source": "control_preferred"}, (800, 600), (1184, 880), 1184 * 880, (1184, 880), (1184, 880)),
    ("fal", {"size_source": "request", "width": 1168, "height": 880}, (90, 150), (1168, 880), 1168 * 880,
     (1168, 880), (752, 1392)),
    ("oxen", {}, (800, 600), (1344, 768), 1344 * 768, (1344, 768), (1184, 880)),
    ("oxen", {"size_source": "control_preferred"}, (600, 800), (880, 1184), 880 * 1184, (880, 1184), (880, 1184)),
]


@pytest.mark.parametrize("name, request_, control, requested, max_area, output, encoded", SIZE_TABLE)
def test_profile_sizes(tmp_path, name, request_, control, requested, max_area, output, encoded):
    [case] = cases(tmp_path, {"profile": name, **request_})
    assert sizes(case, control) == (requested, max_area, output, encoded)


def test_lumenfall_1k_table_and_its_pipeline_sizes():
    assert LUMENFALL_1K["4:3"] == (1183, 887) and 1183 * 887 == 1049321
    for w, h in LUMENFALL_1K.values():  # max_area = w*h or 1024**2: the same 16-floored output for every entry
        assert pipeline_output_size(w, h, w * h) == pipeline_output_size(w, h, 1024**2) == (w // 16 * 16, h // 16 * 16)


def test_profiles_keep_what_a_user_can_set_and_default_the_rest(tmp_path):
    """Over a preview (202x150, 6 steps, guidance 2.5): exposed fields keep its values, the others the system's."""
    preview = {"width": 202, "height": 150, "steps": 6, "guidance": 2.5, "seed": 1234}
    expected = {  # profile: (steps, width, height)
        "aitk-inference": (6, 202, 150), "diffusers-default": (28, 202, 150), "fal": (6, 202, 150),
        "prodia-dev": (6, 202, 150), "lumenfall": (6, 202, 150), "oxen": (6, 1344, 768),
    }
    for name, (steps, width, height) in expected.items():
        fields = load_profile(name).apply(preview)
        assert (fields["steps"], fields["width"], fields["height"], fields["seed"]) == (steps, width, height, 1234)


def test_profile_sweep_and_ablation_case_files_expand():
    sweep = load_plan(CASES / "profiles.yaml").cases
    assert Counter(c.tag("profile") for c in sweep) == {p: 8 for p in available()}
    assert {c.tag("step") for c in sweep} == {"10"}
    assert {c.tag("profile") for c in sweep if c.gated} == {"aitk-preview"}
    ablation = load_plan(CASES / "ablation.yaml").cases
    assert len(ablation) == 8 * 31 and sum(c.gated for c in ablation) == 8
    knobs = {c.tag("ablation") for c in ablation}
    assert {"snap", "control_resize", "lora_mode", "dtype", "quantize", "shift", "guidance_mode"} <= knobs
    cfg = next(c for c in ablation if c.tag("ablation") == "guidance_mode")
    assert (cfg.guidance_mode, cfg.true_cfg_scale, cfg.negative_prompt) == ("true_cfg", 1.5, "blurry, low quality")
    odd = {c.name.split("/", 3)[-1]: c for c in ablation if c.name.startswith("shapes_odd/step10/p0/")}
    assert sizes(odd["ablation"], (112, 80))[2] == (112, 80)  # 120x88 asked for: AI Toolkit floors to 16
    assert sizes(odd["ablation[snap=round16]"], (112, 80))[2] == (128, 96)
    assert odd["ablation[quantize=qfloat8]"].loras[0].mode == "branch"


def test_preview_step_filter_names_the_steps_it_has(tmp_path, demo_runs):
    path = tmp_path / "c.yaml"
    runs = [str(demo_runs / "tiny_bf16")]
    path.write_text(yaml.safe_dump({"previews": {"runs": runs, "train_steps": [5]}}))
    with pytest.raises(ParityError, match=r"previews.train_steps \[5\] selects no preview of tiny_bf16 .*0, 10, 20"):
        load_plan(path)
    path.write_text(yaml.safe_dump({"previews": {"runs": runs, "train_steps": "10"}}))
    with pytest.raises(ParityError, match='previews.train_steps must be "last", "first" or a list'):
        load_plan(path)
    spec = {"previews": {"runs": runs}, "variants": [{"name": "all"}, {"name": "final", "train_steps": "last"}]}
    path.write_text(yaml.safe_dump(spec))
    names = [c.name for c in load_plan(path).cases]
    assert len([n for n in names if n.endswith("/all")]) == 9
    assert sorted(n for n in names if n.endswith("/final")) == [f"tiny_bf16/step20/p{i}/final" for i in range(3)]


@pytest.mark.parametrize("name, request_", [
    ("aitk-inference", {"width": 202, "height": 150}),
    ("fal", {}),
    ("prodia-dev", {"width": 64, "height": 64}),
    ("lumenfall", {"width": 1183, "height": 887}),  # "4:3" + "1K": one step at 1168x880 (~2 s)
])
def test_engine_runs_the_computed_sizes(tmp_path, engine, control_png, name, request_):
    [case] = cases(tmp_path, {"profile": name, "control_image": str(control_png), "steps": 1, **request_})
    requested, max_area, output, encoded = sizes(case, (96, 80))
    eff = engine.run(case).effective
    assert (eff["requested_width"], eff["requested_height"], eff["max_area"]) == (*requested, max_area)
    assert (eff["width"], eff["height"], tuple(eff["control_size_encoded"])) == (*output, encoded)
    assert eff["transformer_calls"] == 1


def test_parity_profiles_lists_every_profile_with_its_source():
    out = CliRunner().invoke(main, ["profiles"]).output
    for name in available():
        assert f"\n{name}: " in f"\n{out}"
    assert "seed 001" in out and "seed 004" in out
