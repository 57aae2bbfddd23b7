"""qfloat8 quantization as AI Toolkit's ``quantize: true`` does it (optimum-quanto), on the tiny model, on CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from parity.case import Case, LoraSpec
from parity.engine.quantize import quantize_module_tree
from parity.errors import ParityError


def _case(control, **kw) -> Case:
    base = dict(prompt="make it red", control_image=str(control), width=128, height=128, steps=4, guidance=4.0,
                seed=2, generator="cpu", snap="none", max_area=128 * 128, control_auto_resize=False, dtype="bf16")
    base.update(kw)
    return Case(**base)


def _pixels(result) -> np.ndarray:
    return np.asarray(result.raw_image.convert("RGB"))


def _ssim(a, b) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                       data_range=255, channel_axis=-1))


@pytest.fixture(scope="module")
def qpipe(engine):
    pipe, applier = engine.pipeline("bf16", "qfloat8")
    return pipe, applier


def test_transformer_and_t5_linears_are_quanto_qfloat8(qpipe):
    from optimum.quanto import QBytesTensor, qfloat8
    from optimum.quanto.nn import QLinear

    pipe, _ = qpipe
    for component, count in (("transformer", 50), ("text_encoder_2", 14)):
        linears = [m for m in getattr(pipe, component).modules() if isinstance(m, torch.nn.Linear)]
        assert linears and all(type(m) is QLinear for m in linears), component
        assert len(linears) == count, component
        for m in linears:
            assert isinstance(m.weight, QBytesTensor) and m.weight_qtype == qfloat8 and m.activation_qtype is None
            assert m.weight._data.dtype == torch.float8_e4m3fn and m.weight._scale.dtype == torch.bfloat16
            assert m.weight._scale.shape == (m.out_features, 1)  # one absmax scale per output row
    # CLIP and the VAE stay unquantized, as in AI Toolkit
    from optimum.quanto.nn import QModuleMixin

    assert not any(isinstance(m, QModuleMixin) for m in pipe.text_encoder.modules())
    assert not any(isinstance(m, QModuleMixin) for m in pipe.vae.modules())
    assert any(type(m) is torch.nn.Linear for m in pipe.text_encoder.modules())
    report = pipe._parity_quantize_report
    assert report.modules == {"transformer": 50, "text_encoder_2": 14} and report.zero_rows_guarded == {}


def test_same_bits_as_quanto_itself(engine):
    """Our quantization equals optimum-quanto's quantize + freeze (AI Toolkit's calls) bit for bit."""
    from diffusers import FluxTransformer2DModel
    from optimum.quanto import freeze, qfloat8, quantize

    folder = f"{engine.base}/transformer"
    theirs = FluxTransformer2DModel.from_pretrained(folder, torch_dtype=torch.bfloat16)
    ours = FluxTransformer2DModel.from_pretrained(folder, torch_dtype=torch.bfloat16)
    quantize(theirs, weights=qfloat8)
    freeze(theirs)
    quantize_module_tree(ours, "qfloat8", name="transformer")
    theirs_sd, ours_sd = theirs.state_dict(), ours.state_dict()
    assert theirs_sd.keys() == ours_sd.keys()
    assert any(k.endswith("weight._data") for k in ours_sd)
    for key in theirs_sd:
        a, b = theirs_sd[key], ours_sd[key]
        assert a.dtype == b.dtype and torch.equal(a.view(torch.uint8) if a.dtype == torch.float8_e4m3fn else a,
                                                  b.view(torch.uint8) if b.dtype == torch.float8_e4m3fn else b), key


def test_qfloat8_sampling_runs_and_stays_close_to_bf16(engine, control_png):
    bf16 = engine.run(_case(control_png))
    q8 = engine.run(_case(control_png, quantize="qfloat8"))
    again = engine.run(_case(control_png, quantize="qfloat8"))
    a, b = _pixels(bf16).astype(np.int16), _pixels(q8).astype(np.int16)
    diff = np.abs(a - b)
    ssim = _ssim(_pixels(bf16), _pixels(q8))
    print(f"\nqfloat8 vs bf16 (128x128, 4 steps): mean abs {diff.mean():.4f}/255, max {diff.max()}, SSIM {ssim:.6f}")
    assert np.isfinite(a).all() and q8.raw_image.size == (128, 128)
    assert diff.max() > 0  # quantization changes the image ...
    assert diff.mean() < 5.0 and ssim > 0.98  # ... but only a little
    assert np.array_equal(_pixels(q8), _pixels(again))


def test_zero_row_guard():
    """quanto's absmax scale of an all-zero row is 0 and 0/0 makes the row NaN; the guard gives exact zeros."""
    from optimum.quanto import freeze, qfloat8, quantize

    torch.manual_seed(0)

    def model():
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Linear(4, 3)).to(torch.bfloat16)
        with torch.no_grad():
            net[0].weight[2].zero_()
        return net

    x = torch.randn(5, 8).to(torch.bfloat16)
    plain = model()
    quantize(plain, weights=qfloat8)
    freeze(plain)
    assert torch.isnan(plain[0](x)).any()  # the known failure

    guarded = model()
    report = quantize_module_tree(guarded, "qfloat8", name="net")
    assert report.zero_rows_guarded == {"net.0": 1}
    out = guarded[0](x)
    assert torch.isfinite(out).all() and torch.isfinite(guarded(x)).all()
    assert torch.equal(out[:, 2], guarded[0].bias[2].expand(5))  # the zero row outputs its bias exactly
    keep = [0, 1, 3]
    assert torch.equal(plain[0].weight._data[keep].view(torch.uint8), guarded[0].weight._data[keep].view(torch.uint8))
    assert torch.equal(plain[0].weight._scale[keep], guarded[0].weight._scale[keep])
    assert torch.equal(plain[1].weight._scale, guarded[1].weight._scale)


