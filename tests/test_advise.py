"""`parity advise`: for every serving system with a request format, the advised request, written in the system's
own format and imported back with `parity import`, redraws the previews measurably closer than the system's
defaults, exactly as close as the advice says; the causes and the usual-settings estimate are measured.

One advice per profile for the whole module, on the final previews of one demo run (3 previews, 128x128; only the
first for the systems that draw every image at about 1 MP), the search on the first and over a few fields (the
system defaults alone cost a 1 MP, 20-30 step case each).
"""
from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from parity.advise import Advisor, request_format, select_previews
from parity.cli import main
from parity.errors import ParityError
from parity.importers import import_request
from parity.plan import load_plan

DEMO = Path(__file__).resolve().parent / "data" / "tiny-runs"
# profile -> the fields searched here (the rest keep the preview's value or the system's default)
PROFILES = {
    "fal": ["seed", "output_format"],
    "oxen": ["seed", "output_format", "output_quality"],
    "lumenfall": ["size"],
    "prodia-dev": ["width/height"],
    "aitk-inference": ["width/height"],
    "comfyui": ["image scale", "ModelSamplingFlux"],
}
ONE_PREVIEW = ("oxen", "prodia-dev")  # every output about 1 MP: the other previews cost seconds each


@pytest.fixture(scope="module")
def previews():
    return select_previews([str(DEMO / "tiny_bf16")], "last")


@pytest.fixture(scope="module")
def advised(tmp_path_factory, engine, previews):
    """profile -> (advice, its folder); each profile advised once, into one shared run folder."""
    root = tmp_path_factory.mktemp("advise")
    done = {}

    def get(profile: str):
        if profile not in done:
            chosen = previews[:1] if profile in ONE_PREVIEW else previews
            # Prodia's jobs carry their image outside the body, so they never write the import's control folder:
            # a run folder of their own proves the import back needs none written by another profile
            run_dir = root / ("run-prodia" if profile == "prodia-dev" else "run")
            advisor = Advisor(profile, chosen, out=root / "requests" / f"{profile}.json", run_dir=run_dir,
                              engine=engine, search_previews=1, usual_previews=1 if profile == "aitk-inference" else 0,
                              usual={"width": 192, "height": 192, "steps": 8, "guidance": 4.0},
                              attribution=profile in ("fal", "comfyui"), fields=PROFILES[profile], log=lambda _: None)
            done[profile] = (advisor.advise(), root, chosen)
        return done[profile]

    return get


