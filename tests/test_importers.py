"""`parity import`: real request bodies from the seed documents become runnable case files; bad ones are
refused the way the API would refuse them, naming the file and the field."""
from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from parity.cli import main
from parity.errors import ParityError
from parity.importers import import_request
from parity.plan import load_plan

REQUESTS = Path(__file__).resolve().parent / "data" / "requests"
DEMO = Path(__file__).resolve().parent / "data" / "tiny-runs" / "tiny_bf16"


@pytest.fixture()
def local(tmp_path) -> Path:
    """Local copies of what the example requests link by URL (matched by file name)."""
    folder = tmp_path / "downloads"
    folder.mkdir()
    shutil.copy(DEMO / "control" / "ctrl_wide_192x108.png", folder)
    shutil.copy(DEMO / "control" / "ctrl_square_128.png", folder / "input.jpg")
    shutil.copy(DEMO / "control" / "ctrl_tall_alpha_90x150.png", folder / "bloxy_white_bg.png")
    shutil.copy(DEMO / "tiny_bf16_000000010.safetensors", folder / "lora.safetensors")
    return folder


def run_import(tmp_path, name, fmt, control_dir=None, body=None):
    """Import a request file (or a body written to one) into tmp_path/cases.yaml; returns (cases, notes, data)."""
    request = REQUESTS / name
    if body is not None:
        request = tmp_path / name
        request.write_text(json.dumps(body))
    out = tmp_path / "cases.yaml"
    text, notes = import_request(request, fmt, out=out, control_dir=control_dir)
    out.write_text(text)
    return load_plan(out).cases, notes, yaml.safe_load(text)


def body(name: str) -> dict:
    return json.loads((REQUESTS / name).read_text())


def test_aitk_inference_minimal_request_from_the_docs(tmp_path):
    cases, notes, data = run_import(tmp_path, "aitk_inference_minimal.json", "aitk-inference")
    [case] = cases
    assert case.prompt == "sks a photo of a person" and case.tag("profile") == "aitk-inference"
    assert (case.width, case.height, case.steps, case.guidance, case.seed) == (1024, 1024, 25, 4.0, 42)
    assert (case.snap, case.control_target, case.output_format, case.output_quality) == (
        "floor16", "output", "jpeg", 95)
    assert case.loras[0].path.endswith("my_lora_job/my_lora.safetensors") and case.loras[0].mode == "dynamic"
    saved = Path(case.control_image)  # the base64 image, decoded beside the case file
    assert saved.parent == tmp_path and saved.suffix == ".png"
    b64 = body("aitk_inference_minimal.json")["prompts"][0]["ctrl_img"]
    assert saved.read_bytes() == base64.b64decode(b64)
    assert not Path(data["cases"][0]["control_image"]).is_absolute()
    assert any("my_lora.safetensors" in n and "not a file here" in n for n in notes)


def test_aitk_inference_defaults_trigger_and_url(tmp_path, local):
    shutil.copy(DEMO / "tiny_bf16_000000010.safetensors", tmp_path)
    cases, notes, _ = run_import(tmp_path, "aitk_inference_url.json", "aitk-inference", control_dir=local)
    first, second = cases
    assert first.prompt == "zxq make it glow" and first.seed == 42  # no seed: 42 + prompt index
    assert (first.width, first.height, first.steps) == (200, 136, 25)
    assert Path(first.control_image) == (local / "ctrl_wide_192x108.png").resolve()
    assert second.seed == 7 and Path(second.control_image).parent == local.resolve()  # data URI decoded there
    assert first.loras[0].scale == 0.5 and not notes


def test_imported_case_runs_on_the_engine(tmp_path, local, engine):
    shutil.copy(DEMO / "tiny_bf16_000000010.safetensors", tmp_path)
    cases, _, _ = run_import(tmp_path, "aitk_inference_url.json", "aitk-inference", control_dir=local)
    result = engine.run(cases[0].replace(steps=2))
    eff = result.effective
    assert (eff["width"], eff["height"], eff["control_size_encoded"]) == (192, 128, [192, 128])  # floored to 16
    assert result.lora_audits[0].modules_applied > 0


