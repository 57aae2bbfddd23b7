"""ComfyUI as a target: ComfyUI's own PNGs (tests/data/comfyui, drawn by ComfyUI 0.3.64's nodes on the tiny
model) imported with `parity import --format comfyui` and redrawn by the engine under the comfyui profile."""
from __future__ import annotations

import copy
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
from parity.metrics.ssim import ssim
from parity.plan import load_plan
from parity.profiles import load_profile

DATA = Path(__file__).resolve().parent / "data" / "comfyui"
CASES = DATA / "cases"
DEMO = Path(__file__).resolve().parent / "data" / "tiny-runs"
FP32 = ["stock_kontext_scale_fp32", "bypass128_lora_fp32", "odd168x104_fp32", "weighted_fp32", "long_prompt_fp32",
        "exif_bypass_fp32", "alpha_bypass_fp32"]


def meta(name: str) -> dict:
    return json.loads((CASES / name / "meta.json").read_text())


def imported(tmp_path: Path, name: str, source: str = "api_prompt.json", graph: dict | None = None):
    """The case `parity import --format comfyui` makes of a tool case's workflow (a fresh file if ``graph``)."""
    run = DEMO / meta(name)["lora_run"]
    path = CASES / name / source
    if graph is not None:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(graph))
    out = tmp_path / f"{name}.yaml"
    text, notes = import_request(path, "comfyui", out=out, control_dir=run / "control", lora_dir=run)
    out.write_text(text)
    [case] = load_plan(out).cases
    return case, notes


def api(name: str) -> dict:
    return json.loads((CASES / name / "api_prompt.json").read_text())


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def redraw(engine, tmp_path, name: str, **changes):
    case, _ = imported(tmp_path, name)
    if not meta(name)["config"]["gpu_like"]:
        case = case.replace(dtype="fp32")  # ComfyUI on a CPU computes in fp32 (the profile assumes a bf16 GPU)
    return engine.run(case.replace(**changes))


def against_comfyui(result, name: str) -> tuple[float, int, float]:
    png = Image.open(CASES / name / "comfyui.png")
    if result.image.size != png.size:  # another size cannot be the same picture
        return float("inf"), 255, 0.0
    diff = np.abs(pixels(result.image) - pixels(png))
    return float(diff.mean()), int(diff.max()), ssim(result.image, png)


# --- the bar: each tool case redrawn --------------------------------------------------------------------------


@pytest.mark.parametrize("name", FP32)
def test_fp32_redraw_equals_comfyuis_png(engine, tmp_path, name):
    result = redraw(engine, tmp_path, name)
    info = meta(name)
    assert list(result.image.size) == info["output_image_shape_BHWC"][2:0:-1]
    mean, worst, similarity = against_comfyui(result, name)
    assert mean <= 0.25 and similarity >= 0.999, (mean, worst, similarity)
    assert worst <= 1  # float32 rounding may move a value across a truncation boundary, no further
    assert np.abs(np.array(result.effective["sigmas"]) - np.array(info["sigmas"])).max() <= 1e-6
    assert result.effective["t5_tokens"] == len(info["t5_tokens"])


def test_bf16_gpu_policy_is_closer_to_comfyuis_bf16_than_comfyuis_own_fp32(engine, tmp_path):
    bf16 = redraw(engine, tmp_path, "bypass128_lora_bf16gpu")
    assert bf16.case.dtype == "bf16"  # the profile's GPU policy, kept by the import
    comfy_bf16 = pixels(Image.open(CASES / "bypass128_lora_bf16gpu" / "comfyui.png"))
    comfy_fp32 = pixels(Image.open(CASES / "bypass128_lora_fp32" / "comfyui.png"))
    ours = float(np.abs(pixels(bf16.image) - comfy_bf16).mean())
    theirs = float(np.abs(comfy_fp32 - comfy_bf16).mean())
    assert ours < theirs, (ours, theirs)
    assert np.abs(np.array(bf16.effective["sigmas"]) - np.array(meta("bypass128_lora_bf16gpu")["sigmas"])).max() <= 1e-6


