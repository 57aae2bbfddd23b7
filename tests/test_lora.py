"""LoRA files: reading, format detection and audit, the four modes, and the exact base after each case.

LoRA files are built here with seeded random down/up for a few Linear modules of the tiny model.
Float comparisons (fused vs dynamic) use the VAE decoder's float output mapped to [0, 1] pixels
(x / 2 + 0.5), captured with a forward hook, not the uint8 image: a 1e-5 tolerance means nothing
after rounding to 1/255.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from parity.case import Case, LoraSpec
from parity.errors import ParityError

# (diffusers module, in_features, out_features) in the tiny model
MODULES = [
    ("transformer_blocks.0.attn.to_q", 32, 32),
    ("transformer_blocks.0.attn.to_out.0", 32, 32),
    ("transformer_blocks.1.ff.net.2", 128, 32),
    ("single_transformer_blocks.0.proj_out", 160, 32),
]
RANK = 4

# PEFT warns each time a further adapter is added to the shared pipeline; that is intended here
pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning")


def _pairs(seed: int, modules=MODULES, gain: float = 0.4, rank: int = RANK):
    g = torch.Generator().manual_seed(seed)
    return {name: (torch.randn(rank, fin, generator=g) * gain, torch.randn(fout, rank, generator=g) * gain)
            for name, fin, fout in modules}


def write_lora(path: Path, seed: int = 0, *, prefix: str = "transformer.", modules=MODULES, gain: float = 0.4,
               extra: dict | None = None, dtype=torch.float32) -> Path:
    tensors = {}
    for name, (down, up) in _pairs(seed, modules, gain).items():
        tensors[f"{prefix}{name}.lora_A.weight"] = down.to(dtype)
        tensors[f"{prefix}{name}.lora_B.weight"] = up.to(dtype)
    tensors.update(extra or {})
    save_file(tensors, str(path))
    return path


def _case(control, loras=(), dtype="bf16", **kw) -> Case:
    base = dict(prompt="make it red", control_image=str(control), width=64, height=64, steps=2, guidance=3.5,
                seed=1, generator="cpu", snap="none", max_area=64 * 64, control_auto_resize=False, dtype=dtype,
                loras=tuple(LoraSpec(str(p), s, m) for p, s, m in loras))
    base.update(kw)
    return Case(**base)


def _pixels(result) -> np.ndarray:
    return np.asarray(result.raw_image.convert("RGB"))


def _decoded(engine, case) -> torch.Tensor:
    """Run a case and return the VAE decoder's float output as [0, 1] pixels."""
    pipe, _ = engine.pipeline(case.dtype, case.quantize)
    seen = []
    hook = pipe.vae.decoder.register_forward_hook(lambda m, a, out: seen.append(out.detach().float().clone()))
    try:
        engine.run(case)
    finally:
        hook.remove()
    return (seen[-1] / 2 + 0.5).clamp(0, 1)


def _base_weights(transformer) -> dict[str, torch.Tensor]:
    """Every base tensor of the transformer, under its plain name (PEFT wrappers and adapters ignored)."""
    return {k.replace(".base_layer", ""): v.detach().clone() for k, v in transformer.state_dict().items()
            if ".lora_" not in k}


@pytest.fixture()
def lora_a(tmp_path) -> Path:
    return write_lora(tmp_path / "a.safetensors", seed=1)


@pytest.fixture()
def lora_b(tmp_path) -> Path:
    return write_lora(tmp_path / "b.safetensors", seed=2)


# --- modes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["dynamic", "fused", "branch", "merged_fp32"])
def test_weight_zero_equals_the_base_exactly(engine, control_png, lora_a, mode):
    base = engine.run(_case(control_png))
    zero = engine.run(_case(control_png, [(lora_a, 0.0, mode)]))
    one = engine.run(_case(control_png, [(lora_a, 1.0, mode)]))
    assert np.array_equal(_pixels(base), _pixels(zero))
    assert not np.array_equal(_pixels(base), _pixels(one))


def test_fused_and_dynamic_agree_in_fp32(engine, control_png, lora_a):
    dynamic = _decoded(engine, _case(control_png, [(lora_a, 0.8, "dynamic")], dtype="fp32"))
    fused = _decoded(engine, _case(control_png, [(lora_a, 0.8, "fused")], dtype="fp32"))
    base = _decoded(engine, _case(control_png, dtype="fp32"))
    assert float((dynamic - fused).abs().max()) <= 1e-5
    assert float((dynamic - base).abs().max()) > 1e-2  # the LoRA does something