@pytest.mark.parametrize("change, problem", [
    ({"model": "flux-kontext"}, 'model: "flux-kontext" is not flux_kontext (did you mean "flux_kontext"?)'),
    ({"prompts": []}, "prompts: at least one prompt must be provided"),
    ({"loras": []}, "loras: flux_kontext takes exactly one LoRA per request, not 0"),
    ({"loras": [{"path": "a.safetensors", "network_multiplier": 2.5}]},
     "loras[0].network_multiplier: must be a number in [-2.0, 2.0], not 2.5"),
    ({"prompts": [{"prompt": "x"}]}, "prompts[0].ctrl_img: required field missing"),
    ({"prompts": [{"prompt": "x", "ctrl_img": "not an image"}]},
     "prompts[0].ctrl_img: is neither an http(s) URL nor base64 image data"),
    ({"prompts": [{"prompt": "x", "ctrl_img": base64.b64encode(b"plain text").decode()}]},
     "prompts[0].ctrl_img: base64 data is not a readable image"),
    ({"prompts": [{"prompt": "x", "ctrl_img": "https://example.com/c.png", "sample_steps": 0}]},
     "prompts[0].sample_steps: must be an integer in [1, 150], not 0"),
])
def test_aitk_inference_refuses_what_the_server_refuses(tmp_path, change, problem):
    request = {**body("aitk_inference_minimal.json"), **change}
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request))
    with pytest.raises(ParityError) as err:
        import_request(path, "aitk-inference", out=tmp_path / "c.yaml", control_dir=tmp_path)
    assert str(err.value).startswith(f"{path}: {problem}")


@pytest.mark.parametrize("name, fmt, problem", [
    ("bad_aitk_inference_two_loras.json", "aitk-inference",
     "loras: flux_kontext takes exactly one LoRA per request, not 2"),
    ("bad_aitk_inference_width.json", "aitk-inference", "prompts[0].width: must be an integer in [64, 4096], not 32"),
    ("bad_fal_missing_prompt.json", "fal", "prompt: required field missing"),
    ("bad_fal_output_format.json", "fal", 'output_format: must be one of jpeg, png, not "pgn" (did you mean "png"?)'),
    ("bad_oxen_steps.json", "oxen", "num_inference_steps: must be an integer in [4, 50], not 60"),
])
def test_bad_requests_name_file_and_field(tmp_path, local, name, fmt, problem):
    with pytest.raises(ParityError) as err:
        import_request(REQUESTS / name, fmt, out=tmp_path / "c.yaml", control_dir=local)
    assert str(err.value) == f"{REQUESTS / name}: {problem}"


def test_unfetchable_url_names_the_field_and_the_url(tmp_path, local):
    with pytest.raises(ParityError, match=r"image_url: https://your-cdn.com/input.jpg cannot be fetched .*"
                                          r"save it as input.jpg in a folder and pass --control-dir"):
        import_request(REQUESTS / "fal_call_it.json", "fal", out=tmp_path / "c.yaml")
    (local / "input.jpg").unlink()
    with pytest.raises(ParityError, match=rf"image_url: https://your-cdn.com/input.jpg cannot be fetched .* "
                                          rf"{local} holds no input.jpg"):
        import_request(REQUESTS / "fal_call_it.json", "fal", out=tmp_path / "c.yaml", control_dir=local)


def test_fal_call_it_example(tmp_path, local):
    [case], notes, _ = run_import(tmp_path, "fal_call_it.json", "fal", control_dir=local)
    assert (case.size_source, case.snap, case.max_area) == ("control", "floor16_max2048", None)  # match_input
    assert (case.steps, case.guidance, case.output_format, case.seed) == (30, 2.5, "png", 0)
    assert [(Path(l.path).name, l.scale, l.mode) for l in case.loras] == [("lora.safetensors", 1.0, "fused")]
    assert notes == ["seed not given: the service draws a random seed; 0 is used here"]


