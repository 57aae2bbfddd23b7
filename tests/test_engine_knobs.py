"""Each engine knob acts where it should, on the tiny Kontext model (64-128 px, 1-3 steps)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from parity.case import Case
from parity.knobs import lookup
from parity.knobs.sizing import pipeline_output_size, size_plan


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def _case(control, **kw) -> Case:
    base = dict(prompt="make it red", control_image=str(control), width=64, height=64, steps=2, guidance=3.5,
                seed=3, generator="cpu", snap="none", max_area=64 * 64, control_target="none",
                control_auto_resize=False, dtype="bf16")
    base.update(kw)
    return Case(**base)


def _encode(engine, case: Case):
    """The engine's control encoding for a case: (handed image, packed latents, trace)."""
    pipe, _ = engine.pipeline(case.dtype, case.quantize)
    source = engine._control_source(case.control_image)
    sizes = size_plan(case, source.size(case.control_exif_transpose))
    handed, packed, _, trace = engine._encode_control(pipe, case, sizes, source, torch.bfloat16,
                                                      pipe._execution_device)
    return handed, packed, trace


# --- sizes ---------------------------------------------------------------------------------------
# no size here is a rounding tie: round* use Python's round(), half to even (round8 of 100 is 96)
ODD_SIZES = [(202, 150), (101, 59), (122, 234), (33, 17), (777, 555)]
EXPECTED_SNAP = {
    "none": [(202, 150), (101, 59), (122, 234), (33, 17), (777, 555)],
    "aitk": [(200, 144), (96, 64), (120, 232), (64, 64), (776, 552)],
    "floor8": [(200, 144), (96, 56), (120, 232), (32, 16), (776, 552)],
    "floor16": [(192, 144), (96, 48), (112, 224), (32, 16), (768, 544)],
    "floor32": [(192, 128), (96, 32), (96, 224), (32, 32), (768, 544)],
    "floor64": [(192, 128), (64, 64), (64, 192), (64, 64), (768, 512)],
    "round8": [(200, 152), (104, 56), (120, 232), (32, 16), (776, 552)],
    "round16": [(208, 144), (96, 64), (128, 240), (32, 16), (784, 560)],
    "round32": [(192, 160), (96, 64), (128, 224), (32, 32), (768, 544)],
    "round64": [(192, 128), (128, 64), (128, 256), (64, 64), (768, 576)],
}


@pytest.mark.parametrize("rule", sorted(EXPECTED_SNAP))
def test_snapping_rules_on_odd_sizes(rule):
    snap = lookup("snap", rule)
    assert [snap(w, h) for w, h in ODD_SIZES] == EXPECTED_SNAP[rule]


def test_every_registered_snapping_rule_gives_usable_sizes():
    """Rules added later (serving systems' own) must at least give positive integer sizes the pipeline takes."""
    from parity.knobs import choices

    assert set(EXPECTED_SNAP) <= set(choices("snap"))
    for rule in choices("snap"):
        for w, h in ODD_SIZES:
            out = lookup("snap", rule)(w, h)
            assert all(isinstance(v, int) and v >= 16 for v in out), (rule, (w, h), out)
            assert min(pipeline_output_size(*out, out[0] * out[1])) >= 16, (rule, (w, h), out)


def test_aitk_size_chain_matches_the_recorded_previews():
    # README of the genuine fixtures: requested size -> 8-floor (min 64) -> pipeline 16-floor
    for asked, output in [((200, 136), (192, 128)), ((202, 150), (192, 144)), ((100, 60), (96, 64)),
                          ((120, 232), (112, 224))]:
        requested = lookup("snap", "aitk")(*asked)
        assert pipeline_output_size(*requested, requested[0] * requested[1]) == output


def test_pipeline_rescales_to_max_area_keeping_the_requested_aspect():
    assert pipeline_output_size(202, 150, 1024 * 1024) == (1184, 880)
    assert pipeline_output_size(64, 64, 1024 * 1024) == (1024, 1024)


def test_engine_output_size_follows_the_snapping_rule(engine, control_png):
    result = engine.run(_case(control_png, width=202, height=150, snap="aitk", max_area=None, steps=1,
                              control_target="requested"))
    assert result.raw_image.size == (192, 144)
    eff = result.effective
    assert (eff["requested_width"], eff["requested_height"], eff["max_area"]) == (200, 144, 200 * 144)
    assert eff["control_size_passed"] == [200, 144] and eff["control_size_encoded"] == [192, 144]


# --- control image preparation -------------------------------------------------------------------
RESIZES = ["nearest", "bilinear", "bicubic", "lanczos", "box"]


