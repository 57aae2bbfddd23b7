"""Every genuine AI Toolkit preview of the two demo runs, reproduced by the engine.

Ground truth: tests/data/aitk-sidecars/<run>/<preview>.json (the arguments AI Toolkit passed to the
pipeline) and <preview>.raw.png (its exact pixels before JPEG). LoRA pairing: step 0 none, step 10 the
run's ``_000000010`` file, step 20 the final file; mode ``merged_fp32`` where AI Toolkit merged the
network for the batch (``lora_merged_into_base``), ``branch`` where it did not.

What the figures show (run with ``-s`` to see the table), on a machine whose bf16 kernels are those of
the machine that drew the previews (an AMD EPYC here):
- step 0: bit-exact.
- steps 10/20 with the run folder's float16 LoRA files: ~0.45/255 mean, SSIM > 0.9995.
- with the float32 values AI Toolkit actually sampled with, plus AI Toolkit's merge/unmerge history
  (after a merged batch the bf16 base has drifted, up to 0.0039 here): bit-exact, every preview. So
  the remaining gap with the saved files is their float16 rounding (and, for tiny_odd step 20, that
  drift, which ``LoraApplier.aitk_merge_cycle`` replays).
Exactness belongs to the hardware, not the settings: on a CPU with other bf16 kernels (an AMX-BF16 Xeon)
the same cases land 0.36-0.70/255 away. So every preview must be `exact` or `noise` (within twice the
floor the attention-kernel estimator measures), and the exact figures are asserted only where the
machine proves it has the same kernels: every step-0 preview bit-exact.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from parity import noise
from parity.case import Case, LoraSpec
from parity.metrics import compare
from parity.verdict import judge

RUNS = ("tiny_bf16", "tiny_odd")
FP32_SET = {10: "lora_A_fp32_as_sampled.safetensors", 20: "lora_B_fp32_as_sampled.safetensors"}


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                       data_range=255, channel_axis=-1))


def _previews(sidecars: Path, run: str) -> list[tuple[Path, dict]]:
    return [(p, json.loads(p.read_text())) for p in sorted((sidecars / run).glob("*__*.json"))]


def _lora_path(demo_runs: Path, sidecars: Path, run: str, step: int, source: str) -> Path | None:
    if step == 0:
        return None
    if source == "fp32":
        return sidecars / run / FP32_SET[step]
    return demo_runs / run / (f"{run}_{step:09d}.safetensors" if step == 10 else f"{run}.safetensors")


def case_from_sidecar(side: dict, demo_runs: Path, sidecars: Path, source: str = "file") -> Case:
    """The Case that reproduces one preview, from AI Toolkit's recorded arguments only."""
    eff, flags = side["effective"], side["prompt_parse"]["after_flags"]
    run, step = side["run"], side["step"]
    loras = ()
    lora = _lora_path(demo_runs, sidecars, run, step, source)
    if lora is not None:
        mode = "merged_fp32" if eff["lora_merged_into_base"] else "branch"
        loras = (LoraSpec(str(lora), float(eff["network_multiplier"]), mode),)
    return Case(
        name=f"{run}/{Path(side['file']).stem}",
        prompt=eff["prompt"], negative_prompt=eff["negative_prompt"],
        control_image=str(demo_runs / eff["ctrl_img"]),
        seed=int(eff["seed"]), generator="global",
        width=int(flags["width"]), height=int(flags["height"]), snap="aitk", max_area=None,
        steps=int(eff["num_inference_steps"]), guidance=float(eff["guidance_scale"]),
        control_target="requested", control_auto_resize=False, dtype="bf16", loras=loras,
    )


def _compare(result, raw_png: Path, floor: dict | None = None) -> dict:
    """Figures of the pipeline's pixels against AI Toolkit's, and the verdict with ``floor``."""
    ours = np.asarray(result.raw_image.convert("RGB"))
    theirs = np.asarray(Image.open(raw_png).convert("RGB"))
    assert ours.shape == theirs.shape, f"{raw_png.name}: size {ours.shape} != {theirs.shape}"
    diff = np.abs(ours.astype(np.int16) - theirs.astype(np.int16))
    figures = {"max": int(diff.max()), "mean": float(diff.mean()), "ssim": _ssim(ours, theirs)}
    if floor is not None:
        row = {"name": raw_png.name, **compare(result.raw_image, Image.open(raw_png)),
               **{f"noise_{k}": v for k, v in floor.items()}}
        figures["verdict"] = judge(row).verdict
    return figures


def _merge_history(previews: list[dict]) -> dict[int, list[int]]:
    """step -> earlier steps whose batch AI Toolkit merged a non-zero LoRA into (and out of) the base."""
    merged_steps = sorted({s["step"] for s in previews if s["step"] > 0 and s["effective"]["lora_merged_into_base"]})
    return {step: [s for s in merged_steps if s < step] for step in {s["step"] for s in previews}}


@pytest.fixture(scope="module")
def figures(engine, demo_runs, sidecars):
    return reproduce_runs(engine, demo_runs, sidecars, RUNS)