def test_fal_all_fields_ratio_and_images(tmp_path, local):
    cases, notes, _ = run_import(tmp_path, "fal_all_fields.json", "fal", control_dir=local)
    assert [c.name for c in cases] == ["fal_all_fields/img0", "fal_all_fields/img1"]
    assert [c.seed for c in cases] == [1234, 1235]
    assert {(c.size_source, c.width, c.height, c.steps, c.guidance, c.output_format) for c in cases} == {
        ("request", 1168, 880, 28, 3.0, "jpeg")}  # 4:3 at 1 MP, floored to 16
    assert cases[0].loras[0].scale == 0.8 and "2 images" in notes[0]


@pytest.mark.parametrize("change, expect", [
    ({"resolution_mode": "auto"}, ("size_source", "control_preferred")),
    ({"resolution_mode": "match_input"}, ("size_source", "control")),
    ({"resolution_mode": "21:9"}, ("width", 1552)),
])
def test_fal_resolution_modes(tmp_path, local, change, expect):
    [case], _, _ = run_import(tmp_path, "r.json", "fal", local, {**body("fal_call_it.json"), **change})
    assert getattr(case, expect[0]) == expect[1]


@pytest.mark.parametrize("change, problem", [
    ({"resolution_mode": "match-input"}, 'resolution_mode: must be one of auto, match_input, 1:1'),
    ({"num_inference_steps": 8}, "num_inference_steps: must be an integer in [10, 50], not 8"),
    ({"guidance_scale": 25}, "guidance_scale: must be a number in [0, 20], not 25.0"),
    ({"num_images": 5}, "num_images: must be an integer in [1, 4], not 5"),
    ({"acceleration": "fast"}, 'acceleration: must be one of none, regular, high, not "fast"'),
    ({"loras": [{"scale": 1}]}, "loras[0].path: required field missing"),
    ({"seed": "42"}, "seed: must be an integer >= 0, not '42'"),
])
def test_fal_refusals(tmp_path, local, change, problem):
    with pytest.raises(ParityError, match=problem.replace("[", r"\[").replace("(", r"\(")):
        run_import(tmp_path, "r.json", "fal", local, {**body("fal_call_it.json"), **change})


def test_misspelt_fields_are_noted_with_a_suggestion(tmp_path, local):
    request = {**body("fal_call_it.json"), "num_inference_step": 12, "seed": 3}
    _, notes, data = run_import(tmp_path, "r.json", "fal", local, request)
    assert notes == ['field num_inference_step is ignored by the API (did you mean "num_inference_steps"?)']
    assert "num_inference_step" in data["description"]


def test_oxen_examples_from_the_docs(tmp_path, local):
    [minimal], notes, _ = run_import(tmp_path, "oxen_minimal.json", "oxen", control_dir=local)
    assert (minimal.width, minimal.height, minimal.steps, minimal.guidance) == (1344, 768, 28, 2.5)  # 16:9 default
    assert (minimal.quantize, minimal.output_format, minimal.output_quality) == ("qfloat8", "webp", 80)
    assert Path(minimal.control_image).name == "bloxy_white_bg.png" and "seed not given" in notes[0]
    [full], _, _ = run_import(tmp_path, "oxen_all_parameters.json", "oxen", control_dir=local)
    assert full.key() == minimal.key()  # "All parameters" spells out the defaults


@pytest.mark.parametrize("change, expect", [
    ({"aspect_ratio": "match_input_image"}, {"size_source": "control_preferred"}),
    ({"aspect_ratio": "21:9"}, {"width": 1536, "height": 640}),
    ({"output_format": "jpg", "output_quality": 0}, {"output_format": "jpeg", "output_quality": 1}),
])
def test_oxen_fields(tmp_path, local, change, expect):
    [case], _, _ = run_import(tmp_path, "r.json", "oxen", local, {**body("oxen_minimal.json"), **change})
    assert {k: getattr(case, k) for k in expect} == expect


def test_oxen_refuses_other_models(tmp_path, local):
    with pytest.raises(ParityError, match='model: "flux-kontext-pro" is not flux-kontext-dev '
                                          r'\(did you mean "flux-kontext-dev"\?\)'):
        run_import(tmp_path, "r.json", "oxen", local, {**body("oxen_minimal.json"), "model": "flux-kontext-pro"})


