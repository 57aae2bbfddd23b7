"""The seed systems' request fields, audited against their documents: Prodia's job importer, fields that are
modelled (safety checkers, progressive JPEG), fields that are refused (acceleration, enhance_prompt,
style_preset), the documents' input limits, arrays of requests, and the profiles' assumed values."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from parity.cli import main
from parity.errors import ParityError
from parity.importers import import_request
from parity.plan import load_plan
from parity.profiles import load_profile

DEMO = Path(__file__).resolve().parent / "data" / "tiny-runs" / "tiny_bf16"
CONTROL = DEMO / "control" / "ctrl_square_128.png"
# seed 002, "Style-preset edit with the Dev variant" (its style_preset is refused; see below)
PRODIA_DOC_JOB = {"type": "inference.flux-fast.dev-kontext.img2img.v1",
                  "config": {"prompt": "the same scene rendered as a hand-painted illustration", "style_preset": "anime",
                             "width": 1024, "height": 1024, "steps": 30}}


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def imported(tmp_path, body, fmt, **kwargs):
    request = tmp_path / "request.json"
    request.write_text(json.dumps(body))
    out = tmp_path / "cases.yaml"
    text, notes = import_request(request, fmt, out=out, **kwargs)
    out.write_text(text)
    return load_plan(out).cases, notes


def refused(tmp_path, body, fmt, **kwargs) -> str:
    with pytest.raises(ParityError) as err:
        imported(tmp_path, body, fmt, **kwargs)
    assert "request.json" in str(err.value)  # the file is named
    return str(err.value)


def prodia_job(**config) -> dict:
    job = json.loads(json.dumps(PRODIA_DOC_JOB))
    del job["config"]["style_preset"]
    job["config"].update(config)
    return {k: v for k, v in job.items()}


def test_prodia_job_from_the_docs_runs_as_a_prodia_dev_case(tmp_path):
    [case], notes = imported(tmp_path, prodia_job(seed=7), "prodia", inputs=[CONTROL])
    assert case.tag("profile") == "prodia-dev" and case.prompt.startswith("the same scene")
    assert (case.width, case.height, case.steps, case.guidance, case.seed) == (1024, 1024, 30, 2.5, 7)
    assert (case.snap, case.output_format) == ("prodia", "png")
    assert Path(case.control_image).read_bytes() == CONTROL.read_bytes()
    assert not case.loras and not notes  # the dev job has no LoRA field
    [default], notes = imported(tmp_path, {"type": PRODIA_DOC_JOB["type"], "config": {"prompt": "turn it blue"}},
                                "prodia", inputs=[CONTROL])
    assert (default.width, default.height, default.steps, default.seed) == (1024, 1024, 30, 0)
    assert any("random seed" in n for n in notes)


@pytest.mark.parametrize("job, problem", [
    (PRODIA_DOC_JOB, 'config.style_preset: "anime": what a preset does'),
    (prodia_job(width=1040), "config.width: 1040 is not a multiple of 32"),
    (prodia_job(height=480), "config.height: must be an integer in [512, 1040]"),
    (prodia_job(steps=60), "config.steps: must be an integer in [1, 50]"),
    (prodia_job(prompt="ab"), "config.prompt: must have 3-4096 characters, not 2"),
    (prodia_job(style_preset="watercolor"), 'config.style_preset: must be one of'),
    ({**prodia_job(), "type": "inference.flux-kontext.pro.img2img.v2"}, "closed models"),
    ({"type": PRODIA_DOC_JOB["type"]}, "config: required field missing"),
])
def test_prodia_refuses_what_it_cannot_reproduce(tmp_path, job, problem):
    assert problem in refused(tmp_path, job, "prodia", inputs=[CONTROL])


def test_prodia_needs_its_multipart_image(tmp_path):
    assert "--input FILE" in refused(tmp_path, prodia_job(), "prodia")
    assert "carries its image itself" in refused(tmp_path, {"image_url": data_uri(CONTROL), "prompt": "x"}, "fal",
                                                 inputs=[CONTROL])


def test_progressive_jpeg_changes_no_pixel(tmp_path):
    """Prodia's `progressive` only reorders a JPEG response's bytes: accepted, and the same case."""
    [plain], _ = imported(tmp_path, prodia_job(), "prodia", inputs=[CONTROL])
    [progressive], _ = imported(tmp_path, prodia_job(progressive=True), "prodia", inputs=[CONTROL])
    assert plain.key() == progressive.key()
    rng = np.random.default_rng(1)
    image = Image.fromarray((rng.random((67, 91, 3)) * 255).astype("uint8"))
    for quality in (60, 75, 95):
        decoded = []
        for flag in (False, True):
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=quality, progressive=flag)
            decoded.append(np.asarray(Image.open(buffer).convert("RGB")))
        assert np.array_equal(*decoded)


def fal_body(**fields) -> dict:
    return {"image_url": data_uri(CONTROL), "prompt": "make it red", "seed": 3, **fields}


def test_safety_checkers_leave_the_case_unchanged(tmp_path):
    keys = set()
    for value in (True, False):
        [case], _ = imported(tmp_path, fal_body(enable_safety_checker=value), "fal")
        keys.add(case.key())
        oxen = {"model": "flux-kontext-dev", "input_image": data_uri(CONTROL), "prompt": "x", "seed": 1,
                "disable_safety_checker": value}
        lumen = {"model": "flux.1-kontext-dev", "prompt": "x", "image": data_uri(CONTROL), "seed": 1,
                 "enable_safety_checker": value, "disable_safety_checker": not value}
        keys.add(("oxen", imported(tmp_path, oxen, "oxen")[0][0].key()))
        keys.add(("lumenfall", imported(tmp_path, lumen, "lumenfall")[0][0].key()))
    assert len(keys) == 3  # one case per system, whatever the switches say


@pytest.mark.parametrize("fmt, body, problem", [
    ("fal", fal_body(acceleration="regular"), 'acceleration: "regular" (fal\'s speed presets)'),
    ("lumenfall", {"model": "flux.1-kontext-dev", "prompt": "x", "acceleration": "high"}, 'acceleration: "high"'),
    ("lumenfall", {"model": "flux.1-kontext-dev", "prompt": "x", "enhance_prompt": True},
     "enhance_prompt: true: the provider rewrites the prompt"),
])
def test_unreproducible_provider_fields_are_refused(tmp_path, fmt, body, problem):
    assert problem in refused(tmp_path, body, fmt)


def test_lumenfall_ranges_its_page_does_not_give_are_noted_not_refused(tmp_path):
    body = {"model": "flux.1-kontext-dev", "prompt": "x", "image": data_uri(CONTROL), "num_inference_steps": 8,
            "cfg_scale": 25, "n": 12, "seed": 1, "enhance_prompt": False, "acceleration": "none"}
    cases, notes = imported(tmp_path, body, "lumenfall")
    assert len(cases) == 12 and cases[0].steps == 8 and cases[0].guidance == 25
    assert any("num_inference_steps 8 is outside 10-50" in n for n in notes)
    assert any("cfg_scale 25 is outside 0-20" in n for n in notes)


def image_uri(tmp_path, size, fmt: str) -> str:
    path = tmp_path / f"input.{fmt.lower()}"
    Image.new("RGB", size, (90, 120, 30)).save(path, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(path.read_bytes()).decode()


def test_documented_input_limits(tmp_path):
    big = image_uri(tmp_path, (14143, 16), "PNG")
    assert "is 14143x16; the API takes at most 14142 px per side" in refused(tmp_path, fal_body(image_url=big), "fal")
    assert imported(tmp_path, fal_body(image_url=image_uri(tmp_path, (14142, 16), "PNG")), "fal")[0]
    bmp = image_uri(tmp_path, (64, 64), "BMP")
    oxen = {"model": "flux-kontext-dev", "input_image": bmp, "prompt": "x"}
    assert "is a BMP image; the API accepts JPEG, PNG, GIF, WEBP" in refused(tmp_path, oxen, "oxen")
    gif = {**oxen, "input_image": image_uri(tmp_path, (64, 64), "GIF")}
    assert imported(tmp_path, gif, "oxen")[0]
    tiff = {"model": "flux.1-kontext-dev", "prompt": "x", "image": image_uri(tmp_path, (64, 64), "TIFF")}
    assert "is a TIFF image; the API accepts PNG, JPEG, WEBP" in refused(tmp_path, tiff, "lumenfall")


def test_a_json_array_imports_every_request(tmp_path):
    cases, _ = imported(tmp_path, [fal_body(seed=1), fal_body(seed=2, num_inference_steps=12)], "fal")
    assert [c.name for c in cases] == ["request/0", "request/1"]
    assert [c.seed for c in cases] == [1, 2] and [c.tag("request_index") for c in cases] == ["0", "1"]
    assert cases[0].control_image == cases[1].control_image  # one decoded copy for the file
    problem = refused(tmp_path, [fal_body(), fal_body(num_inference_steps=5)], "fal")
    assert "[1].num_inference_steps: must be an integer in [10, 50]" in problem
    assert "holds no request" in refused(tmp_path, [], "fal")


def test_prodia_jobs_pair_with_their_inputs_in_order(tmp_path):
    other = DEMO / "control" / "ctrl_wide_192x108.png"
    cases, _ = imported(tmp_path, [prodia_job(seed=1), prodia_job(seed=2)], "prodia", inputs=[CONTROL, other])
    assert [Path(c.control_image).read_bytes() for c in cases] == [CONTROL.read_bytes(), other.read_bytes()]
    shared, _ = imported(tmp_path, [prodia_job(seed=1), prodia_job(seed=2)], "prodia", inputs=[other])
    assert {Path(c.control_image).name for c in shared} == {other.name}
    assert "3 --input images for 2 requests" in refused(tmp_path, [prodia_job(), prodia_job()], "prodia",
                                                        inputs=[CONTROL, other, CONTROL])


def test_cli_imports_a_prodia_job(tmp_path):
    job = tmp_path / "job.json"
    job.write_text(json.dumps(prodia_job(seed=4)))
    out = tmp_path / "job.yaml"
    result = CliRunner().invoke(main, ["import", str(job), "--format", "prodia", "--input", str(CONTROL),
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    [case] = load_plan(out).cases
    assert case.seed == 4 and case.tag("request_format") == "prodia"
    result = CliRunner().invoke(main, ["import", str(job), "--format", "prodia", "--out", str(out)])
    assert result.exit_code == 2 and "job.json" in result.output and "--input FILE" in result.output


def test_assumed_values_travel_with_the_case_and_reach_the_report(tmp_path):
    fal = load_profile("fal")
    assert "dtype" in fal.assumed and "generator" in fal.assumed and not load_profile("aitk-preview").assumed
    cases, _ = imported(tmp_path, fal_body(), "fal")
    assumed = cases[0].tag("assumed").split()
    assert "dtype=bf16" in assumed and "snap=floor16_max2048" in assumed and "generator=cpu" in assumed
    spec = {"cases": [{"name": "a", "profile": "fal", "prompt": "x", "control_image": str(CONTROL),
                       "dtype": "fp32"}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(spec))
    [case] = load_plan(tmp_path / "c.yaml").cases
    assert "dtype=bf16" not in case.tag("assumed").split()  # overridden: no longer the profile's assumption
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "bad", "knobs": {"dtype": "bf16"}, "assumed": ["dtpye"]}))
    with pytest.raises(ParityError, match=r'bad.yaml.*assumed: "dtpye" is not a field.*did you mean "dtype"'):
        load_profile(bad)


def test_report_lists_assumed_values_next_to_the_profile(tmp_path):
    from parity.report.data import ReportData

    rows = [{"name": "x", "status": "ok", "tag_profile": "fal", "tag_assumed": "dtype=bf16 generator=cpu"},
            {"name": "y", "status": "ok", "tag_profile": "fal", "tag_assumed": "dtype=bf16 snap=floor16_max2048"},
            {"name": "z", "status": "ok", "tag_profile": "aitk-preview"}]
    data = ReportData(run_dir=tmp_path, rows=rows, gate=None, deltas=[], attribution=[], effects=[])
    assert data.assumptions == [("fal", ["dtype=bf16", "generator=cpu", "snap=floor16_max2048"])]