def test_branch_and_merged_agree_with_peft_in_fp32(engine, control_png, lora_a):
    """In float32 every mode is the same maths; only rounding separates them."""
    dynamic = _decoded(engine, _case(control_png, [(lora_a, 0.8, "dynamic")], dtype="fp32"))
    for mode in ("branch", "merged_fp32"):
        other = _decoded(engine, _case(control_png, [(lora_a, 0.8, mode)], dtype="fp32"))
        assert float((dynamic - other).abs().max()) <= 1e-5, mode


@pytest.mark.parametrize("mode", ["fused", "merged_fp32", "branch", "dynamic"])
def test_base_is_exactly_restored_after_a_lora_case(engine, control_png, lora_a, mode):
    pipe, _ = engine.pipeline("bf16")
    before_run = engine.run(_case(control_png))
    before = _base_weights(pipe.transformer)
    with_lora = engine.run(_case(control_png, [(lora_a, 1.0, mode)]))
    after_run = engine.run(_case(control_png))
    after = _base_weights(pipe.transformer)
    assert not np.array_equal(_pixels(before_run), _pixels(with_lora))
    assert np.array_equal(_pixels(before_run), _pixels(after_run))
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key


def test_merged_fp32_matches_ai_toolkit_merge_formula(engine, lora_a):
    """merged weight = bf16(W.float() + m * (B @ A) * alpha/rank), checked on the live module during a case."""
    from parity.knobs.lora_modes import lora_merged_fp32, lora_unmerge_aitk

    pipe, applier = engine.pipeline("bf16")
    lora = engine.lora_file(str(lora_a), pipe.transformer)
    name = MODULES[0][0]
    linear = applier.linear(name)
    w0 = linear.weight.detach().clone()
    down, up = lora.modules[name]
    with applier.applied([(lora, 0.7, "merged_fp32")]):
        merged = linear.weight.detach().clone()
    assert torch.equal(merged, (w0.float() + 0.7 * (up @ down) * 1.0).to(torch.bfloat16))
    assert torch.equal(linear.weight, w0)  # restored exactly, not unmerged
    # AI Toolkit's own unmerge does not give the base back in bf16: that is the drift it samples from later
    unmerged = lora_unmerge_aitk(merged, down, up, 0.7)
    assert not torch.equal(unmerged, w0)
    # ... but it is off by rounding only: at most one bf16 step of the merged magnitude, twice
    assert float((unmerged.float() - w0.float()).abs().max()) <= 2 * float(merged.float().abs().max()) * 2 ** -8
    assert torch.equal(lora_merged_fp32(w0, down, torch.zeros_like(up), 1.0), w0)  # zero delta: skipped


def test_branch_matches_ai_toolkit_forward(engine, lora_a):
    from parity.knobs.lora_modes import lora_branch

    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    linear = torch.nn.Linear(32, 32).to(torch.bfloat16)
    pipe, _ = engine.pipeline("bf16")
    down, up = engine.lora_file(str(lora_a), pipe.transformer).modules[MODULES[0][0]]
    base = linear(x)
    expected = base + ((torch.nn.functional.linear(torch.nn.functional.linear(x.float(), down), up)
                        * torch.tensor(1.0)) * torch.tensor([0.5])).to(torch.bfloat16)
    assert torch.equal(lora_branch(x, base, down, up, 0.5), expected)


def test_several_loras_at_once(engine, control_png, lora_a, lora_b):
    for mode in ("dynamic", "branch"):
        a = _pixels(engine.run(_case(control_png, [(lora_a, 1.0, mode)])))
        b = _pixels(engine.run(_case(control_png, [(lora_b, 1.0, mode)])))
        both = engine.run(_case(control_png, [(lora_a, 1.0, mode), (lora_b, 1.0, mode)]))
        assert len(both.lora_audits) == 2
        assert not np.array_equal(_pixels(both), a) and not np.array_equal(_pixels(both), b), mode


def test_fused_and_dynamic_cannot_be_mixed(engine, control_png, lora_a, lora_b):
    with pytest.raises(ParityError, match="mix fused and dynamic"):
        engine.run(_case(control_png, [(lora_a, 1.0, "fused"), (lora_b, 1.0, "dynamic")]))
    assert np.array_equal(_pixels(engine.run(_case(control_png))), _pixels(engine.run(_case(control_png))))


def test_a_lora_file_is_read_once(engine, control_png, tmp_path):
    path = write_lora(tmp_path / "once.safetensors", seed=7)
    before = engine.counters["lora_files_read"]
    first = engine.run(_case(control_png, [(path, 1.0, "branch")]))
    second = engine.run(_case(control_png, [(path, 0.5, "dynamic")]))
    third = engine.run(_case(control_png, [(path, 1.0, "branch")]))
    assert engine.counters["lora_files_read"] == before + 1
    assert np.array_equal(_pixels(first), _pixels(third)) and not np.array_equal(_pixels(first), _pixels(second))