def test_lumenfall_examples(tmp_path, local):
    [t2i], _, _ = run_import(tmp_path, "lumenfall_text_to_image.json", "lumenfall")
    assert (t2i.width, t2i.height, t2i.control_image, t2i.prompt) == (1024, 1024, None, "")
    [edit], notes, _ = run_import(tmp_path, "lumenfall_edit_4x3_1k.json", "lumenfall", control_dir=local)
    assert (edit.width, edit.height, edit.snap, edit.max_area) == (1183, 887, "max2048", None)
    assert (edit.output_format, edit.output_quality, edit.seed, edit.steps, edit.guidance) == ("webp", 90, 5, 30, 2.5)
    assert not notes


@pytest.mark.parametrize("change, expect, note", [
    ({"aspect_ratio": "7:5"}, {"width": 1183, "height": 887}, "aspect ratio 7:5 maps to 4:3"),
    ({"size": "16:9"}, {"width": 1365, "height": 768}, None),
    ({"size": "640x480"}, {"width": 640, "height": 480}, "size WxH given"),
    ({"aspect_ratio": None, "resolution": "2K"}, {"size_source": "lumenfall_1k"}, "resolution 2K maps to 1K"),
    ({"aspect_ratio": None, "resolution": None}, {"size_source": "lumenfall_1k"}, None),
    ({"n": 3}, {"seed": 5}, "3 images"),
])
def test_lumenfall_sizes(tmp_path, local, change, expect, note):
    request = {k: v for k, v in {**body("lumenfall_edit_4x3_1k.json"), **change}.items() if v is not None}
    cases, notes, _ = run_import(tmp_path, "r.json", "lumenfall", local, request)
    assert {k: getattr(cases[0], k) for k in expect} == expect
    assert (note is None and not notes) or any(note in n for n in notes)


@pytest.mark.parametrize("change, problem", [
    ({"resolution": "1L"}, 'resolution: "1L" is not a resolution tier (did you mean "1K"?)'),
    ({"size": "wide"}, 'size: "wide" is neither "WxH" pixels, "W:H" nor "auto"'),
    ({"size": "20000x100"}, 'size: "20000x100": each side must be in [1, 14142]'),
    ({"output_format": "gif"}, 'output_format: "gif" is not modelled by kontext-parity (one of png, jpeg, webp)'),
    ({"output_format": "tiff"}, 'output_format: must be one of png, jpeg, gif, webp, avif, not "tiff"'),
    ({"model": "flux.1-kontext-pro"}, 'model: "flux.1-kontext-pro" is not one of'),
    ({"image": ["https://your-cdn.com/input.jpg"] * 2}, "image: 2 input images"),
])
def test_lumenfall_refusals(tmp_path, local, change, problem):
    with pytest.raises(ParityError) as err:
        run_import(tmp_path, "r.json", "lumenfall", local, {**body("lumenfall_edit_4x3_1k.json"), **change})
    assert f"r.json: {problem}" in str(err.value)


def test_cli_import_writes_a_runnable_case_file_and_reports_errors(tmp_path, local):
    out = tmp_path / "imported" / "oxen.yaml"
    result = CliRunner().invoke(main, ["import", str(REQUESTS / "oxen_all_parameters.json"), "--format", "oxen",
                                       "--out", str(out), "--control-dir", str(local)])
    assert result.exit_code == 0, result.output
    assert "1 case(s) ->" in result.output and "note: seed not given" in result.output
    assert load_plan(out).cases[0].tag("request_format") == "oxen"
    printed = CliRunner().invoke(main, ["import", str(REQUESTS / "lumenfall_text_to_image.json"), "--format",
                                        "lumenfall"])
    assert printed.exit_code == 0 and yaml.safe_load(printed.stdout)["cases"][0]["width"] == 1024
    bad = CliRunner().invoke(main, ["import", str(REQUESTS / "bad_oxen_steps.json"), "--format", "oxen"])
    assert bad.exit_code == 2 and "num_inference_steps: must be an integer in [4, 50], not 60" in bad.output
