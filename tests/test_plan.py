"""Case files: block types, `train_steps` vs denoising `steps`, paths relative to the case file wherever
they are written, matrix/ablate, LoRA values, and the YAML reading every user file shares."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from parity.aitk import load_job_config
from parity.case import Case
from parity.errors import ParityError
from parity.gate import load_thresholds
from parity.plan import load_plan
from parity.profiles import load_profile

DEMO_RUNS = Path(__file__).resolve().parent / "data" / "tiny-runs"


def plan_of(tmp_path: Path, spec: dict, name: str = "cases.yaml"):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec))
    return load_plan(path)


def fails(tmp_path: Path, spec: dict, says: str) -> ParityError:
    with pytest.raises(ParityError) as err:
        plan_of(tmp_path, spec)
    assert says in str(err.value) and err.value.source == str(tmp_path / "cases.yaml"), str(err.value)
    return err.value


# --- blocks of the wrong type -----------------------------------------------------------------------------------

def test_one_run_folder_as_a_string(tmp_path):
    run = str(DEMO_RUNS / "tiny_bf16")
    as_list = plan_of(tmp_path, {"previews": {"runs": [run], "train_steps": "last"}}).cases
    as_string = plan_of(tmp_path, {"previews": {"runs": run, "train_steps": "last"}}).cases
    assert [c.name for c in as_string] == [c.name for c in as_list] and len(as_string) == 3


@pytest.mark.parametrize("spec, says", [
    ({"defaults": [{"steps": 2}], "cases": [{"name": "a"}]}, "defaults: must be a mapping, not a list"),
    ({"previews": ["run"]}, "previews: must be a mapping, not a list"),
    ({"previews": {"runs": 5}}, "previews.runs must be a run folder or a list of them, not 5"),
    ({"previews": {"runs": "r", "steps": [10]}}, 'previews: unknown key "steps" (did you mean "train_steps"?)'),
    ({"previews": {"runs": str(DEMO_RUNS / "tiny_bf16")}, "variants": {"name": "v"}},
     "variants: must be a list of mappings, not a dict"),
    ({"previews": {"runs": str(DEMO_RUNS / "tiny_bf16")}, "variants": ["v"]}, "variants[0] must be a mapping"),
    ({"cases": {"name": "a"}}, "cases: must be a list of mappings, not a dict"),
    ({"cases": ["a"]}, "cases[0] must be a mapping"),
    ({"cases": [{"name": "a", "set": [1]}]}, 'case "a": set maps case fields to values'),
    ({"cases": [{"name": "a", "tags": ["t"], "ablate": {"seed": [1]}}]}, 'case "a": tags must be a mapping'),
    ({"cases": [{"name": "a", "set": {"tags": "t"}}]}, 'case "a": tags must be a mapping'),
])
def test_blocks_of_the_wrong_type_name_the_key(tmp_path, spec, says):
    fails(tmp_path, spec, says)


# --- train_steps selects previews, steps counts denoising steps ------------------------------------------------

def test_defaults_steps_are_denoising_steps_for_every_preview_variant(tmp_path):
    spec = {"previews": {"runs": [str(DEMO_RUNS / "tiny_bf16")], "train_steps": [10]}, "defaults": {"steps": 2},
            "variants": [{"name": "two"}, {"name": "three", "steps": 3}, {"name": "last", "train_steps": "last"}]}
    cases = plan_of(tmp_path, spec).cases
    assert {c.name.rsplit("/", 1)[1]: c.steps for c in cases} == {"two": 2, "three": 3, "last": 2}
    assert {c.tag("step") for c in cases} == {"10"}  # "last" of the previews that previews.train_steps selects


def test_the_old_steps_selector_says_train_steps(tmp_path):
    spec = {"previews": {"runs": [str(DEMO_RUNS / "tiny_bf16")]}, "variants": [{"name": "v", "steps": "last"}]}
    fails(tmp_path, spec, "steps is the number of denoising steps; training steps are selected with "
                          "train_steps: 'last'")



def test_a_variant_can_be_limited_to_some_sample_prompts(tmp_path):
    spec = {"previews": {"runs": [str(DEMO_RUNS / "tiny_bf16")], "train_steps": "last"},
            "variants": [{"name": "all"}, {"name": "some", "prompts": [0, 2]}]}
    names = [c.name for c in plan_of(tmp_path, spec).cases]
    assert sorted(n for n in names if n.endswith("/some")) == ["tiny_bf16/step20/p0/some", "tiny_bf16/step20/p2/some"]
    assert len([n for n in names if n.endswith("/all")]) == 3
    spec["variants"][1]["prompts"] = 1
    fails(tmp_path, spec, 'variant "some" prompts must be a non-empty list of sample-prompt indices such as [0], not 1')
    spec["variants"][1]["prompts"] = [7]  # the run has prompts 0-2: the variant draws nothing, and the plan says so
    plan = plan_of(tmp_path, spec)
    assert not [c for c in plan.cases if c.name.endswith("/some")]
    assert 'variant "some" selects no preview (its train_steps / prompts match none): no case' in plan.notes
    spec["variants"][1]["prompts"] = [0, -1]
    fails(tmp_path, spec, 'variant "some" prompts[1] must be an integer >= 0, not -1')
    spec["variants"][1]["prompts"] = [0]
    spec["variants"][1]["train_steps"] = [10, "x"]
    fails(tmp_path, spec, "variant \"some\" train_steps[1] must be an integer >= 0, not 'x'")

# --- paths are relative to the case file wherever they are written -----------------------------------------------

def test_paths_in_matrix_ablate_and_set_are_relative_to_the_case_file(tmp_path):
    spec = {"defaults": {"control_image": "in/a.png"}, "cases": [
        {"name": "m", "matrix": {"control_image": ["in/b.png"], "preview": ["p.png"]}},
        {"name": "x", "ablate": {"control_image": ["in/c.png", "/abs/d.png"]}},
        {"name": "s", "set": {"preview": "~/p.png", "loras": [["l.safetensors", 0.5]]}},
        {"name": "l", "loras": ["l.safetensors"], "matrix": {"loras": [[{"path": "m.safetensors"}]]}},
    ]}
    cases = {c.name: c for c in plan_of(tmp_path, spec, "sub/cases.yaml").cases}
    here = (tmp_path / "sub").resolve()
    m = cases["m[control_image=in/b.png,preview=p.png]"]
    assert (m.control_image, m.preview) == (str(here / "in/b.png"), str(here / "p.png"))
    assert cases["x"].control_image == str(here / "in/a.png")
    assert cases["x[control_image=in/c.png]"].control_image == str(here / "in/c.png")
    assert cases["x[control_image=/abs/d.png]"].control_image == "/abs/d.png"
    assert cases["s"].preview == str(Path("~/p.png").expanduser())
    assert [(lo.path, lo.scale) for lo in cases["s"].loras] == [(str(here / "l.safetensors"), 0.5)]
    [matrix_lora] = next(c for n, c in cases.items() if n.startswith("l[")).loras
    assert matrix_lora.path == str(here / "m.safetensors")


def test_preview_paths_stay_absolute_under_a_set(tmp_path):
    spec = {"previews": {"runs": [str(DEMO_RUNS / "tiny_odd")], "train_steps": "last"},
            "variants": [{"name": "v", "set": {"steps": 2, "lora_mode": "dynamic"}}]}
    for case in plan_of(tmp_path, spec).cases:
        assert Path(case.control_image).is_file() and Path(case.preview).is_file() and case.steps == 2
        assert [(Path(lo.path).is_file(), lo.mode) for lo in case.loras] == [(True, "dynamic")]


def test_a_profile_file_is_relative_to_the_case_file(tmp_path):
    (tmp_path / "sub" / "profiles").mkdir(parents=True)
    (tmp_path / "sub" / "profiles" / "mine.yaml").write_text(
        "name: mine\nsource: test\ndescription: one line\nknobs: {snap: floor32}\n")
    spec = {"cases": [{"name": "a", "profile": "profiles/mine.yaml"},
                      {"name": "b", "matrix": {"profile": ["profiles/mine.yaml"]}}]}
    cases = plan_of(tmp_path, spec, "sub/cases.yaml").cases
    assert [(c.snap, c.tag("profile")) for c in cases] == [("floor32", "mine")] * 2
    with pytest.raises(ParityError, match="profile not found"):
        plan_of(tmp_path, {"cases": [{"name": "a", "profile": "profiles/gone.yaml"}]}, "sub/cases.yaml")


# --- matrix and ablate -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("matrix", [{"seed": [1]}, {"seed": [1, 2]}])
def test_matrix_and_ablate_together_are_refused(tmp_path, matrix):
    fails(tmp_path, {"cases": [{"name": "a", "matrix": matrix, "ablate": {"guidance": [2.5]}}]},
          'case "a": use either matrix or ablate, not both')


def test_ablate_keeps_the_baseline_and_ungates_the_changes(tmp_path):
    cases = plan_of(tmp_path, {"cases": [{"name": "a", "tags": {"t": "1"}, "ablate": {"seed": [1, 2]}}]}).cases
    assert [(c.name, c.seed, c.gated, c.tag("ablation"), c.tag("t")) for c in cases] == [
        ("a", 0, True, "baseline", "1"), ("a[seed=1]", 1, False, "seed", "1"), ("a[seed=2]", 2, False, "seed", "1")]


# --- LoRA values and field metadata ----------------------------------------------------------------------------

@pytest.mark.parametrize("case, says", [
    ({"loras": [{"path": "l.safetensors", "scale": "half"}]},
     "case \"a\", loras[0]: scale must be a number, not 'half'"),
    ({"loras": [["l.safetensors", None]]}, 'case "a", loras[0]: scale cannot be null'),
    ({"loras": [["l.safetensors", True]]}, 'case "a", loras[0]: scale must be a number, not True'),
    ({"loras": [[5]]}, 'case "a", loras[0]: path must be a string, not 5'),
    ({"loras": [["l.safetensors", 1.0, "fussed"]]}, 'case "a", loras[0]: mode must be one of'),
    ({"loras": [["l.safetensors", 200]]}, 'case "a", loras[0]: scale must be a number in [-100, 100], not 200.0'),
    ({"loras": ["l.safetensors"], "lora_scale": "half"}, "case \"a\": lora_scale must be a number, not 'half'"),
    ({"steps": 2.5}, 'case "a": steps must be an integer, not 2.5'),
    ({"steps": None}, 'case "a": steps cannot be null'),
    ({"guidance": "high"}, "case \"a\": guidance must be a number, not 'high'"),
])
def test_bad_lora_and_field_values_name_the_case_and_field(tmp_path, case, says):
    fails(tmp_path, {"cases": [{"name": "a", **case}]}, says)


def test_field_metadata_decides_coercion():
    case = Case.from_dict({"max_area": None, "output_quality": None, "control_image": None, "width": 64.0,
                           "guidance": 3, "loras": [["l.safetensors", 1]]})
    assert (case.max_area, case.output_quality, case.control_image) == (None, None, None)
    assert (case.width, type(case.width), case.guidance, type(case.guidance)) == (64, int, 3.0, float)
    assert case.loras[0].scale == 1.0 and isinstance(case.loras[0].scale, float)


# --- one YAML reader for case files, thresholds, profiles and AI Toolkit configs --------------------------------

READERS = {
    "case file": load_plan,
    "thresholds file": load_thresholds,
    "profile": load_profile,
    "config file": load_job_config,
}


@pytest.mark.parametrize("what", READERS)
@pytest.mark.parametrize("damage, says", [
    ("missing", "{what} not found"),
    ("folder", "is a folder; give the {what} itself"),
    ("latin-1", "not a UTF-8 text file"),
    ("malformed", "malformed YAML at line 2, column 1: "),
    ("list", "a {what} is a mapping"),
])
def test_every_yaml_file_fails_the_same_way(tmp_path, what, damage, says):
    path = tmp_path / "file.yaml"
    if damage == "folder":
        path.mkdir()
    elif damage == "latin-1":
        path.write_bytes(b"name: caf\xe9\n")
    elif damage == "malformed":
        path.write_text("name: [unclosed\n")
    elif damage == "list":
        path.write_text("- a\n")
    with pytest.raises(ParityError) as err:
        READERS[what](path)
    assert err.value.source == str(path) and says.format(what=what) in err.value.problem, str(err.value)


@pytest.mark.parametrize("what, text, says", [
    ("case file", "casse: []\n", 'unknown top-level key "casse" (did you mean "cases"?)'),
    ("thresholds file", "default: {}\n", 'unknown top-level key "default" (did you mean "defaults"?)'),
    ("profile", "name: p\nknob: {}\n", 'unknown top-level key "knob" (did you mean "knobs"?)'),
])
def test_unknown_top_level_keys_get_a_did_you_mean(tmp_path, what, text, says):
    path = tmp_path / "file.yaml"
    path.write_text(text)
    with pytest.raises(ParityError, match=says.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        READERS[what](path)


def test_variants_without_previews_are_an_error_not_ignored(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"cases": [{"name": "a", "prompt": "x"}],
                                    "variants": [{"name": "v", "profile": "fal"}]}))
    with pytest.raises(ParityError, match="variants: re-run AI Toolkit previews, but there are none"):
        load_plan(path)