def test_fp8_weights_and_stochastically_rounded_lora_redraw(engine, tmp_path):
    result = redraw(engine, tmp_path, "bypass128_lora_fp8")
    assert result.case.quantize == "fp8_e4m3fn" and result.case.loras[0].mode == "patched_fp32"
    mean, _, similarity = against_comfyui(result, "bypass128_lora_fp8")
    assert mean <= 1.5 and similarity >= 0.999, (mean, similarity)
    fp32 = pixels(Image.open(CASES / "bypass128_lora_fp32" / "comfyui.png"))
    assert float(np.abs(fp32 - pixels(result.image)).mean()) > mean  # fp8 changed the pixels, as in ComfyUI


# Each ComfyUI knob is needed: set back to the diffusers default, the redraw leaves the bar.
@pytest.mark.parametrize("name, change", [
    ("bypass128_lora_fp32", {"output_uint8": "round"}),
    ("bypass128_lora_fp32", {"prompt_encoding": "diffusers"}),
    ("bypass128_lora_fp32", {"base_shift": 0.5}),
    ("bypass128_lora_fp32", {"sigma_schedule": "normal"}),
    ("odd168x104_fp32", {"control_fit": "crop", "control_target": "requested"}),
    ("exif_bypass_fp32", {"control_exif_transpose": False, "size_source": "request", "width": 120, "height": 80}),
    ("alpha_bypass_fp32", {"control_encode": "resize16", "latent_padding": "none"}),
    ("weighted_fp32", {"prompt_encoding": "diffusers"}),
])
def test_each_comfyui_knob_is_needed(engine, tmp_path, name, change):
    mean, _, _ = against_comfyui(redraw(engine, tmp_path, name, **change), name)
    assert mean > 0.25, (change, mean)


# --- the importer --------------------------------------------------------------------------------------------


def test_api_json_png_chunk_and_ui_workflow_import_to_the_same_case(tmp_path):
    from_api, notes = imported(tmp_path, "bypass128_lora_fp32")
    from_png, _ = imported(tmp_path, "bypass128_lora_fp32", "comfyui.png")
    ui = json.loads((DATA / "workflow_ui_bypass128_lora.json").read_text())
    from_ui, ui_notes = imported(tmp_path, "bypass128_lora_fp32", graph=ui)
    assert from_api.key() == from_png.key() == from_ui.key()
    assert (from_api.seed, from_api.steps, from_api.guidance, from_api.prompt) == (12, 8, 4.0, "zxq style photo of "
                                                                                      "the image")
    assert (from_api.size_source, from_api.control_target, from_api.snap) == ("control", "none", "floor8")
    assert [(Path(lo.path).name, lo.scale, lo.mode) for lo in from_api.loras] == [("tiny_bf16.safetensors", 1.0,
                                                                                   "patched_fp32")]
    assert any("cfg 1" in n and "135 ConditioningZeroOut" in n for n in notes)
    assert any("42 FluxKontextImageScale (bypassed)" in n for n in ui_notes)
    chunk = Image.open(CASES / "bypass128_lora_fp32" / "comfyui.png").text["prompt"]
    assert json.loads(chunk) == api("bypass128_lora_fp32")


def test_ui_workflow_bypass_and_mute_follow_comfyui(tmp_path):
    ui = json.loads((DATA / "workflow_ui_bypass128_lora.json").read_text())
    on = copy.deepcopy(ui)
    next(n for n in on["nodes"] if n["id"] == 42)["mode"] = 0  # FluxKontextImageScale runs
    case, _ = imported(tmp_path, "bypass128_lora_fp32", graph=on)
    assert (case.size_source, case.control_target, case.control_fit) == ("control_preferred", "preferred",
                                                                         "crop_then_resize")
    muted = copy.deepcopy(ui)
    next(n for n in muted["nodes"] if n["id"] == 40)["mode"] = 2  # a muted LoRA loader: the sampler loses its model
    with pytest.raises(ParityError, match=r"node 31 \(KSampler\): model: required input is not connected"):
        imported(tmp_path, "bypass128_lora_fp32", graph=muted)
    seeded = copy.deepcopy(ui)
    next(n for n in seeded["nodes"] if n["id"] == 200)["widgets_values"] = [77, "fixed"]  # the PrimitiveNode
    assert imported(tmp_path, "bypass128_lora_fp32", graph=seeded)[0].seed == 77


