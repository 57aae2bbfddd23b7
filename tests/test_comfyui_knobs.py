"""The knob alternatives behind the comfyui profile, each against ComfyUI's own results where it has one
(tests/data/comfyui: sigmas of its schedulers, its stochastic rounding, its tokenizer and text encoders, its noise),
and the defaults they must leave untouched."""
from __future__ import annotations

import json
import zlib
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from parity.case import Case, LoraSpec
from parity.cli import main
from parity.errors import ParityError
from parity.knobs import choices, lookup
from parity.knobs.schedule import time_shift
from parity.knobs.text import weighted_segments

DATA = Path(__file__).resolve().parent / "data" / "comfyui"
CASES = DATA / "cases"
DEMO = Path(__file__).resolve().parent / "data" / "tiny-runs"
LORA = DEMO / "tiny_bf16" / "tiny_bf16.safetensors"
NEW_FIELDS = ("noise", "latent_padding", "control_encode", "sampler", "latent_dtype", "timestep_dtype",
              "prompt_encoding", "text_encoder_dtype", "output_uint8")


def meta(name: str) -> dict:
    return json.loads((CASES / name / "meta.json").read_text())


# --- schedules -------------------------------------------------------------------------------------------------


def _scheduled(schedule: str, steps: int, mu: float) -> np.ndarray:
    from diffusers import FlowMatchEulerDiscreteScheduler

    times = lookup("sigma_schedule", schedule)(steps, partial(time_shift, mu=mu, shift=3.0))
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    scheduler.set_timesteps(sigmas=times, mu=mu)
    return scheduler.sigmas.numpy()


def test_comfyui_schedulers_equal_comfyuis_sigmas():
    """simple, normal, beta, sgm_uniform at 9 step counts and 5 shifts, as ComfyUI's calculate_sigmas gives them."""
    reference = json.loads((DATA / "sigmas.json").read_text())
    assert len(reference) == 180
    for key, expected in reference.items():
        schedule, steps, mu = key.split("/")
        ours = _scheduled(schedule, int(steps), float(mu))
        assert len(ours) == len(expected), key  # beta drops repeated entries, as ComfyUI does
        assert np.abs(ours - np.array(expected, dtype=np.float32)).max() <= 1e-6, key


def test_simple_schedule_is_flux_linspace_only_when_steps_divide_the_table():
    assert np.allclose(lookup("sigma_schedule", "simple")(8), lookup("sigma_schedule", "flux")(8), atol=0, rtol=0)
    seven = lookup("sigma_schedule", "simple")(7)
    assert seven[1] == (10000 - int(10000 / 7)) / 10000 != lookup("sigma_schedule", "flux")(7)[1]


# --- sampler, noise, output ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_flow_match_step_is_the_schedulers_step(dtype):
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.25, 4), device="cpu")
    scheduler.set_begin_index(0)
    step = lookup("sampler", "flow_match_euler")().step
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 4, 6, generator=g).to(dtype)
    for i, t in enumerate(scheduler.timesteps):
        v = torch.randn(1, 16, 4, 6, generator=g).to(dtype)
        expected = scheduler.step(v, t, x, return_dict=False)[0]
        ours = step(x, v, scheduler.sigmas[i], scheduler.sigmas[i + 1])
        assert ours.dtype == expected.dtype and torch.equal(ours, expected)
        x = expected


def test_euler_x0_keeps_a_float32_state_through_the_denoised_estimate():
    step = lookup("sampler", "euler_x0")().step
    x = torch.randn(1, 16, 4, 4)
    v = torch.randn(1, 16, 4, 4).to(torch.bfloat16)
    sigma, nxt = torch.tensor(0.75), torch.tensor(0.5)
    out = step(x, v, sigma, nxt)
    assert out.dtype == torch.float32
    denoised = x - v.float() * sigma
    assert torch.equal(out, x + (x - denoised) / sigma * (nxt - sigma))
    assert not torch.equal(out, x + (nxt - sigma) * v.float())  # the round trip rounds differently


