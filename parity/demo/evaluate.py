"""Measuring the demo model: is each edit done, is the scene kept, does the LoRA show, how fast is it.

Every figure comes from the saved model loaded through ``FluxKontextPipeline.from_pretrained`` and
run as a user would (8 steps, guidance 4 as in the previews, output size = scene size, no auto
resize), on held-out scenes (seeds never used in training).

Per edit type, "done" is measured on the region the edit is about, in the output image:
  recolour    the recoloured shape's mean colour has a hue within 25 degrees of the colour asked for
  background  the same on the background pixels (shapes and border band excluded)
  frame       the same on the border band
  remove      the removed shape's area is within 40 (RGB distance) of the background colour
Also reported: how often the nearest named colour is the one asked for (stricter than the hue
window, which can accept a neighbouring palette hue), and LPIPS (the project's own) to the target:
low only when the edit is done AND the rest of the scene is kept.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..metrics import lpips_distance
from . import scenes

STEPS = 8
GUIDANCE = 4.0
HUE_TOLERANCE = 25.0
REMOVE_TOLERANCE = 40.0
MULTIPLIERS = (0.5, 1.0, 1.5)


def generate(pipe, control, prompt: str, seed: int, *, steps: int = STEPS, guidance: float = GUIDANCE):
    w, h = control.size
    return pipe(image=control, prompt=prompt, height=h, width=w, max_area=h * w, _auto_resize=False,
                num_inference_steps=steps, guidance_scale=guidance,
                generator=torch.Generator("cpu").manual_seed(seed)).images[0]


def _hue_gap(a: float, b: float) -> float:
    d = abs(a - b) % 360.0
    return min(d, 360.0 - d)


def _nearest_name(rgb) -> str:
    return min(scenes.PALETTE, key=lambda n: float(np.sum((np.asarray(scenes.PALETTE[n]) - rgb) ** 2)))


def edit_done(edit: scenes.Edit, output) -> dict:
    """Whether the output does the edit: {done, value, nearest_is_target}; value in degrees or RGB units."""
    out = np.asarray(output.convert("RGB"), np.float64)
    if edit.kind == "remove":
        mask = scenes.shape_mask(edit.source, edit.shape_index) & scenes.background_mask(edit.target, erode=0)
        mean = out[mask].mean(0)
        value = float(np.linalg.norm(mean - np.asarray(edit.target.background_rgb)))
        return {"done": bool(value <= REMOVE_TOLERANCE), "value": round(value, 1), "nearest_is_target": None}
    if edit.kind == "recolour":
        mask = scenes.shape_mask(edit.target, edit.shape_index)
    elif edit.kind == "background":
        mask = scenes.background_mask(edit.target)
    else:
        mask = scenes.frame_mask(edit.target)
    mean = out[mask].mean(0)
    value = _hue_gap(scenes.hue_of(mean), scenes.hue_of(scenes.PALETTE[edit.color]))
    return {"done": bool(value <= HUE_TOLERANCE), "value": round(float(value), 1),
            "nearest_is_target": bool(_nearest_name(mean) == edit.color)}


def edits_report(pipe, seeds_per_kind: dict[str, list[int]], *, sizes=(128, 128)) -> dict:
    """Per edit type: share done, share nearest-named, LPIPS to target (mean and max), per-scene rows."""
    report = {}
    for kind, seeds in seeds_per_kind.items():
        rows = []
        for seed in seeds:
            ex = scenes.example(seed, width=sizes[0], height=sizes[1], kind=kind)
            out = generate(pipe, ex.control, ex.prompt, seed)
            rows.append({"seed": seed, "prompt": ex.prompt, **edit_done(ex.edit, out),
                         "lpips_to_target": round(lpips_distance(np.asarray(out), np.asarray(ex.target)), 4),
                         "lpips_control_to_target": round(lpips_distance(np.asarray(ex.control),
                                                                         np.asarray(ex.target)), 4)})
        named = [r["nearest_is_target"] for r in rows if r["nearest_is_target"] is not None]
        lp = [r["lpips_to_target"] for r in rows]
        report[kind] = {
            "n": len(rows),
            "done_share": round(float(np.mean([r["done"] for r in rows])), 3),
            "nearest_named_share": round(float(np.mean(named)), 3) if named else None,
            "lpips_to_target_mean": round(float(np.mean(lp)), 4),
            "lpips_to_target_max": round(float(np.max(lp)), 4),
            "lpips_share_le_0.25": round(float(np.mean([v <= 0.25 for v in lp])), 3),
            "rows": rows,
        }
    return report


def lora_report(pipe, lora_path, seeds: list[int], *, adapter: str = "zxq_eval") -> dict:
    """LPIPS(base, LoRA) per multiplier on trigger prompts (and at 1.0 without the trigger), and how
    close the LoRA output is to the zxq-styled target."""
    from safetensors.torch import load_file

    pipe.load_lora_weights(load_file(str(lora_path)), adapter_name=adapter)
    rows = []
    try:
        for seed in seeds:
            ex = scenes.example(seed, width=128, height=128, styled=True)
            plain = ex.edit.instruction
            pipe.disable_lora()
            base = np.asarray(generate(pipe, ex.control, ex.prompt, seed))
            base_plain = np.asarray(generate(pipe, ex.control, plain, seed))
            pipe.enable_lora()
            row = {"seed": seed, "prompt": ex.prompt}
            for m in MULTIPLIERS:
                pipe.set_adapters([adapter], [m])
                out = np.asarray(generate(pipe, ex.control, ex.prompt, seed))
                row[f"lpips_base_vs_m{m}"] = round(lpips_distance(base, out), 4)
                if m == 1.0:
                    row["lpips_m1_vs_styled_target"] = round(lpips_distance(out, np.asarray(ex.target)), 4)
                    row["lpips_base_vs_styled_target"] = round(lpips_distance(base, np.asarray(ex.target)), 4)
                    no_trigger = np.asarray(generate(pipe, ex.control, plain, seed))
                    row["lpips_base_vs_m1_no_trigger"] = round(lpips_distance(base_plain, no_trigger), 4)
            rows.append(row)
    finally:
        pipe.delete_adapters([adapter])
    keys = [k for k in rows[0] if k.startswith("lpips")]
    return {"file": str(lora_path), "n": len(rows),
            "mean": {k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys}, "rows": rows}


def time_per_case(pipe, *, size: int = 128, repeats: int = 5) -> dict:
    """Seconds per 8-step edit at size x size on one torch thread (after one warm-up run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ex = scenes.example(7, width=size, height=size)
        generate(pipe, ex.control, ex.prompt, 0)
        times = []
        for i in range(repeats):
            t0 = time.perf_counter()
            generate(pipe, ex.control, ex.prompt, i)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return {"size": size, "steps": STEPS, "threads": 1, "median_s": round(float(np.median(times)), 3),
            "min_s": round(float(np.min(times)), 3)}