def test_model_sampling_flux_sets_the_shift_from_its_own_size(engine, tmp_path):
    graph = api("bypass128_lora_fp32")
    graph["50"] = {"class_type": "ModelSamplingFlux", "inputs": {"model": ["40", 0], "max_shift": 1.15,
                                                                 "base_shift": 0.5, "width": 512, "height": 512}}
    graph["31"]["inputs"]["model"] = ["50", 0]
    case, notes = imported(tmp_path, "bypass128_lora_fp32", graph=graph)
    slope = (1.15 - 0.5) / (4096 - 256)  # comfy_extras/nodes_model_advanced.py:168-174
    mu = (512 * 512 / 256) * slope + (0.5 - slope * 256)
    assert case.base_shift == case.max_shift == mu and any("ModelSamplingFlux" in n for n in notes)
    result = engine.run(case.replace(dtype="fp32", steps=2))
    assert result.effective["mu"] == mu  # flat line: the same at every output size


def test_empty_latent_and_image_scale_sizes(tmp_path):
    graph = api("stock_kontext_scale_fp32")
    graph["188"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 200, "height": 136, "batch_size": 1}}
    graph["31"]["inputs"]["latent_image"] = ["188", 0]
    case, _ = imported(tmp_path, "stock_kontext_scale_fp32", graph=graph)
    assert (case.size_source, case.width, case.height, case.snap) == ("request", 200, 136, "floor8")
    assert case.control_target == "preferred"  # the reference is still FluxKontextImageScale's
    two_sizes = api("odd168x104_fp32")
    two_sizes["188"] = graph["188"]
    two_sizes["31"]["inputs"]["latent_image"] = ["188", 0]
    with pytest.raises(ParityError, match=r"node 188 \(EmptySD3LatentImage\): 200x136 while the reference image is "
                                          r"scaled to 168x104"):
        imported(tmp_path, "odd168x104_fp32", graph=two_sizes)
    keep_aspect = api("odd168x104_fp32")
    keep_aspect["42"]["inputs"].update(width=96, height=0, crop="center")
    case, _ = imported(tmp_path, "odd168x104_fp32", graph=keep_aspect)
    assert (case.width, case.height, case.control_fit) == (96, 54, "crop_then_resize")  # 192x108 at width 96