@pytest.mark.parametrize("name", ["odd168x104_fp32", "exif_bypass_fp32"])
def test_fp32_cpu_noise_from_the_global_generator_is_comfyuis(engine, name):
    pipe, _ = engine.pipeline("bf16")
    info = meta(name)
    reference = np.load(CASES / name / "noise.npy")
    generator = lookup("generator", "global")(info["noise"]["seed"], torch.device("cpu"))
    _, _, h, w = info["latent_shape"]
    noise, ids = engine._initial_noise(pipe, h * 8, w * 8, torch.float32, torch.device("cpu"), generator,
                                       noise="fp32_cpu", grid=lookup("latent_padding", "circular")())
    assert noise.dtype == torch.float32 and np.array_equal(noise.numpy(), reference)
    assert ids.shape[0] == ((h + 1) // 2) * ((w + 1) // 2)  # odd sides: ids of the padded grid (ceil)
    generator = lookup("generator", "global")(info["noise"]["seed"], torch.device("cpu"))
    latent = lookup("noise", "latent")((1, 16, h, w), generator, torch.device("cpu"), torch.bfloat16)
    assert not np.array_equal(latent.float().numpy(), reference)  # diffusers draws in the model's dtype


def test_circular_padding_copies_the_opposite_edge():
    pad = lookup("latent_padding", "circular")().pad
    x = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(1, 2, 3, 5)
    padded = pad(x)
    assert padded.shape == (1, 2, 4, 6)
    assert torch.equal(padded[:, :, :3, :5], x) and torch.equal(padded[:, :, 3, :5], x[:, :, 0])
    assert torch.equal(padded[:, :, :3, 5], x[:, :, :, 0])
    assert lookup("latent_padding", "none")().pad(x) is x
    assert (lookup("latent_padding", "none")().pixel_align, lookup("latent_padding", "circular")().pixel_align) == (
        16, 8)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_round_is_diffusers_postprocess_and_truncate_floors(engine, dtype):
    pipe, _ = engine.pipeline("bf16")
    decoded = (torch.randn(1, 3, 24, 40, generator=torch.Generator().manual_seed(3)) * 1.2).to(dtype)
    expected = pipe.image_processor.postprocess(decoded, output_type="pil")[0]
    assert np.array_equal(np.asarray(lookup("output_uint8", "round")(decoded)), np.asarray(expected))
    floored = np.asarray(lookup("output_uint8", "truncate")(decoded)).astype(int)
    exact = np.clip((decoded.float().permute(0, 2, 3, 1).numpy()[0] + 1) / 2, 0, 1) * 255
    assert np.array_equal(floored, np.floor(exact).astype(int))
    inside = (exact > 0) & (exact < 255)
    lower = (np.asarray(expected).astype(int) - floored)[inside]
    assert set(np.unique(lower)) == {0, 1} and 0.3 < lower.mean() < 0.7  # about half the values one lower


# --- control image --------------------------------------------------------------------------------------------


def _gradient(width: int, height: int) -> Image.Image:
    x = np.arange(width)[None, :, None] * 3 + np.arange(height)[:, None, None] * 7
    return Image.fromarray((x + np.array([0, 50, 100])).astype(np.uint8) % 251)


def test_vae_encode_crop_to_eight_is_centred_like_comfyui():
    step = lookup("control_encode", "crop8")()
    image = _gradient(90, 150)
    assert step.size(image.size, True) == (88, 144)
    out = step.apply(image, step.size(image.size, True), "nearest")
    assert out.size == (88, 144)
    assert np.array_equal(np.asarray(out), np.asarray(image)[3:147, 1:89])  # offset (side % 8) // 2
    exact = _gradient(64, 48)
    assert step.apply(exact, step.size(exact.size, False), "lanczos") is exact
    resize16 = lookup("control_encode", "resize16")()
    assert resize16.size(image.size, False) == (80, 144)
    assert resize16.apply(image, (80, 144), "lanczos").size == (80, 144)


def test_crop_then_resize_crops_to_the_target_aspect_first():
    fit = lookup("fit", "crop_then_resize")
    image = _gradient(192, 108)
    seen = []

    def record(img, size):
        seen.append(img.size)
        return img.resize(size, Image.Resampling.LANCZOS)

    assert fit(image, (1392, 752), record).size == (1392, 752)
    assert seen == [(192, 104)]  # y = round((108 - 108 * (1.7778 / 1.8511)) / 2) = 2 rows off each side
    assert lookup("fit", "crop")(image, (1392, 752), record).size == (1392, 752)
    assert seen[-1] != (192, 104)  # the diffusers-style crop scales first
    assert lookup("control_target", "preferred")((1, 1), (1, 1), image_size=(192, 108)) == (1392, 752)
    assert lookup("control_target", "asked")((168, 96), (160, 96), asked=(170, 100)) == (170, 100)


# --- text --------------------------------------------------------------------------------------------------------


def test_prompt_weights_and_tokens_are_comfyuis(engine):
    pipe, _ = engine.pipeline("bf16")
    for item in json.loads((DATA / "prompts.json").read_text()):
        prompt = item["prompt"]
        assert [list(s) for s in weighted_segments(prompt)] == item["segments"], prompt
        plan = lookup("prompt_encoding", "comfyui")(prompt, pipe.tokenizer, pipe.tokenizer_2)
        assert list(plan.t5_ids) == item["t5"], prompt
        assert list(plan.t5_weights or [1.0] * len(plan.t5_ids)) == item["t5_weights"], prompt
        assert list(plan.clip_ids) == item["clip_chunks"][0], prompt
        assert (len(item["clip_chunks"]) > 1) == any("CLIP chunk" in n for n in plan.notes), prompt
        assert plan.truncated == ""  # ComfyUI never truncates T5


@pytest.mark.parametrize("name", ["bypass128_lora_fp32", "weighted_fp32", "long_prompt_fp32"])
def test_text_states_are_comfyuis_with_fp16_weights(engine, name):
    case = Case(prompt=meta(name)["config"]["prompt"], dtype="fp32", prompt_encoding="comfyui",
                text_encoder_dtype="fp16_fp32")
    pipe, _ = engine.pipeline("fp32")
    with torch.no_grad():  # as in Engine.run
        embeds, pooled, _, plan = engine._encode_prompt(pipe, case, case.prompt, torch.device("cpu"))
        full, _, _, _ = engine._encode_prompt(pipe, case.replace(text_encoder_dtype="pipeline"), case.prompt,
                                              torch.device("cpu"))
    t5, clip = np.load(CASES / name / "t5_embeds.npy"), np.load(CASES / name / "clip_pooled.npy")
    assert embeds.shape[1] == len(meta(name)["t5_tokens"]) == t5.shape[1]
    assert np.abs(embeds.numpy() - t5).max() <= 1e-4 and np.abs(pooled.numpy() - clip).max() <= 1e-5
    assert np.abs(full.numpy() - t5).max() > 1e-4  # float32 weights are another encoder


def test_diffusers_prompt_encoding_is_the_pipelines(engine):
    pipe, _ = engine.pipeline("bf16")
    case = Case(prompt="make it red")
    with torch.no_grad():  # as in Engine.run (grad mode picks other kernels)
        embeds, pooled, text_ids, plan = engine._encode_prompt(pipe, case, case.prompt, torch.device("cpu"))
        expected = pipe.encode_prompt(prompt=case.prompt, prompt_2=None, device=torch.device("cpu"),
                                      max_sequence_length=512)
    assert torch.equal(embeds, expected[0]) and torch.equal(pooled, expected[1]) and torch.equal(text_ids, expected[2])
    assert len(plan.t5_ids) == 512


# --- fp8 and LoRA patches ---------------------------------------------------------------------------------------


def test_stochastic_rounding_is_comfyuis_bit_for_bit():
    from parity.engine.quantize import stochastic_round_fp8

    tensors = load_file(str(DATA / "stochastic_rounding.safetensors"))
    with safe_open(str(DATA / "stochastic_rounding.safetensors"), "pt") as handle:
        keys = json.loads(handle.metadata()["keys"])
    for i, key in enumerate(keys):
        seed = zlib.crc32(key.encode())
        assert seed == int(tensors[f"{i}.seed"][0])  # ComfyUI's string_to_seed is CRC32
        for dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            ours = stochastic_round_fp8(tensors[f"{i}.input"], dtype, seed)
            theirs = tensors[f"{i}.{str(dtype).split('.')[-1]}"]
            assert torch.equal(ours.view(torch.uint8), theirs.view(torch.uint8)), (key, dtype)
            plain = tensors[f"{i}.input"].to(dtype)
            assert not torch.equal(ours.view(torch.uint8), plain.view(torch.uint8))


def test_fp8_storage_rounds_every_parameter_and_scaled_shares_one_scale_per_fused_tensor(engine):
    from parity.engine.bfl_layout import gather

    pipe, _ = engine.pipeline("fp32", "fp8_e4m3fn")
    for name, param in pipe.transformer.named_parameters():
        assert torch.equal(param, param.to(torch.float8_e4m3fn).float()), name
    storage = pipe.transformer._parity_storage
    assert storage.dtype == torch.float8_e4m3fn and "diffusion_model.double_blocks.0.img_attn.qkv.weight" in storage.layout
    scaled, _ = engine.pipeline("fp32", "fp8_scaled")
    store = scaled.transformer._parity_storage
    modules = dict(scaled.transformer.named_modules())
    key = "diffusion_model.single_blocks.1.linear1.weight"
    fused = gather({p.module: modules[p.module].weight.detach() for p in store.layout[key]}, store.layout[key])
    assert fused.shape == (32 * 3 + 128, 32)
    scale = store.scales[key]
    assert torch.equal((fused / scale).to(torch.float8_e4m3fn).float() * scale, fused)  # fp8 values times one scale
    assert float(fused.abs().max() / store.scales[key]) == pytest.approx(448, rel=1e-6)


def test_fp8_fast_rounds_every_linear_input(engine):
    pipe, _ = engine.pipeline("fp32", "fp8_e4m3fn_fast")
    linear = pipe.transformer.x_embedder
    x = torch.tensor([[0.1234, 1000.0, -1000.0, 3.3]] * 16).reshape(1, -1)
    x = x[:, :64]
    with torch.no_grad():
        out = linear(x)
        expected = torch.nn.functional.linear(x.clamp(-448, 448).to(torch.float8_e4m3fn).float(), linear.weight,
                                              linear.bias)
    assert torch.equal(out, expected)


def test_patched_lora_rounds_back_and_is_undone_exactly(engine):
    from parity.engine.lora import load_lora_file

    pipe, applier = engine.pipeline("fp32", "fp8_e4m3fn")
    lora = load_lora_file(LORA, pipe.transformer)
    module = "transformer_blocks.0.attn.to_k"
    before = {n: p.detach().clone() for n, p in pipe.transformer.named_parameters()}
    with applier.applied([(lora, 1.0, "patched_fp32")]):
        weight = applier.linear(module).weight
        assert torch.equal(weight, weight.to(torch.float8_e4m3fn).float())  # still fp8 values
        assert not torch.equal(weight, before[f"{module}.weight"])
    after = dict(pipe.transformer.named_parameters())
    assert all(torch.equal(after[n], p) for n, p in before.items())
    plain, plain_applier = engine.pipeline("fp32")
    down, up = lora.modules[module]
    base = plain_applier.linear(module).weight.detach().clone()
    with plain_applier.applied([(load_lora_file(LORA, plain.transformer), 0.7, "patched_fp32")]):
        assert torch.equal(plain_applier.linear(module).weight, base + 0.7 * (up @ down))


# --- LoRA files as ComfyUI users have them -----------------------------------------------------------------------

DOUBLE = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"), "txt_attn.proj": ("attn.to_add_out",),
          "img_mlp.0": ("ff.net.0.proj",), "img_mod.lin": ("norm1.linear",)}


