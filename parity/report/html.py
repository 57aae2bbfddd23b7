"""report.html: one self-contained page (inline CSS and JS) at the top of the run folder.

Images are relative paths inside the run folder, which keeps the page small and the folder
portable. Rendering uses jinja2 with autoescaping always on: prompts, case names, paths and
error messages come from users and must reach the page only as text.
"""
from __future__ import annotations

import math
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from ..files import metric_value
from ..format import fmt
from .assets import case_images, preview_roots
from .data import ReportData

TEMPLATES = Path(__file__).resolve().parent / "templates"
TABLE_METRICS = (("ssim", "SSIM"), ("lpips", "LPIPS"), ("psnr", "PSNR"), ("mean_abs", "mean abs"),
                 ("max_abs", "max abs"), ("floor_ssim", "floor SSIM"), ("floor_lpips", "floor LPIPS"),
                 ("floor_psnr", "floor PSNR"), ("jpeg_excess", "JPEG excess"), ("lora_gap_fraction", "LoRA gap"),
                 ("time_total_s", "total s"))
CARD_METRICS = (*TABLE_METRICS[:-1], ("noise_mean_abs", "noise mean abs"), ("noise_max_abs", "noise max abs"),
                ("noise_jpeg_excess", "noise JPEG excess"), ("noise_time_s", "noise rerun s"),
                ("lora_effect_mean_abs", "LoRA effect mean abs"), ("lora_effect_luma_rms", "LoRA effect luma RMS"),
                ("lora_effect_lpips", "LoRA effect LPIPS"), ("size_mismatch", "size mismatch"),
                ("preview_jpeg_quality", "preview JPEG q"), ("time_denoise_s", "denoise s"),
                ("time_total_s", "total s"))
GATE_LABELS = {"pass": "pass", "fail": "fail", "error": "error", "ungated": "not gated"}
SMALL = 320  # outputs narrower than this are shown enlarged, pixel for pixel


def sort_key(value) -> str:
    """data-sort of a numeric cell: JS parseFloat reads it; "" sorts last (missing or NaN)."""
    number = value if isinstance(value, float) else None
    if number is None or math.isnan(number):
        return ""
    return "Infinity" if number == math.inf else "-Infinity" if number == -math.inf else repr(number)


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    env.filters["sort_key"] = sort_key
    return env


def _cases(data: ReportData) -> list[dict]:
    verdicts = data.gate.by_name()
    roots = preview_roots(data.run_dir)
    return [{
        "anchor": f"case-{i}",
        "row": row,
        "gate_case": verdicts[row["name"]],
        "gate": GATE_LABELS[verdicts[row["name"]].status],
        "verdict": verdicts[row["name"]].verdict,
        "metrics": {column: metric_value(row, column) for column, _ in CARD_METRICS},
        "images": case_images(data.run_dir, row, roots),
        "flip": _flip(case_images(data.run_dir, row, roots)),
        "delta": data.delta_of(row["name"]),
        "small": (metric_value(row, "eff_width") or SMALL) < SMALL,
    } for i, row in enumerate(data.rows)]


def _flip(images: list[tuple[str, str | None]]) -> tuple[str, str] | None:
    """(preview, output) sources for the card's flip view, when both exist."""
    found = dict(images)
    return (found["preview"], found["output"]) if found.get("preview") and found.get("output") else None


def _gallery(data: ReportData, cases: list[dict]) -> list[dict]:
    """The ablation as pictures: per knob, one line per preview: the preview, the baseline's output, then the
    output of each value of the knob, each with its verdict."""
    by_name = {case["row"]["name"]: case for case in cases}
    knobs: dict[str, dict[str, list[dict]]] = {}
    for delta in data.deltas:
        knobs.setdefault(delta["knob"], {}).setdefault(delta["baseline"], []).append(by_name[delta["name"]])
    order = [a["knob"] for a in data.attribution]
    gallery = []
    for knob in sorted(knobs, key=lambda k: order.index(k) if k in order else len(order)):
        lines = []
        for baseline, changed in knobs[knob].items():
            base = by_name[baseline]
            picture = dict(base["images"])
            lines.append({"baseline": base, "preview": picture.get("preview"), "base_output": picture.get("output"),
                          "changed": [{"case": c, "value": c["row"].get("tag_ablation_value"),
                                       "output": dict(c["images"]).get("output")} for c in changed]})
        gallery.append({"knob": knob, "lines": lines})
    return gallery


def render(data: ReportData, charts: dict[str, str | None]) -> str:
    stats = {metric: data.stat(metric) for metric in ("ssim", "lpips", "psnr")}
    cases = _cases(data)
    return _environment().get_template("report.html").render(
        data=data, cases=cases, gallery=_gallery(data, cases), charts=charts, stats=stats, table_metrics=TABLE_METRICS,
        card_metrics=CARD_METRICS, run_name=data.run_dir.resolve().name,
        thresholds=data.gate.source)