# --- formats and the audit -----------------------------------------------------------------------
def _audit(engine, path):
    pipe, _ = engine.pipeline("bf16")
    return engine.lora_file(str(path), pipe.transformer).audit


def test_format_detection_and_conversion(engine, control_png, tmp_path):
    peft = write_lora(tmp_path / "peft.safetensors", seed=3)
    bare = write_lora(tmp_path / "bare.safetensors", seed=3, prefix="")
    dm = write_lora(tmp_path / "dm.safetensors", seed=3, prefix="diffusion_model.")
    formats = {p.name: _audit(engine, p).format for p in (peft, bare, dm)}
    assert formats == {"peft.safetensors": "peft", "bare.safetensors": "peft-unprefixed",
                       "dm.safetensors": "diffusion_model"}
    reference = _pixels(engine.run(_case(control_png, [(peft, 1.0, "branch")])))
    for path in (bare, dm):
        audit = _audit(engine, path)
        assert audit.modules_applied == len(MODULES) and not audit.dropped
        assert np.array_equal(_pixels(engine.run(_case(control_png, [(path, 1.0, "branch")]))), reference), path.name


def test_kohya_file_is_converted_and_applied(engine, control_png, tmp_path):
    """kohya names (BFL modules, lora_down/up, alpha) go through diffusers' converter."""
    pairs = _pairs(4, [("transformer_blocks.0.attn.to_out.0", 32, 32), ("single_transformer_blocks.0.proj_out", 160, 32)])
    kohya_names = {"transformer_blocks.0.attn.to_out.0": "lora_unet_double_blocks_0_img_attn_proj",
                   "single_transformer_blocks.0.proj_out": "lora_unet_single_blocks_0_linear2"}
    kohya, peft = {}, {}
    for name, (down, up) in pairs.items():
        key = kohya_names[name]
        kohya.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                      f"{key}.alpha": torch.tensor(float(RANK))})
        peft.update({f"transformer.{name}.lora_A.weight": down, f"transformer.{name}.lora_B.weight": up})
    save_file(kohya, str(tmp_path / "kohya.safetensors"))
    save_file(peft, str(tmp_path / "same_peft.safetensors"))
    audit = _audit(engine, tmp_path / "kohya.safetensors")
    assert audit.format == "kohya" and audit.modules_applied == 2 and not audit.dropped
    got = engine.run(_case(control_png, [(tmp_path / "kohya.safetensors", 1.0, "branch")]))
    want = engine.run(_case(control_png, [(tmp_path / "same_peft.safetensors", 1.0, "branch")]))
    assert np.array_equal(_pixels(got), _pixels(want))


def test_diffusion_model_prefix_with_bfl_names_loads_through_diffusers_converter(engine, control_png, tmp_path):
    """ComfyUI's layout (a fused qkv under diffusion_model.) is converted by diffusers: one down, the up split."""
    g = torch.Generator().manual_seed(5)
    path = tmp_path / "bfl.safetensors"
    down, up = torch.randn(RANK, 32, generator=g), torch.randn(96, RANK, generator=g)
    save_file({"diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight": down,
               "diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight": up}, str(path))
    split = {}
    for i, proj in enumerate(("to_q", "to_k", "to_v")):
        split[f"transformer.transformer_blocks.0.attn.{proj}.lora_A.weight"] = down.clone()
        split[f"transformer.transformer_blocks.0.attn.{proj}.lora_B.weight"] = up[32 * i:32 * (i + 1)].contiguous()
    save_file(split, str(tmp_path / "split.safetensors"))
    audit = _audit(engine, path)
    assert audit.format == "diffusion_model" and audit.modules_applied == 3 and not audit.dropped
    got = engine.run(_case(control_png, [(path, 1.0, "branch")]))
    want = engine.run(_case(control_png, [(tmp_path / "split.safetensors", 1.0, "branch")]))
    assert np.array_equal(_pixels(got), _pixels(want))


def test_a_file_of_which_no_key_applies_is_an_error(engine, control_png, tmp_path):
    path = write_lora(tmp_path / "nothing.safetensors", modules=[("transformer_blocks.7.attn.to_q", 32, 32),
                                                                  ("not_a_block.linear", 32, 32)])
    with pytest.raises(ParityError, match="no key of this LoRA applies"):
        engine.run(_case(control_png, [(path, 1.0, "dynamic")]))