def _bfl_lora(path: Path, style: str, alpha: float | None = None) -> dict:
    """The AI Toolkit LoRA's double-block modules in BFL names (fused qkv: stacked downs, block-diagonal ups)."""
    peft = load_file(str(LORA))
    out, expected = {}, {}
    for i in range(2):
        for bfl, parts in DOUBLE.items():
            downs = [peft[f"transformer.transformer_blocks.{i}.{p}.lora_A.weight"].float() for p in parts]
            ups = [peft[f"transformer.transformer_blocks.{i}.{p}.lora_B.weight"].float() for p in parts]
            down, up = torch.cat(downs), torch.block_diag(*ups)
            name = {"kohya": f"lora_unet_double_blocks_{i}_{bfl.replace('.', '_')}",
                    "bfl_ab": f"diffusion_model.double_blocks.{i}.{bfl}",
                    "bfl_down_up": f"diffusion_model.double_blocks.{i}.{bfl}"}[style]
            a, b = ("lora_A", "lora_B") if style == "bfl_ab" else ("lora_down", "lora_up")
            out[f"{name}.{a}.weight"], out[f"{name}.{b}.weight"] = down, up
            if alpha is not None:
                out[f"{name}.alpha"] = torch.tensor(alpha * down.shape[0])
            for p, d, u in zip(parts, downs, ups):
                expected[f"transformer_blocks.{i}.{p}"] = (d * (alpha or 1.0), u)
    save_file(out, str(path))
    return expected


