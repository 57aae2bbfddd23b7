"""The noise floor on the demo previews: wide enough for another machine, narrow enough for every knob.

Another machine: 
tests/data/cross-hardware holds what the same aitk-preview cases give on an Intel Xeon with AMX-BF16 and
AVX512-BF16 (torch CPU capability AVX512), lossless: 0.36-0.70/255 mean, max 4-8, from AI Toolkit's own
pixels, while this suite's machine may be bit-exact. Judged with the floor measured here (the attention-kernel
estimator), that machine's outputs must be `noise`, never `mismatch`: a correct setup must not go red because
another CPU rounds bf16 differently.

Every knob: each ablation of cases/default.yaml that changes the image, applied to the final checkpoint's
previews, must stay a `mismatch` on at least 90% of them (a floor that hides real mismatches is worse than
none). LoRA application modes (PEFT weight, fused, AI Toolkit's fp32 branch) are not among them: they compute
the same W + s*BA in another order, which is exactly the rounding the floor is there to absorb.
Run with -s for the figures.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from parity import noise
from parity.aitk import load_run, preview_cases
from parity.metrics import compare, distance
from parity.case import LoraSpec
from parity.verdict import NOISE_K, judge, lora_gap_fraction

CROSS = Path(__file__).resolve().parent / "data" / "cross-hardware"
RUNS = ("tiny_bf16", "tiny_odd")


def as_row(name: str, output: Image.Image, preview: Image.Image, floor: dict) -> dict:
    """A results row as the runner writes it: the comparison and the floor columns."""
    return {"name": name, "status": "ok", **compare(output, preview, raw=output),
            **{f"noise_{k}": v for k, v in floor.items()}}


@pytest.fixture(scope="module")
def figures(engine, demo_runs, sidecars):
    rows = []
    estimator = noise.estimators(1, "cpu")
    for run in RUNS:
        for case in preview_cases(load_run(demo_runs / run)):
            stem = Path(case.preview).stem
            preview = Image.open(case.preview)
            aitk_raw = np.asarray(Image.open(sidecars / run / f"{stem}.raw.png").convert("RGB"))
            other = Image.open(CROSS / run / f"{stem}.png").convert("RGB")
            ours = engine.run(case)
            floor = noise.measure(engine, case, ours, preview, estimator)
            perturbed = engine.run(noise.ESTIMATORS[0].perturb(case))
            raw_floor = distance(np.asarray(ours.raw_image), np.asarray(perturbed.raw_image))
            rows.append({
                "case": case.name,
                "aitk_case": case,
                "result": ours,
                "ours": judge(as_row(case.name, ours.raw_image, preview, floor)),
                "other": judge(as_row(case.name, other, preview, floor)),
                "other_row": as_row(case.name, other, preview, floor),
                "floor": floor,
                "raw_floor": raw_floor,
                "cross": distance(np.asarray(other), aitk_raw),
            })
    print("\n\ncase                     ours      other machine  JPEG excess (other)  floor   raw: cross mean/max  k x floor")
    for r in rows:
        print(f"{r['case']:24s} {r['ours'].verdict:9s} {r['other'].verdict:14s} {r['other_row']['jpeg_excess']:8.3f}"
              f"             {r['floor']['jpeg_excess']:.3f}   {r['cross']['mean_abs']:.3f}/{r['cross']['max_abs']:.0f}"
              f"            {NOISE_K * r['raw_floor']['mean_abs']:.3f}/{NOISE_K * r['raw_floor']['max_abs']:.0f}")
    return rows


def test_the_fixture_is_the_other_machine():
    machine = json.loads((CROSS / "machine.json").read_text())
    assert "amx_bf16" in machine["isa_flags"] and machine["torch_cpu_capability"] == "AVX512"
    assert len(json.loads((CROSS / "index.json").read_text())) == 21


def test_every_preview_redrawn_here_is_exact_or_noise(figures):
    assert len(figures) == 21
    assert {r["ours"].verdict for r in figures} <= {"exact", "noise"}, [(r["case"], r["ours"].reason) for r in figures]


def test_the_other_machines_redraws_are_noise_not_mismatch(figures):
    verdicts = {r["case"]: r["other"] for r in figures}
    assert all(v.verdict in ("exact", "noise") for v in verdicts.values()), \
        {name: v.reason for name, v in verdicts.items() if v.verdict == "mismatch"}


def test_k_times_the_floor_covers_the_cross_cpu_distance_on_90_percent(figures):
    """In raw pixels: twice what the attention-kernel swap moves covers what another CPU moves."""
    covered = [r for r in figures if NOISE_K * r["raw_floor"]["mean_abs"] >= r["cross"]["mean_abs"]
               and NOISE_K * r["raw_floor"]["max_abs"] >= r["cross"]["max_abs"]]
    assert len(covered) >= 0.9 * len(figures), [(r["case"], r["raw_floor"], r["cross"]) for r in figures]


def _modes(case, mode):
    return tuple(LoraSpec(lora.path, lora.scale, mode) for lora in case.loras)


# knob -> how it changes an aitk-preview case (the ablation of cases/default.yaml, and the wrong setups)
KNOBS = {
    "guidance 3.5": lambda c: c.replace(guidance=3.5),
    "steps - 1": lambda c: c.replace(steps=c.steps - 1),
    "control_resize nearest": lambda c: c.replace(control_resize="nearest"),
    "control_resize bicubic": lambda c: c.replace(control_resize="bicubic"),
    "control_fit crop": lambda c: c.replace(control_fit="crop"),
    "control_alpha white": lambda c: c.replace(control_alpha="white"),
    "control_exif_transpose": lambda c: c.replace(control_exif_transpose=True),
    "snap floor32": lambda c: c.replace(snap="floor32"),
    "sigma_schedule scheduler": lambda c: c.replace(sigma_schedule="scheduler"),
    "dynamic_shifting off": lambda c: c.replace(dynamic_shifting=False),
    "dtype fp32": lambda c: c.replace(dtype="fp32"),
    "qfloat8": lambda c: c.replace(quantize="qfloat8", loras=_modes(c, "branch")),
    "seed 0": lambda c: c.replace(seed=0),
    "LoRA scale 0.8": lambda c: c.replace(loras=tuple(LoraSpec(lo.path, 0.8 * lo.scale, lo.mode) for lo in c.loras)),
    "LoRA missing": lambda c: c.replace(loras=()),
}
EQUIVALENT = {"LoRA as PEFT weight": lambda c: c.replace(loras=_modes(c, "dynamic")),
              "LoRA fused": lambda c: c.replace(loras=_modes(c, "fused"))}


@pytest.fixture(scope="module")
def knob_figures(engine, figures):
    final = [r for r in figures if r["case"].split("/")[1] == "step20"]
    out = []
    for r in final:
        case, preview = r["aitk_case"], Image.open(r["aitk_case"].preview)
        base_raw = np.asarray(r["result"].raw_image)
        for knob, change in {**KNOBS, **EQUIVALENT}.items():
            changed = engine.run(change(case))
            same = changed.raw_image.size == r["result"].raw_image.size and \
                np.array_equal(np.asarray(changed.raw_image), base_raw)
            row = as_row(case.name, changed.raw_image, preview, r["floor"])
            out.append({"case": case.name, "knob": knob, "changes_pixels": not same, "verdict": judge(row),
                        "row": row, "preview": case.preview})
    print("\n\nknob                       mismatch / previews it changes")
    for knob in {**KNOBS, **EQUIVALENT}:
        mine = [o for o in out if o["knob"] == knob and o["changes_pixels"]]
        print(f"{knob:26s} {sum(o['verdict'].verdict == 'mismatch' for o in mine)} / {len(mine)}")
    return out


def test_every_knob_that_changes_the_image_is_a_mismatch_on_90_percent(knob_figures):
    changed = [o for o in knob_figures if o["knob"] in KNOBS and o["changes_pixels"]]
    caught = [o for o in changed if o["verdict"].verdict == "mismatch"]
    assert len(changed) >= 60
    assert len(caught) >= 0.9 * len(changed), [(o["case"], o["knob"], o["verdict"].reason)
                                               for o in changed if o not in caught]
    for knob in ("qfloat8", "LoRA scale 0.8", "LoRA missing", "guidance 3.5", "dtype fp32", "seed 0"):
        assert all(o["verdict"].verdict == "mismatch" for o in changed if o["knob"] == knob), knob


def test_lora_application_modes_are_rounding_not_mismatch(knob_figures):
    equivalent = [o for o in knob_figures if o["knob"] in EQUIVALENT]
    assert equivalent and all(o["verdict"].verdict in ("exact", "noise") for o in equivalent), \
        [(o["case"], o["knob"], o["verdict"].reason) for o in equivalent]


def test_a_missing_lora_misses_most_of_its_effect(knob_figures, demo_runs):
    """Against the LoRA's own effect (step-0 preview -> final preview), a missing LoRA is nearly all of it."""
    from parity.aitk import base_twins
    from parity.metrics.jpeg import jpeg_luma

    twins = {}
    for run in RUNS:
        twins.update(base_twins(load_run(demo_runs / run)))
    missing = [o for o in knob_figures if o["knob"] == "LoRA missing"]
    assert len(missing) == 7
    for o in missing:
        base = jpeg_luma(np.asarray(Image.open(twins[o["preview"]]).convert("RGB")))
        drawn = jpeg_luma(np.asarray(Image.open(o["preview"]).convert("RGB")))
        row = {**o["row"], "lora_effect_luma_rms": float(np.sqrt(np.mean((base - drawn) ** 2)))}
        assert lora_gap_fraction(row) > 0.5, (o["case"], lora_gap_fraction(row))