def test_each_resize_method_changes_the_control_latents(engine, control_png):
    # 96x80 control stretched to 64x64: every filter gives other pixels, hence other latents
    encoded = {m: _encode(engine, _case(control_png, control_target="requested", control_resize=m))
               for m in RESIZES}
    for m in RESIZES:
        assert encoded[m][2]["control_size_passed"] == [64, 64]
    for a, b in itertools.combinations(RESIZES, 2):
        assert not torch.equal(encoded[a][1], encoded[b][1]), (a, b)


def test_resize_method_is_inert_when_nothing_is_resized(engine, tmp_path, control_png):
    exact = tmp_path / "exact64.png"
    Image.open(control_png).convert("RGB").crop((0, 0, 64, 64)).save(exact)
    encoded = [_encode(engine, _case(exact, control_target="requested", control_resize=m))[1] for m in RESIZES]
    assert all(torch.equal(encoded[0], other) for other in encoded[1:])


def test_fit_modes_differ(engine, control_png):
    encoded = {fit: _encode(engine, _case(control_png, control_target="requested", control_fit=fit))
               for fit in ("stretch", "crop", "fit")}
    for fit, (handed, _, _) in encoded.items():
        assert handed.size == (64, 64), fit
    for a, b in itertools.combinations(encoded, 2):
        assert not np.array_equal(_pixels(encoded[a][0]), _pixels(encoded[b][0])), (a, b)
        assert not torch.equal(encoded[a][1], encoded[b][1]), (a, b)
    # fit pads with black bars (96x80 into 64x64: 64x53 inside)
    padded = _pixels(encoded["fit"][0])
    assert padded[0].max() == 0 and padded[-1].max() == 0


@pytest.fixture()
def exif_jpeg(tmp_path, control_png) -> str:
    """A 96x64 JPEG whose EXIF says 'rotate 90 CW to display' (orientation 6)."""
    image = Image.open(control_png).convert("RGB").crop((0, 0, 96, 64))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    image.save(path, quality=95, exif=exif)
    return str(path)


def test_exif_transpose_on_off_differs(engine, exif_jpeg):
    with Image.open(exif_jpeg) as probe:
        assert probe.getexif()[0x0112] == 6 and probe.size == (96, 64)
    off = _encode(engine, _case(exif_jpeg, width=64, height=64, control_target="requested"))
    on = _encode(engine, _case(exif_jpeg, width=64, height=64, control_target="requested",
                               control_exif_transpose=True))
    assert not np.array_equal(_pixels(off[0]), _pixels(on[0]))
    assert not torch.equal(off[1], on[1])
    # without a target the image keeps its own (rotated or not) size
    off = _encode(engine, _case(exif_jpeg))
    on = _encode(engine, _case(exif_jpeg, control_exif_transpose=True))
    assert off[0].size == (96, 64) and on[0].size == (64, 96)
    assert off[2]["control_size_encoded"] == [96, 64] and on[2]["control_size_encoded"] == [64, 96]


def test_auto_resize_changes_the_encoded_control_size(engine, control_png):
    off = _encode(engine, _case(control_png))
    on = _encode(engine, _case(control_png, control_auto_resize=True))
    assert off[2]["control_size_encoded"] == [96, 80]
    assert on[2]["control_size_encoded"] == [1104, 944]  # preferred Kontext resolution nearest 96/80
    # packed tokens: (H/16) * (W/16)
    assert off[1].shape[1] == 5 * 6 and on[1].shape[1] == 59 * 69


# --- schedule, guidance, seeds -------------------------------------------------------------------
def test_static_vs_dynamic_shift_changes_sigmas_and_timesteps(engine, control_png):
    pipe, _ = engine.pipeline("bf16")
    dynamic = engine._scheduler(pipe, _case(control_png, steps=8), 64, pipe._execution_device)
    static = engine._scheduler(pipe, _case(control_png, steps=8, dynamic_shifting=False), 64, pipe._execution_device)
    assert dynamic[3] == pytest.approx(0.4675) and static[3] is None
    assert not torch.allclose(dynamic[2], static[2]) and not torch.allclose(dynamic[1], static[1])
    # AI Toolkit's recorded schedule for 64 tokens, 8 steps (fixture README)
    recorded = [1000, 917.8, 827.2, 726.8, 614.8, 489.2, 347.3, 185.7]
    assert [round(float(t), 1) for t in dynamic[1]] == recorded
    # static shift 3: sigma' = 3s / (1 + 2s)
    s = np.linspace(1.0, 1 / 8, 8)
    assert np.allclose(static[2][:-1].numpy(), 3 * s / (1 + 2 * s), atol=1e-6)
    result = engine.run(_case(control_png, dynamic_shifting=False))
    assert result.effective["mu"] is None