@pytest.mark.parametrize("style, alpha, fmt", [("kohya", 2.0, "kohya"), ("bfl_ab", None, "diffusion_model"),
                                               ("bfl_down_up", 0.5, "diffusion_model")])
def test_comfyui_lora_formats_load_through_diffusers_converters(engine, tmp_path, style, alpha, fmt):
    from parity.engine.lora import load_lora_file

    pipe, _ = engine.pipeline("fp32")
    expected = _bfl_lora(tmp_path / "lora.safetensors", style, alpha)
    lora = load_lora_file(tmp_path / "lora.safetensors", pipe.transformer)
    assert lora.audit.format == fmt and set(lora.modules) == set(expected)
    for module, (down, up) in expected.items():  # fused qkv split back exactly; alpha/rank folded in
        ours_down, ours_up = lora.modules[module]
        scale = lora.alpha_scale(module)
        assert torch.allclose(ours_up @ ours_down * scale, up @ down, rtol=0, atol=1e-6), module


def test_same_image_from_the_peft_and_the_bfl_file(engine, tmp_path):
    from parity.engine.lora import load_lora_file

    pipe, _ = engine.pipeline("fp32")
    expected = _bfl_lora(tmp_path / "bfl.safetensors", "bfl_ab")
    peft = load_file(str(LORA))
    subset = {k: v for k, v in peft.items() if k.split(".lora_")[0][len("transformer."):] in expected}
    save_file(subset, str(tmp_path / "peft.safetensors"))
    control = str(DEMO / "tiny_bf16" / "control" / "ctrl_square_128.png")
    base = dict(prompt="zxq style photo", control_image=control, width=64, height=64, steps=2, dtype="fp32",
                max_area=None, control_auto_resize=False)
    images = [np.asarray(engine.run(Case(**base, loras=(LoraSpec(str(tmp_path / f), 1.0, "patched_fp32"),))).image)
              for f in ("peft.safetensors", "bfl.safetensors")]
    assert np.array_equal(*images)
    assert load_lora_file(tmp_path / "bfl.safetensors", pipe.transformer).audit.modules_applied == 12


