"""Latency of the engine per knob family and per stage, and the harness against a naive script.

Run with `make bench` (JSON under reports/); compare two runs with
`pytest tests/benchmarks --benchmark-only --benchmark-compare` (see README).
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared harness_compare module

from parity.case import Case, LoraSpec
from parity.engine import Engine

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "tests" / "data" / "tiny-runs" / "tiny_bf16"
CONTROL = str(DEMO / "control" / "ctrl_square_128.png")
LORA = str(DEMO / "tiny_bf16_000000010.safetensors")
BASE = dict(prompt="make it a red cat", control_image=CONTROL, width=128, height=128, max_area=None, steps=8,
            seed=42, guidance=4.0, control_auto_resize=False, snap="aitk", control_target="requested")

KNOB_FAMILIES = {
    "baseline": {},
    "resize-lanczos": {"control_resize": "lanczos", "width": 120, "height": 100},
    "static-shift": {"dynamic_shifting": False},
    "true-cfg": {"guidance_mode": "true_cfg", "true_cfg_scale": 1.5, "negative_prompt": "blurry"},
    "lora-dynamic": {"loras": (LoraSpec(LORA, 1.0, "dynamic"),)},
    "lora-fused": {"loras": (LoraSpec(LORA, 1.0, "fused"),)},
    "lora-branch": {"loras": (LoraSpec(LORA, 1.0, "branch"),)},
    "lora-merged-fp32": {"loras": (LoraSpec(LORA, 1.0, "merged_fp32"),)},
    "dtype-fp32": {"dtype": "fp32"},
    "qfloat8": {"quantize": "qfloat8", "loras": (LoraSpec(LORA, 1.0, "branch"),)},
    "jpeg-95": {"output_format": "jpeg", "output_quality": 95},
}


@pytest.fixture(scope="module")
def engine():
    return Engine("embedded", device="auto", keep_pipelines=3)


@pytest.mark.benchmark(group="case-per-knob")
@pytest.mark.parametrize("family", list(KNOB_FAMILIES))
def test_case_latency(benchmark, engine, family):
    case = Case(name=family, **{**BASE, **KNOB_FAMILIES[family]})
    engine.run(case)  # loads the pipeline variant and the LoRA once, outside the timing
    result = benchmark.pedantic(engine.run, args=(case,), rounds=5, warmup_rounds=1)
    benchmark.extra_info.update({k: v for k, v in result.timings.items() if k != "time_steps_s"})
    benchmark.extra_info["time_per_step_s"] = statistics.median(result.timings["time_steps_s"])
    benchmark.extra_info.update(result.memory)
    benchmark.extra_info["device"] = str(engine.device)


def _spread(values: list[float]) -> dict:
    return {"min": round(min(values), 3), "median": round(statistics.median(values), 3), "max": round(max(values), 3)}


ROUNDS = 5  # per side; the order alternates between rounds, so neither side always runs on a warmer machine
TARGETS = {"ablation": 0.35, "distinct": 0.50}  # harness / naive script, median of the rounds


@pytest.mark.benchmark(group="harness-vs-naive")
@pytest.mark.parametrize("mix", ["ablation", "distinct"])
def test_harness_vs_naive_script(benchmark, tmp_path, mix):
    """Side by side in one run, on the same device: the harness (model load included) against a user's script
    that loads the pipeline and the LoRA for every case, on a 12-case mix of prompts, controls and LoRA files
    (tests/harness_compare.py; tests/test_harness_compare.py proves both draw the same images)."""
    from diffusers.utils import logging as dlogging

    from harness_compare import ablation, distinct_matrix, harness, naive_script

    dlogging.set_verbosity_error()
    dlogging.disable_progress_bar()
    device = str(Engine("embedded").device)
    cases = ablation(12) if mix == "ablation" else distinct_matrix(12)
    naive_s, harness_s = [], []

    def naive(i):
        start = time.perf_counter()
        naive_script(cases, _fresh(tmp_path / f"naive{i}"), device)
        naive_s.append(time.perf_counter() - start)

    def ours(i):
        start = time.perf_counter()
        harness(cases, _fresh(tmp_path / f"harness{i}"), device)
        harness_s.append(time.perf_counter() - start)

    for i in range(ROUNDS):
        for side in ((naive, ours) if i % 2 == 0 else (ours, naive)):
            side(i)
    benchmark.pedantic(harness, args=(cases, _fresh(tmp_path / "timed"), device), rounds=1, iterations=1)
    ratios = [h / n for h, n in zip(harness_s, naive_s)]
    benchmark.extra_info.update({"ratio_harness_over_naive": _spread(ratios), "target": TARGETS[mix],
                                 "naive_s": _spread(naive_s), "harness_s": _spread(harness_s), "cases": len(cases),
                                 "device": device})
    print(f"\n{mix}: harness/naive {_spread(ratios)} (target <= {TARGETS[mix]}); naive {_spread(naive_s)} s, "
          f"harness {_spread(harness_s)} s")
    assert statistics.median(ratios) <= TARGETS[mix], \
        f"harness/naive median {statistics.median(ratios):.3f} > target {TARGETS[mix]} ({mix})"


@pytest.mark.benchmark(group="per-case-vs-pipeline")
def test_harness_case_vs_warm_pipeline_call(benchmark):
    """Per case, the warm engine against a warm FluxKontextPipeline.__call__ of the same case: the engine's
    caches (prompt and control encodings, the LoRA state) must pay for its bookkeeping (target <= 1.0)."""
    from diffusers import FluxKontextPipeline

    from harness_compare import distinct_matrix
    from parity.engine.loader import embedded_base

    case = distinct_matrix(1)[0]
    engine = Engine("embedded")
    pipe = FluxKontextPipeline.from_pretrained(embedded_base(), dtype=torch.bfloat16).to(engine.device)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(case.loras[0].path, adapter_name="lora")
    pipe.set_adapters(["lora"], [case.loras[0].scale])
    control = Image.open(case.control_image).convert("RGB")

    def plain():
        return pipe(image=control, prompt=case.prompt, height=case.height, width=case.width,
                    num_inference_steps=case.steps, guidance_scale=case.guidance,
                    generator=torch.Generator("cpu").manual_seed(case.seed), max_area=case.max_area,
                    _auto_resize=False).images[0]

    def ours():
        return engine.run(case)

    ours(), plain()  # warm: loads, caches
    ours_s, plain_s = [], []
    for i in range(2 * ROUNDS):
        for fn, times in (((ours, ours_s), (plain, plain_s)) if i % 2 == 0 else ((plain, plain_s), (ours, ours_s))):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    benchmark.pedantic(ours, rounds=3, iterations=1)
    ratio = statistics.median(ours_s) / statistics.median(plain_s)
    benchmark.extra_info.update({"ratio_engine_over_pipeline": round(ratio, 3), "engine_s": _spread(ours_s),
                                 "pipeline_s": _spread(plain_s)})
    print(f"\nper case: engine/pipeline {ratio:.3f} (target <= 1.0); engine {_spread(ours_s)} s, "
          f"pipeline {_spread(plain_s)} s")
    assert ratio <= 1.0, f"engine/pipeline per case {ratio:.3f} > 1.0"


def _fresh(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