def reproduce_runs(engine, demo_runs: Path, sidecars: Path, runs) -> list[dict]:
    """Run every preview three ways; rows of (run, preview, step, mode, file, fp32, fp32+history)."""
    pipe, applier = engine.pipeline("bf16")
    rows = []
    for run in runs:
        previews = _previews(sidecars, run)
        history = _merge_history([s for _, s in previews])
        for path, side in previews:
            raw = path.with_name(path.stem + ".raw.png")
            case = case_from_sidecar(side, demo_runs, sidecars, "file")
            row = {"run": run, "preview": Path(side["file"]).name, "step": side["step"],
                   "mode": case.loras[0].mode if case.loras else "-", "multiplier": side["effective"]["network_multiplier"]}
            result = engine.run(case)
            floor = noise.measure(engine, case, result, Image.open(raw), noise.estimators(1, "cpu"))
            row["file"] = _compare(result, raw, floor)
            fp32_case = case_from_sidecar(side, demo_runs, sidecars, "fp32")
            row["fp32"] = _compare(engine.run(fp32_case), raw, floor) if case.loras else row["file"]
            earlier = history[side["step"]] if case.loras else []
            if earlier:
                with applier.restored_base():
                    row["drift"] = max(applier.aitk_merge_cycle(
                        engine.lora_file(str(_lora_path(demo_runs, sidecars, run, s, "fp32")), pipe.transformer), 1.0)
                        for s in earlier)
                    row["fp32_history"] = _compare(engine.run(fp32_case), raw, floor)
                    row["file_history"] = _compare(engine.run(case), raw, floor)
            else:
                row["drift"] = 0.0
                row["fp32_history"] = row["fp32"]
                row["file_history"] = row["file"]
            row["recorded_drift"] = side["batch"]["transformer_weights_before_batch"]["max_abs_drift_vs_first_sample_call"]
            rows.append(row)
    _print_table(rows)
    return rows


def _print_table(rows) -> None:
    def cell(f):
        return f"{f['max']:3d} {f['mean']:.4f} {f['ssim']:.6f} {f.get('verdict', ''):8s}"

    print("\n\nAI Toolkit previews vs engine raw pixels (0..255): max, mean abs diff, SSIM")
    print("history = AI Toolkit's earlier merge -> unmerge cycles replayed on the bf16 base first")
    print(f"{'run':9s} {'preview':32s} {'step':>4s} {'mode':11s} {'m':>3s} | {'fp16 file (run folder)':20s} | "
          f"{'fp16 file + history':20s} | {'fp32 as sampled':20s} | {'fp32 + history':20s} | base drift (recorded)")
    for r in rows:
        print(f"{r['run']:9s} {r['preview']:32s} {r['step']:4d} {r['mode']:11s} {r['multiplier']:3g} | {cell(r['file'])} | "
              f"{cell(r['file_history'])} | {cell(r['fp32'])} | {cell(r['fp32_history'])} | "
              f"{r['drift']:.6g} ({r['recorded_drift']:.6g})")


def test_every_preview_is_covered(figures, sidecars):
    for run in RUNS:
        assert sum(r["run"] == run for r in figures) == len(list((sidecars / run).glob("*__*.json")))
    assert len(figures) == 21
    assert {r["mode"] for r in figures} == {"-", "branch", "merged_fp32"}


@pytest.fixture(scope="module")
def same_kernels(figures) -> bool:
    """Whether this machine rounds bf16 as the one that drew the previews did: every step-0 preview (the
    base model alone, nothing of ours in between) bit-exact. Only then can exactness be asserted."""
    return all(r["file"]["max"] == 0 for r in figures if r["step"] == 0)


def test_every_preview_is_exact_or_noise(figures):
    """What the gate requires of a correct setup, on any machine: the run folder's own files reproduce
    every preview within the noise floor."""
    for r in figures:
        assert r["file"]["verdict"] in ("exact", "noise"), r
    print(f"\nverdicts with the run folder's files: "
          f"{sum(r['file']['verdict'] == 'exact' for r in figures)} exact, "
          f"{sum(r['file']['verdict'] == 'noise' for r in figures)} noise")


def test_step0_previews_are_exact_where_the_kernels_match(figures, same_kernels):
    for r in figures:
        if r["step"] == 0:
            assert r["file"]["verdict"] == ("exact" if same_kernels else "noise"), r


def test_lora_previews_with_saved_files_are_close(figures):
    for r in figures:
        if r["step"] > 0:
            assert r["file"]["mean"] <= 1.0, r
            assert r["file"]["ssim"] >= 0.999, r


def test_fp32_weights_and_merge_history_reproduce_every_preview(figures, same_kernels):
    """The float32 values AI Toolkit sampled with + its merge/unmerge drift: nothing is left but the hardware."""
    for r in figures:
        verdict = r["fp32_history"]["verdict"]
        assert verdict == "exact" if same_kernels else verdict in ("exact", "noise"), r


def test_remaining_gap_is_the_float16_file(figures, same_kernels):
    lora_rows = [r for r in figures if r["step"] > 0]
    if same_kernels:  # exactness is this machine's to prove: then every step is accounted for
        for r in lora_rows:
            if r["drift"] == 0:
                assert r["fp32"]["max"] == 0, r  # fp32 weights alone are exact without a merge history
            else:
                # AI Toolkit's bf16 merge -> unmerge left the base one bf16 step off; replaying it is what closes it
                assert r["fp32"]["max"] > 0 and r["fp32_history"]["max"] == 0, r
    # the float16 file is all that separates the run folder's LoRA from the preview: never closer than fp32
    assert all(r["file_history"]["max"] > 0 for r in lora_rows)


def test_replayed_drift_matches_the_recorded_one(figures):
    for r in figures:
        if r["drift"]:
            assert r["drift"] == pytest.approx(r["recorded_drift"], abs=0), r
    assert any(r["drift"] for r in figures)


def test_fp32_sidecar_differs_from_file_only_by_float16_rounding(demo_runs, sidecars):
    from safetensors.torch import load_file

    for run in RUNS:
        for step in (10, 20):
            saved = load_file(str(_lora_path(demo_runs, sidecars, run, step, "file")))
            sampled = load_file(str(_lora_path(demo_runs, sidecars, run, step, "fp32")))
            assert saved.keys() == sampled.keys()
            for key, value in saved.items():
                assert value.dtype.is_floating_point and str(value.dtype) == "torch.float16"
                assert (sampled[key].half() == value).all(), key