def test_unknown_qtype_is_refused():
    with pytest.raises(ParityError, match="not supported"):
        quantize_module_tree(torch.nn.Linear(2, 2), "qint4")


def test_branch_lora_on_a_quantized_base(engine, control_png, demo_runs):
    lora = str(demo_runs / "tiny_bf16" / "tiny_bf16.safetensors")
    base = engine.run(_case(control_png, quantize="qfloat8"))
    with_lora = engine.run(_case(control_png, quantize="qfloat8", loras=(LoraSpec(lora, 1.0, "branch"),)))
    after = engine.run(_case(control_png, quantize="qfloat8"))
    diff = np.abs(_pixels(base).astype(np.int16) - _pixels(with_lora).astype(np.int16))
    print(f"\nbranch LoRA on qfloat8 base vs no LoRA: mean abs {diff.mean():.3f}/255")
    assert diff.mean() > 1.0
    assert np.array_equal(_pixels(base), _pixels(after))
    assert with_lora.lora_audits[0].modules_applied == 40


@pytest.mark.parametrize("mode", ["dynamic", "fused", "merged_fp32"])
def test_other_lora_modes_on_a_quantized_base_are_refused(engine, control_png, demo_runs, mode):
    lora = str(demo_runs / "tiny_bf16" / "tiny_bf16.safetensors")
    with pytest.raises(ParityError, match="quantized .*branch"):
        engine.run(_case(control_png, quantize="qfloat8", loras=(LoraSpec(lora, 1.0, mode),)))
    # nothing was left applied
    base = engine.run(_case(control_png, quantize="qfloat8", steps=1))
    assert np.array_equal(_pixels(base), _pixels(engine.run(_case(control_png, quantize="qfloat8", steps=1))))


def test_quantized_weights_are_cached_and_load_bit_identical(tmp_path, control_png):
    """The second load of a qfloat8 variant requantizes from the cache folder instead of quantizing again,
    and draws the same bits (on a 12B checkpoint this skips computing every scale of every Linear)."""
    from parity.engine import Engine

    case = Case(name="q", prompt="make it red", control_image=str(control_png), width=64, height=64, max_area=None,
                steps=2, control_auto_resize=False, quantize="qfloat8")
    images, reports = [], []
    for _ in range(2):
        engine = Engine("embedded", cache_dir=tmp_path / "cache")
        pipe, _ = engine.pipeline(case.dtype, case.quantize)
        reports.append(pipe._parity_quantize_report)
        images.append(np.asarray(engine.run(case).raw_image))
    assert reports[0].cached == [] and reports[1].cached == ["transformer", "text_encoder_2"]
    assert np.array_equal(images[0], images[1])
    assert len(list((tmp_path / "cache").glob("quantized-*/transformer.safetensors"))) == 1
