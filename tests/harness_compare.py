"""The harness against what a user would write without it, doing the same work on the same device.

Used by the benchmarks (tests/benchmarks/test_bench_engine.py, timed, many rounds) and by a quick test in
`make test` (tests/test_harness_compare.py) that checks the comparison is fair: both sides draw the same
images, so a ratio between their times compares like with like.

The case mix is realistic: the demo's AI Toolkit runs give several prompts, control images (square, wide,
tall with alpha, small JPEG) and LoRA files (two runs, two checkpoints each). The naive script is a
user's loop: a fresh FluxKontextPipeline and LoRA load per case, the pipeline's own __call__, a saved PNG.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import torch
from PIL import Image

from parity.case import Case, LoraSpec
from parity.engine import Engine
from parity.engine.loader import embedded_base
from parity.plan import Plan
from parity.runner import Runner

DEMO = Path(__file__).resolve().parent / "data" / "tiny-runs"
PROMPTS = ("make it a red cat", "turn it blue", "add a red frame", "zxq style photo of the image")
CONTROLS = (DEMO / "tiny_bf16" / "control" / "ctrl_square_128.png", DEMO / "tiny_bf16" / "control" / "ctrl_wide_192x108.png",
            DEMO / "tiny_odd" / "control" / "ctrl_tall_alpha_90x150.png", DEMO / "tiny_odd" / "control" / "ctrl_small_64x48.jpg")
LORAS = (DEMO / "tiny_bf16" / "tiny_bf16_000000010.safetensors", DEMO / "tiny_bf16" / "tiny_bf16.safetensors",
         DEMO / "tiny_odd" / "tiny_odd_000000010.safetensors", DEMO / "tiny_odd" / "tiny_odd.safetensors")
# What the naive script does, as knobs: diffusers' pipeline call with explicit sizes and a CPU generator.
NAIVE_KNOBS = dict(width=128, height=128, max_area=128 * 128, snap="none", size_source="request",
                   control_target="none", control_auto_resize=False, generator="cpu", steps=8)


def _case(name: str, prompt: str, control: Path, lora: Path, scale: float, guidance: float, seed: int) -> Case:
    return Case(name=name, prompt=prompt, control_image=str(control), guidance=guidance, seed=seed,
                loras=(LoraSpec(str(lora), scale, "dynamic"),), **NAIVE_KNOBS)


def distinct_matrix(count: int = 12) -> list[Case]:
    """``count`` cases, every one a different image: prompts, controls, LoRA files, scales, seeds all vary."""
    combos = itertools.product(range(len(PROMPTS)), range(len(CONTROLS)), range(len(LORAS)))
    return [_case(f"m{i}", PROMPTS[p], CONTROLS[c], LORAS[lo], 0.5 + 0.25 * (i % 3), 3.0 + 0.5 * (i % 2), i)
            for i, (p, c, lo) in zip(range(count), ((a, (a + b) % 4, (a + 2 * b) % 4) for a, b, _ in combos))]


def ablation(count: int = 12) -> list[Case]:
    """An ablation as users run one: a few previews, each with a baseline and knobs changed one at a time,
    where some changes draw the same image as the baseline (an opaque control's alpha handling, a snap the
    size already meets, another output format) and are computed once by the harness."""
    cases = []
    for i in range(count // 6):
        base = _case(f"p{i}", PROMPTS[i % 4], CONTROLS[i % 4], LORAS[i % 4], 1.0, 4.0, 42 + i)
        cases += [base, base.replace(name=f"p{i}[guidance=2.5]", guidance=2.5),
                  base.replace(name=f"p{i}[seed+1]", seed=43 + i),
                  base.replace(name=f"p{i}[snap=floor16]", snap="floor16"),
                  base.replace(name=f"p{i}[output_format=jpeg]", output_format="jpeg"),
                  base.replace(name=f"p{i}[control_alpha=white]", control_alpha="white")]
    return cases


def naive_script(cases: list[Case], out: Path, device: str) -> list[Image.Image]:
    """A user's script: a fresh pipeline and LoRA load for every case, on ``device``, each image saved."""
    from diffusers import FluxKontextPipeline

    images = []
    for case in cases:
        pipe = FluxKontextPipeline.from_pretrained(embedded_base(), dtype=torch.bfloat16).to(device)
        pipe.set_progress_bar_config(disable=True)
        pipe.load_lora_weights(case.loras[0].path, adapter_name="lora")
        pipe.set_adapters(["lora"], [case.loras[0].scale])
        image = pipe(image=Image.open(case.control_image).convert("RGB"), prompt=case.prompt, height=case.height,
                     width=case.width, num_inference_steps=case.steps, guidance_scale=case.guidance,
                     generator=torch.Generator("cpu").manual_seed(case.seed), max_area=case.max_area,
                     _auto_resize=False).images[0]
        image.save(out / f"{case.name}.{'jpg' if case.output_format == 'jpeg' else 'png'}")
        images.append(image)
    return images


def harness(cases: list[Case], out: Path, device: str) -> tuple[list[Image.Image], object, Engine]:
    """The runner on a fresh engine (model load included), generation only, as the naive script does."""
    engine = Engine("embedded", device=device)
    summary = Runner(out, engine=engine, progress=False, metrics=False).run(Plan(source="bench", cases=cases))
    by_name = {row["name"]: row for row in summary.rows}
    images = [Image.open(out / by_name[case.name]["output_file"]).convert("RGB") for case in cases]
    return images, summary, engine