def test_single_block_linear1_of_another_size_is_a_clear_error(engine, tmp_path):
    from parity.engine.lora import load_lora_file

    pipe, _ = engine.pipeline("fp32")
    save_file({"lora_unet_single_blocks_0_linear1.lora_down.weight": torch.zeros(4, 32),
               "lora_unet_single_blocks_0_linear1.lora_up.weight": torch.zeros(224, 4)}, str(tmp_path / "k.safetensors"))
    with pytest.raises(ParityError, match=r"k.safetensors: cannot convert a kohya LoRA: diffusers' converter splits "
                                          r"each single_blocks linear1 .* FLUX.1's full size"):
        load_lora_file(tmp_path / "k.safetensors", pipe.transformer)


def test_full_size_kohya_lora_maps_onto_every_flux_module(tmp_path):
    """FLUX.1's real sizes (a transformer built on the meta device: shapes only) and a rank-1 kohya file."""
    from diffusers import FluxTransformer2DModel

    from parity.engine.lora import load_lora_file

    with torch.device("meta"):
        transformer = FluxTransformer2DModel(guidance_embeds=True)
    rows = {"img_attn_qkv": 9216, "txt_attn_qkv": 9216, "img_attn_proj": 3072, "txt_attn_proj": 3072,
            "img_mlp_0": 12288, "img_mlp_2": 3072, "txt_mlp_0": 12288, "txt_mlp_2": 3072, "img_mod_lin": 18432,
            "txt_mod_lin": 18432}
    cols = {"img_mlp_2": 12288, "txt_mlp_2": 12288}
    tensors = {}
    for i in range(19):
        for name, out in rows.items():
            key = f"lora_unet_double_blocks_{i}_{name}"
            tensors[f"{key}.lora_down.weight"] = torch.zeros(1, cols.get(name, 3072), dtype=torch.bfloat16)
            tensors[f"{key}.lora_up.weight"] = torch.zeros(out, 1, dtype=torch.bfloat16)
    for i in range(38):
        for name, (out, inp) in {"linear1": (21504, 3072), "linear2": (3072, 15360), "modulation_lin": (9216, 3072)}.items():
            key = f"lora_unet_single_blocks_{i}_{name}"
            tensors[f"{key}.lora_down.weight"] = torch.zeros(1, inp, dtype=torch.bfloat16)
            tensors[f"{key}.lora_up.weight"] = torch.zeros(out, 1, dtype=torch.bfloat16)
    save_file(tensors, str(tmp_path / "full.safetensors"))
    lora = load_lora_file(tmp_path / "full.safetensors", transformer)
    assert lora.audit.format == "kohya" and not lora.audit.dropped
    assert lora.audit.modules_applied == 19 * 14 + 38 * 6  # qkv and linear1 split into their diffusers modules


