"""Speed knobs are parity knobs: each runs, each can move pixels, none leaks into the next case."""
from __future__ import annotations

import numpy as np
import pytest

from parity.case import Case
from parity.errors import ParityError


@pytest.fixture()
def case(control_png):
    return Case(name="speed", prompt="make it red", control_image=str(control_png), width=64, height=64,
                max_area=None, steps=2, control_auto_resize=False, seed=5)


def _pixels(result):
    return np.asarray(result.raw_image).astype(int)


def test_attention_backend_is_applied_and_switched_back(engine, case):
    base = _pixels(engine.run(case))
    math = _pixels(engine.run(case.replace(attention_backend="_native_math")))
    pipe, _ = engine.pipeline(case.dtype)
    assert pipe._parity_attention == "_native_math"
    assert not np.array_equal(math, base)  # another kernel sums in another order: bf16 pixels move
    assert np.abs(math - base).mean() < 2  # ... by rounding, not by a different computation
    assert np.array_equal(_pixels(engine.run(case)), base)  # "native" restored exactly for the next case


def test_unusable_attention_backend_fails_before_the_run(engine, case):
    with pytest.raises(ParityError, match="_native_efficient"):
        engine.run(case.replace(attention_backend="_native_efficient"))
    assert np.array_equal(_pixels(engine.run(case)), _pixels(engine.run(case)))


def test_channels_last_is_its_own_pipeline_variant(engine, case):
    import torch

    base = _pixels(engine.run(case))
    loaded = engine.counters["pipelines_loaded"]
    laid_out = _pixels(engine.run(case.replace(channels_last=True)))
    assert engine.counters["pipelines_loaded"] == loaded + 1
    pipe, _ = engine.pipeline(case.dtype, channels_last=True)
    conv = next(m for m in pipe.vae.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.dim() == 4
                and m.weight.shape[-1] > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert np.abs(laid_out - base).mean() < 2  # the same computation, other kernels
    assert np.array_equal(_pixels(engine.run(case)), base)


def test_torch_compile_compiles_once_and_computes_the_same_image(case):
    """In float32, where kernel choice cannot hide a wrong computation: the compiled transformer draws the
    eager image (within rounding), dynamo compiled it, and a second case reuses the compiled graph."""
    from torch._dynamo.utils import counters

    from parity.engine import Engine

    engine = Engine("embedded", keep_pipelines=2)
    fp32 = case.replace(dtype="fp32")
    eager = _pixels(engine.run(fp32))
    counters.clear()
    compiled = _pixels(engine.run(fp32.replace(compile=True)))
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1  # dynamo really compiled something
    assert np.abs(compiled - eager).max() <= 2 and np.abs(compiled - eager).mean() < 0.1
    engine.run(fp32.replace(compile=True, seed=6))
    assert counters["stats"]["unique_graphs"] == graphs  # the next case reuses the graphs: no recompilation
    assert np.array_equal(_pixels(engine.run(fp32)), eager)
