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
    assert math.shape == base.shape
    assert np.array_equal(_pixels(engine.run(case)), base)  # "native" restored exactly for the next case
    assert engine.run(case.replace(attention_backend="_native_math")).effective["transformer_calls"] == 2


def test_unusable_attention_backend_fails_before_the_run(engine, case):
    with pytest.raises(ParityError, match="_native_efficient"):
        engine.run(case.replace(attention_backend="_native_efficient"))
    assert np.array_equal(_pixels(engine.run(case)), _pixels(engine.run(case)))


def test_channels_last_is_its_own_pipeline_variant(engine, case):
    base = _pixels(engine.run(case))
    loaded = engine.counters["pipelines_loaded"]
    engine.run(case.replace(channels_last=True))
    assert engine.counters["pipelines_loaded"] == loaded + 1
    assert np.array_equal(_pixels(engine.run(case)), base)


def test_torch_compile_runs_and_is_reused(case):
    from parity.engine import Engine

    engine = Engine("embedded", keep_pipelines=2)
    base = _pixels(engine.run(case))
    compiled = engine.run(case.replace(compile=True))
    again = engine.run(case.replace(compile=True, seed=6))
    assert compiled.raw_image.size == (64, 64) and again.timings["time_denoise_s"] < compiled.timings["time_denoise_s"]
    assert np.array_equal(_pixels(engine.run(case)), base)