def reimport(advice, folder: Path, previews) -> list:
    """`parity import` of the written request (the command line, as a user runs it), cases in request order."""
    out = folder / f"imported-{advice.profile}.yaml"
    args = advice.import_command.split()[1:] + ["--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    cases = load_plan(out).cases
    assert len(cases) == len(previews)
    return out, cases


@pytest.mark.parametrize("profile", list(PROFILES))
def test_advised_request_imported_back_is_closer_than_the_defaults(profile, advised, tmp_path):
    advice, root, previews = advised(profile)
    gap = advice.gap
    # measurably closer, perceptually: by more than the search's own significance rule (2%, twice the floor)
    margin = max(0.02 * gap["defaults"][0], 2 * gap["aitk_preview"][0])
    assert gap["advised"][0] < gap["defaults"][0] - margin, gap
    # the written file is the system's own format, and `parity import` reads back the very cases measured
    document = json.loads(Path(advice.request_file).read_text())
    assert isinstance(document, dict if profile == "comfyui" else list)
    imported, cases = reimport(advice, root, previews)
    measured = {r["preview"]: r["advised"] for r in advice.per_preview}
    for case, preview in zip(cases, previews):
        assert case.key() == measured[preview.name]["key"], preview.name
    # `parity run` of the imported search preview, with its preview attached, redraws it as close as claimed
    spec = yaml.safe_load(imported.read_text())
    first = advice.search_previews[0]
    index = [p.name for p in previews].index(first)
    one = {**spec["cases"][index], "preview": previews[index].preview, "base_preview": previews[index].base_preview,
           "gated": False}
    check = root / f"check-{profile}.yaml"  # beside the import: its relative paths hold
    check.write_text(yaml.safe_dump({"base": "embedded", "cases": [one]}))
    result = CliRunner().invoke(main, ["run", str(check), "--out", str(tmp_path / "run"), "--no-gate", "--no-report",
                                       "--no-progress", "--noise-floor", "0"])
    assert result.exit_code == 0, result.output
    [row] = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    perceptual = row["floor_lpips"] / row["lora_effect_lpips"]  # the previews are JPEGs
    assert perceptual == pytest.approx(measured[first]["perceptual"], rel=1e-6, abs=1e-9)
    assert perceptual <= gap["advised"][0] + 1e-9  # one search preview: the claim is its gap


def test_defaults_are_the_request_that_leaves_every_field_out(advised, previews, tmp_path):
    """The "defaults" the advice beats are what each system does with the minimal request (written by hand)."""
    control = Path(previews[0].control_image)
    image = "data:image/png;base64," + base64.b64encode(control.read_bytes()).decode()
    lora = previews[0].loras[0].path
    minimal = {
        "fal": {"prompt": previews[0].prompt, "image_url": image, "loras": [{"path": lora}]},
        "oxen": {"model": "flux-kontext-dev", "input_image": image, "prompt": previews[0].prompt},
        "lumenfall": {"model": "flux.1-kontext-dev", "prompt": previews[0].prompt, "image": image},
        "prodia-dev": {"type": "inference.flux-fast.dev-kontext.img2img.v1", "config": {"prompt": previews[0].prompt}},
        "aitk-inference": {"model": "flux_kontext", "prompts": [{"prompt": previews[0].prompt, "ctrl_img": image}],
                           "loras": [{"path": lora}]},
    }
    for profile, body in minimal.items():
        advice, root, _ = advised(profile)
        request = tmp_path / Path(advice.request_file).name  # its images decode beside the advice's (same names)
        request.write_text(json.dumps(body))
        out = tmp_path / f"{profile}.yaml"
        text, _ = import_request(request, request_format(profile), out=out, control_dir=root / "run" / "inputs",
                                 inputs=[control] if profile == "prodia-dev" else ())
        out.write_text(text)
        [case] = load_plan(out).cases
        [record] = [r for r in advice.per_preview if r["preview"] == previews[0].name]
        assert case.key() == record["defaults"]["key"], profile


def test_causes_are_what_the_request_cannot_change(advised):
    advice = advised("fal")[0]
    groups = {c["group"]: c for c in advice.causes}
    # fal takes 10-50 steps: the preview's 8 cannot be sent; set back to 8, the gap shrinks
    assert groups["steps"]["fields"]["steps"] == {"request": [10], "aitk": [8]}
    # fal snaps the control image to a preferred ~1 MP resolution (an assumed value of the fal profile)
    control = groups["control image preparation"]
    assert control["fields"]["control_auto_resize"] == {"request": [True], "aitk": [False]}
    assert control["change"][0] < 0
    # the seed was the request's to choose (the search tried the preview's), so it is no cause
    assert "seed and noise" not in groups or "seed" not in groups["seed and noise"]["fields"]
    for cause in advice.causes:
        if "change" in cause:
            assert all(math.isfinite(v) for v in cause["change"]), cause
    comfy = advised("comfyui")[0]
    assert {"sampler numerics", "prompt encoding"} <= {c["group"] for c in comfy.causes}


def test_usual_settings_estimate_redraws_previews_there(advised):
    advice, root, _ = advised("aitk-inference")
    usual = advice.usual
    assert usual["settings"] == {"width": 192, "height": 192, "steps": 8, "guidance": 4.0}
    [record] = usual["per_preview"]
    assert record["output_size"] == [192, 192]  # the advised size policy (the preview's) applied to the stand-in
    assert usual["advised"][0] < 0.5  # the reference server follows AI Toolkit closely at those settings
    assert (root / "run" / "usual-controls").is_dir()


def test_advised_comfyui_workflow_names_its_files_and_nodes(advised):
    advice = advised("comfyui")[0]
    graph = json.loads(Path(advice.request_file).read_text())
    classes = [node["class_type"] for node in graph.values()]
    assert classes.count("SaveImage") == 3 and "LoraLoaderModelOnly" in classes
    assert "FluxKontextImageScale" not in classes  # the template's 1 MP rescale is what the search removes
    files = Path(advice.request_file).parent / f"{Path(advice.request_file).stem}-files"
    names = {node["inputs"]["image"] for node in graph.values() if node["class_type"] == "LoadImage"}
    assert names and all((files / "input" / name).is_file() for name in names)


def test_cli_advise_help_and_bad_input(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["advise", "--help"])
    assert result.exit_code == 0
    for option in ("--profile", "--previews", "--train-steps", "--out", "--run-dir", "--search-previews",
                   "--usual-previews", "--fields", "--no-attribution", "--base"):
        assert option in result.output
    result = runner.invoke(main, ["advise", "--profile", "aitk-preview", "--run-dir", str(tmp_path)])
    assert result.exit_code == 2 and 'profile "aitk-preview" has no request format' in result.output
    result = runner.invoke(main, ["advise", "--profile", "fal", "--fields", "stpes", "--run-dir", str(tmp_path)])
    assert result.exit_code == 2 and '"stpes" is not a request field of fal' in result.output
    result = runner.invoke(main, ["advise", "--profile", "fal", "--train-steps", "15", "--run-dir", str(tmp_path)])
    assert result.exit_code == 2 and "selects no preview" in result.output
    with pytest.raises(ParityError, match="no preview to advise on"):
        Advisor("fal", [], out=tmp_path / "x.json", run_dir=tmp_path)


STEP_RANGES = {"fal": (10, 50), "oxen": (4, 50), "lumenfall": (10, 50), "prodia": (1, 50), "aitk-inference": (1, 150),
               "comfyui": (1, 10000)}


@pytest.mark.parametrize("fmt", list(STEP_RANGES))
def test_every_choice_writes_a_request_its_importer_reads_back(fmt, previews, tmp_path):
    """No model: each field's every choice, written for both demo runs' previews, imports back; the starting request
    (the preview's own values) comes back with the preview's seed, steps (the nearest the system takes), guidance and
    LoRA file and scale."""
    from parity.exporters import Files, exporter
    from parity.importers import import_body

    chosen = previews + select_previews([str(DEMO / "tiny_odd")], "last")
    module = exporter(fmt)
    fields = module.fields(chosen)
    files = Files(tmp_path / "files")

    def imported(picks):
        items = [(p, {f.name: c.resolve(p) for f, c in zip(fields, picks)}) for p in chosen]
        inputs = module.inputs(items) if hasattr(module, "inputs") else ()
        dicts, _ = import_body(module.document(items, files), fmt, source=tmp_path / "advised.json",
                               write_dir=tmp_path / "in", control_dir=tmp_path / "files" / "input",
                               lora_dir=tmp_path / "files" / "loras", inputs=inputs)
        assert len(dicts) == len(chosen)
        return dicts

    for index, field in enumerate(fields):
        for choice in [field.default, *field.choices]:
            picks = [f.choices[0] for f in fields]
            picks[index] = choice
            imported(picks)
    lo, hi = STEP_RANGES[fmt]
    for case, preview in zip(imported([f.choices[0] for f in fields]), chosen):
        assert case["seed"] == preview.seed
        assert case["steps"] == max(lo, min(hi, preview.steps))
        assert case["guidance"] == preview.guidance
        assert Path(case["control_image"]).read_bytes() == Path(preview.control_image).read_bytes()
        if fmt in ("fal", "aitk-inference", "comfyui"):
            [(path, scale)] = case["loras"]
            assert Path(path).read_bytes() == Path(preview.loras[0].path).read_bytes()
            assert scale == preview.loras[0].scale
        else:
            assert "loras" not in case  # the API has no LoRA field


def test_a_rerun_resumes_every_case(advised, engine):
    advice, root, chosen = advised("aitk-inference")
    again = Advisor("aitk-inference", chosen, out=Path(advice.request_file), run_dir=root / "run", engine=engine,
                    search_previews=1, usual_previews=1, usual={"width": 192, "height": 192, "steps": 8, "guidance": 4.0},
                    attribution=False, fields=PROFILES["aitk-inference"], log=lambda _: None).advise()
    assert again.cases_computed == 0 and again.cases_reused == advice.cases_computed + advice.cases_reused
    assert again.gap == advice.gap and again.advised == advice.advised