# --- the Case fields themselves ----------------------------------------------------------------------------------


def test_new_fields_default_to_diffusers_and_keep_old_keys():
    case = Case()
    assert [getattr(case, f) for f in NEW_FIELDS] == ["latent", "none", "resize16", "flow_match_euler", "model",
                                                      "model", "diffusers", "pipeline", "round"]
    assert case.key() == "809af6f483095892"  # the key results stored before these fields existed carry
    assert case.replace(sampler="euler_x0").key() != case.key()


def test_new_fields_are_validated_and_listed():
    with pytest.raises(ParityError, match=r'sampler must be one of flow_match_euler, euler_x0, not "euler" \(did you mean "euler_x0"\?\)'):
        Case(sampler="euler")
    out = CliRunner().invoke(main, ["knobs"]).output
    for family in NEW_FIELDS[1:] + ("quantize",):
        name = {"noise": "noise"}.get(family, family)
        assert f"\n{name}: " in f"\n{out}", family
    for alternative in ("euler_x0", "fp32_cpu", "circular", "crop8", "comfyui", "fp16_fp32", "truncate", "simple",
                        "beta", "patched_fp32", "fp8_scaled", "crop_then_resize", "preferred", "asked"):
        assert f"  {alternative}" in out, alternative
    assert set(choices("quantize")) >= {"none", "qfloat8", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2", "fp8_scaled"}