def test_guidance_value_changes_the_output(engine, control_png):
    low = engine.run(_case(control_png, guidance=2.5))
    high = engine.run(_case(control_png, guidance=4.0))
    assert low.effective["guidance_embedding"] == 2.5 and high.effective["guidance_embedding"] == 4.0
    assert not np.array_equal(_pixels(low.raw_image), _pixels(high.raw_image))


def test_true_cfg_doubles_transformer_calls(engine, control_png):
    plain = engine.run(_case(control_png, steps=3))
    cfg = engine.run(_case(control_png, steps=3, guidance_mode="true_cfg", true_cfg_scale=2.0,
                           negative_prompt="blurry"))
    assert plain.effective["transformer_calls"] == 3 and cfg.effective["transformer_calls"] == 6
    assert cfg.effective["true_cfg"] == 2.0 and plain.effective["true_cfg"] is None
    assert not np.array_equal(_pixels(plain.raw_image), _pixels(cfg.raw_image))
    # scale 1 (or no scale > 1): true CFG does not run, as in diffusers
    off = engine.run(_case(control_png, steps=3, guidance_mode="true_cfg", true_cfg_scale=1.0, negative_prompt="x"))
    assert off.effective["transformer_calls"] == 3


def test_same_case_twice_is_bit_identical(engine, control_png):
    case = _case(control_png)
    first, second = engine.run(case), engine.run(case)
    assert np.array_equal(_pixels(first.raw_image), _pixels(second.raw_image))
    assert first.encoded == second.encoded


def test_generator_cpu_and_global_draw_the_same_noise(engine, control_png):
    pipe, _ = engine.pipeline("bf16")
    device = pipe._execution_device

    def noise(kind, seed):
        generator = lookup("generator", kind)(seed, device)
        return engine._initial_noise(pipe, 64, 64, torch.bfloat16, device, generator)[0]

    assert torch.equal(noise("cpu", 5), noise("global", 5))
    assert not torch.equal(noise("cpu", 5), noise("cpu", 6))
    assert not torch.equal(noise("global", 5), noise("global", 6))
    cpu = engine.run(_case(control_png, seed=5, generator="cpu"))
    glob = engine.run(_case(control_png, seed=5, generator="global"))
    other = engine.run(_case(control_png, seed=6, generator="global"))
    assert np.array_equal(_pixels(cpu.raw_image), _pixels(glob.raw_image))
    assert not np.array_equal(_pixels(glob.raw_image), _pixels(other.raw_image))


# --- output encoding -----------------------------------------------------------------------------
def test_output_formats(engine, control_png):
    results = {fmt: engine.run(_case(control_png, width=96, height=64, max_area=96 * 64, output_format=fmt))
               for fmt in ("png", "jpeg", "webp")}
    raw = _pixels(results["png"].raw_image)
    for fmt, result in results.items():
        assert np.array_equal(_pixels(result.raw_image), raw), fmt  # encoding happens after the pixels
    assert np.array_equal(_pixels(results["png"].image), raw)
    assert results["png"].encoded.startswith(b"\x89PNG")
    assert results["jpeg"].encoded.startswith(b"\xff\xd8") and results["webp"].encoded[8:12] == b"WEBP"
    for fmt in ("jpeg", "webp"):
        assert not np.array_equal(_pixels(results[fmt].image), raw), fmt
    assert not np.array_equal(_pixels(results["jpeg"].image), _pixels(results["webp"].image))
    q95 = engine.run(_case(control_png, width=96, height=64, max_area=96 * 64, output_format="jpeg", output_quality=95))
    assert q95.encoded != results["jpeg"].encoded


# --- the loop itself -----------------------------------------------------------------------------
def test_engine_loop_equals_the_diffusers_pipeline(engine, control_png):
    pipe, _ = engine.pipeline("bf16")
    h, w, seed, steps, guidance = 64, 96, 11, 3, 2.5
    with torch.no_grad():
        expected = pipe(image=Image.open(control_png).convert("RGB"), prompt="make it red", height=h, width=w,
                        num_inference_steps=steps, guidance_scale=guidance,
                        generator=torch.Generator("cpu").manual_seed(seed), max_area=h * w,
                        _auto_resize=False).images[0]
    result = engine.run(_case(control_png, width=w, height=h, steps=steps, guidance=guidance, seed=seed,
                              max_area=h * w))
    assert result.raw_image.size == expected.size == (w, h)
    assert np.array_equal(_pixels(result.raw_image), _pixels(expected))