def test_dropped_keys_are_listed_in_the_audit(engine, control_png, tmp_path):
    g = torch.Generator().manual_seed(6)
    extra = {
        "transformer.transformer_blocks.9.attn.to_k.lora_A.weight": torch.randn(RANK, 32, generator=g),
        "transformer.transformer_blocks.9.attn.to_k.lora_B.weight": torch.randn(32, RANK, generator=g),
        "transformer.transformer_blocks.0.attn.to_v.lora_A.weight": torch.randn(RANK, 32, generator=g),  # no B
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(RANK, 32, generator=g),
        "transformer.transformer_blocks.0.norm1.norm.lora_A.weight": torch.randn(RANK, 32, generator=g),
        "transformer.transformer_blocks.0.norm1.norm.lora_B.weight": torch.randn(32, RANK, generator=g),
    }
    path = write_lora(tmp_path / "partial.safetensors", seed=8, extra=extra)
    result = engine.run(_case(control_png, [(path, 1.0, "branch")]))
    audit = result.lora_audits[0]
    assert audit.modules_applied == len(MODULES)
    assert audit.keys_in_file == 2 * len(MODULES) + len(extra)
    dropped = audit.dropped
    assert "no such module" in dropped["transformer_blocks.9.attn.to_k"]
    assert "half of the down/up pair" in dropped["transformer_blocks.0.attn.to_v"]
    assert "text encoder" in dropped["text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight"]
    assert "LayerNorm" in dropped["transformer_blocks.0.norm1.norm"]
    summary = result.row()
    assert summary["lora_dropped_0"] == 4 and summary["lora_modules_applied_0"] == len(MODULES)


class _Payload:
    """Unpickling this runs Path.touch(marker): proof of whether a file was unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("name", ["evil.pt", "evil.ckpt", "evil.bin", "evil.safetensors"])
def test_pickles_are_refused_without_being_unpickled(engine, control_png, tmp_path, name):
    canary = tmp_path / "canary"
    rebuild, args = _Payload(canary).__reduce__()
    rebuild(*args)  # what unpickling the payload does
    assert canary.exists()
    marker = tmp_path / "unpickled"
    path = tmp_path / name
    path.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ParityError) as err:
        engine.run(_case(control_png, [(path, 1.0, "dynamic")]))
    assert not marker.exists()
    if name.endswith(".safetensors"):
        assert "not a readable safetensors file" in str(err.value)
    else:
        assert "pickle" in str(err.value)


def test_truncated_safetensors_is_an_error(engine, control_png, tmp_path):
    whole = write_lora(tmp_path / "whole.safetensors", seed=9)
    data = whole.read_bytes()
    for cut in (len(data) // 2, 20, 3):
        path = tmp_path / f"cut{cut}.safetensors"
        path.write_bytes(data[:cut])
        with pytest.raises(ParityError, match="truncated or corrupt|holds no tensors"):
            engine.run(_case(control_png, [(path, 1.0, "branch")]))


def test_missing_and_empty_files_are_errors(engine, control_png, tmp_path):
    with pytest.raises(ParityError, match="not found"):
        engine.run(_case(control_png, [(tmp_path / "absent.safetensors", 1.0, "branch")]))
    save_file({}, str(tmp_path / "empty.safetensors"))
    with pytest.raises(ParityError, match="holds no tensors"):
        engine.run(_case(control_png, [(tmp_path / "empty.safetensors", 1.0, "branch")]))


def test_lora_of_another_architecture_is_an_error(engine, control_png, tmp_path):
    # FLUX.1-dev sized shapes (3072 wide) on the tiny model: same names, nothing fits
    path = write_lora(tmp_path / "big.safetensors", seed=10, gain=0.01,
                      modules=[("transformer_blocks.0.attn.to_q", 3072, 3072), ("transformer_blocks.0.attn.to_k", 3072, 3072)])
    with pytest.raises(ParityError, match="does not fit"):
        engine.run(_case(control_png, [(path, 1.0, "dynamic")]))


def test_alpha_keys_scale_the_delta(engine, control_png, tmp_path):
    """alpha/rank is applied (AI Toolkit: after lora_up); alpha = 2*rank equals doubling the multiplier."""
    pairs = _pairs(11)
    tensors = {}
    for name, (down, up) in pairs.items():
        tensors.update({f"transformer.{name}.lora_A.weight": down, f"transformer.{name}.lora_B.weight": up,
                        f"transformer.{name}.alpha": torch.tensor(float(2 * RANK))})
    save_file(tensors, str(tmp_path / "alpha.safetensors"))
    plain = write_lora(tmp_path / "plain.safetensors", seed=11)
    doubled = _decoded(engine, _case(control_png, [(tmp_path / "alpha.safetensors", 0.5, "branch")], dtype="fp32"))
    reference = _decoded(engine, _case(control_png, [(plain, 1.0, "branch")], dtype="fp32"))
    assert float((doubled - reference).abs().max()) <= 1e-6
    # PEFT gets alpha folded into lora_A: same result within float error
    peft = _decoded(engine, _case(control_png, [(tmp_path / "alpha.safetensors", 0.5, "dynamic")], dtype="fp32"))
    assert float((peft - reference).abs().max()) <= 1e-5