def test_other_common_nodes_give_the_same_case(tmp_path):
    reference, _ = imported(tmp_path, "bypass128_lora_fp32")
    advanced = api("bypass128_lora_fp32")
    inputs = advanced["31"]["inputs"]
    advanced["31"] = {"class_type": "KSamplerAdvanced", "inputs": {
        **{k: v for k, v in inputs.items() if k not in ("seed", "denoise")}, "add_noise": "enable",
        "noise_seed": inputs["seed"], "start_at_step": 0, "end_at_step": 10000, "return_with_leftover_noise": "disable"}}
    flux_text = api("bypass128_lora_fp32")
    flux_text["6"] = {"class_type": "CLIPTextEncodeFlux", "inputs": {"clip": ["38", 0], "guidance": 4.0,
                                                                     "clip_l": "zxq style photo of the image",
                                                                     "t5xxl": "zxq style photo of the image"}}
    flux_text["31"]["inputs"]["positive"] = ["177", 0]  # no FluxGuidance: the encoder's guidance
    primitive = api("bypass128_lora_fp32")
    primitive["300"] = {"class_type": "PrimitiveInt", "inputs": {"value": 12}}
    primitive["31"]["inputs"]["seed"] = ["300", 0]
    both = api("bypass128_lora_fp32")
    both["40"] = {"class_type": "LoraLoader", "inputs": {"model": ["37", 0], "clip": ["38", 0], "strength_clip": 1.0,
                                                         "lora_name": "tiny_bf16.safetensors", "strength_model": 1.0}}
    both["6"]["inputs"]["clip"] = ["40", 1]
    for graph in (advanced, flux_text, primitive, both):
        case, notes = imported(tmp_path, "bypass128_lora_fp32", graph=graph)
        assert case.key() == reference.key(), graph
    assert any("strength_clip" in n for n in notes)
    two = api("bypass128_lora_fp32")
    two["137"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    path = tmp_path / "two.json"
    path.write_text(json.dumps(two))
    text, _ = import_request(path, "comfyui", out=tmp_path / "two.yaml", control_dir=DEMO / "tiny_bf16" / "control",
                             lora_dir=DEMO / "tiny_bf16")
    (tmp_path / "two.yaml").write_text(text)
    assert [c.name for c in load_plan(tmp_path / "two.yaml").cases] == ["two/136", "two/137"]


def _broken(name: str, edit) -> dict:
    graph = api(name)
    edit(graph)
    return graph


@pytest.mark.parametrize("edit, problem", [
    (lambda g: g["31"]["inputs"].update(cfg=3.5), r"node 31 \(KSampler\): cfg 3.5: ComfyUI then also runs the "
                                                  r"negative"),
    (lambda g: g["31"]["inputs"].update(sampler_name="dpmpp_2m"),
     r'node 31 \(KSampler\): sampler_name "dpmpp_2m" is not modelled; kontext-parity models euler'),
    (lambda g: g["31"]["inputs"].update(scheduler="karras"),
     r'scheduler "karras" is not modelled; kontext-parity models simple, normal, beta, sgm_uniform'),
    (lambda g: g["31"]["inputs"].update(denoise=0.6), r"denoise 0.6 below 1"),
    (lambda g: g["37"].update(class_type="UnetLoaderGGUF"),
     r"node 37 \(UnetLoaderGGUF\): not modelled in the model chain"),
    (lambda g: g["42"]["inputs"].update(upscale_method="bilinear"),
     r'node 42 \(ImageScale\): upscale_method "bilinear" is not modelled; kontext-parity models lanczos'),
    (lambda g: g["8"].update(class_type="VAEDecodeTiled"), r"node 8 \(VAEDecodeTiled\): tiled decoding"),
    (lambda g: g["146"]["inputs"].update(image2=["142", 0]), r"node 146 \(ImageStitch\): stitching a second image"),
    (lambda g: g.update({"178": {"class_type": "ReferenceLatent", "inputs": {"conditioning": ["177", 0],
                                                                             "latent": ["124", 0]}}})
     or g["35"]["inputs"].update(conditioning=["178", 0]), r"2 ReferenceLatent images"),
    (lambda g: g.pop("136"), r"has no SaveImage or PreviewImage node"),
])
def test_what_cannot_be_modelled_is_refused_naming_the_node(tmp_path, edit, problem):
    graph = _broken("odd168x104_fp32", edit)
    with pytest.raises(ParityError, match=problem) as err:
        imported(tmp_path, "odd168x104_fp32", graph=graph)
    assert str(err.value).startswith(f"{tmp_path / 'odd168x104_fp32.json'}: ")


def test_textual_inversion_syntax_is_refused_when_the_prompt_is_encoded(engine, tmp_path):
    case, _ = imported(tmp_path, "bypass128_lora_fp32", graph=_broken(
        "bypass128_lora_fp32", lambda g: g["6"]["inputs"].update(text="an embedding:foo edit")))
    with pytest.raises(ParityError, match="embedding: syntax .* not modelled"):
        engine.run(case.replace(dtype="fp32", steps=1))


def test_files_are_found_in_the_given_folders_or_refused(tmp_path):
    path = CASES / "bypass128_lora_fp32" / "api_prompt.json"
    with pytest.raises(ParityError, match=r'node 142 \(LoadImage\) image: "ctrl_square_128.png" is in ComfyUI\'s '
                                          r"input folder: pass --control-dir"):
        import_request(path, "comfyui", out=tmp_path / "c.yaml")
    with pytest.raises(ParityError, match=r'"ctrl_square_128.png" is not in --control-dir'):
        import_request(path, "comfyui", out=tmp_path / "c.yaml", control_dir=tmp_path)
    with pytest.raises(ParityError, match=r'node 40 \(LoraLoaderModelOnly\) lora_name: "tiny_bf16.safetensors" is '
                                          r"not in --lora-dir"):
        import_request(path, "comfyui", out=tmp_path / "c.yaml", control_dir=DEMO / "tiny_bf16" / "control",
                       lora_dir=tmp_path)
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    with pytest.raises(ParityError, match="the PNG has no ComfyUI `prompt` or `workflow` text chunk"):
        import_request(plain, "comfyui")
    text = tmp_path / "notes.json"
    text.write_text('{"hello": "world"}')
    with pytest.raises(ParityError, match=r"node hello: is not an API-format node"):
        import_request(text, "comfyui")


def test_cli_import_writes_base_and_a_runnable_case_file(tmp_path):
    run = DEMO / "tiny_bf16"
    out = tmp_path / "imported" / "comfy.yaml"
    args = ["import", str(CASES / "stock_kontext_scale_fp32" / "comfyui.png"), "--format", "comfyui", "--out",
            str(out), "--control-dir", str(run / "control"), "--lora-dir", str(run), "--base", "embedded"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(out.read_text())
    assert data["base"] == "embedded" and "compute dtype bf16" in result.output
    [case] = load_plan(out).cases
    assert (case.size_source, case.control_target, case.steps, case.seed, case.quantize) == (
        "control_preferred", "preferred", 8, 11, "none")
    bad = CliRunner().invoke(main, ["import", str(CASES / "stock_kontext_scale_fp32" / "api_prompt.json"),
                                    "--format", "comfyui"])
    assert bad.exit_code == 2 and "pass --control-dir" in bad.output and len(bad.output.strip().splitlines()) == 1


def test_comfyui_profile_is_the_stock_template():
    profile = load_profile("comfyui")
    knobs = profile.knobs
    assert (profile.defaults["steps"], profile.defaults["guidance"]) == (20, 2.5)
    assert (knobs["sampler"], knobs["sigma_schedule"], knobs["base_shift"], knobs["max_shift"]) == (
        "euler_x0", "simple", 1.15, 1.15)
    assert (knobs["quantize"], knobs["dtype"], knobs["lora_mode"], knobs["output_uint8"]) == (
        "fp8_scaled", "bf16", "patched_fp32", "truncate")
    text = (Path(profile.path)).read_text()
    for key in knobs:  # every value names its source
        line = next(line for line in text.splitlines() if line.strip().startswith(f"{key}:"))
        assert "#" in line or key in ("snap", "max_area", "max_shift", "true_cfg_scale", "size_source"), key


def test_parity_profiles_lists_comfyui():
    out = CliRunner().invoke(main, ["profiles"]).output
    assert "\ncomfyui: ComfyUI's stock FLUX.1 Kontext [dev] template" in f"\n{out}"


def test_tool_cases_carry_their_provenance():
    for name in FP32 + ["bypass128_lora_bf16gpu", "bypass128_lora_fp8"]:
        info = meta(name)
        assert info["model_sampling_shift"] == 1.15 and info["noise"]["dtype"] == "torch.float32"
        assert (CASES / name / "comfyui.png").stat().st_size < 5 * 1024 * 1024
    assert not list(DATA.rglob("*.py"))  # data only: nothing of ComfyUI or of the tool that ran it
