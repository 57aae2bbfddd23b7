"""`parity plan`: what a run would do, before it does it.

Each case of a plan is one of: done (a result with the same inputs is in the run folder, so a run
resumes it), the same image as an earlier case of the plan (``Engine.render_key``: drawn once, only
encoded again), or to compute. The time of each stage is estimated from the timings the run folder
already holds for the same base and device type, scaled by the case's size: seconds per case for text
encoding, per megapixel for the control image, per step and output megapixel for denoising (twice
with true CFG), per output megapixel for decoding and encoding. Without timings, a calibration runs
one real case per pipeline variant into the run folder (a later run resumes it).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .case import Case
from .files import metric_value
from .results import ResultsStore

STAGES = ("text_encode", "control_encode", "denoise", "decode", "output_encode")
RESUMED, SAME, COMPUTE = "done", "same image as", "compute"


@dataclass
class PlannedCase:
    case: Case
    status: str  # done | same image as | compute
    same_as: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # estimated seconds per stage (empty: unknown)

    @property
    def total(self) -> float | None:
        return sum(self.seconds.values()) if self.seconds else None


def _megapixels(size) -> float:
    return size[0] * size[1] / 1e6 if size else 0.0


def _work(case: Case, sizes) -> dict[str, float]:
    """What each stage's time scales with, for one case."""
    cfg = 2.0 if case.guidance_mode == "true_cfg" and case.true_cfg_scale > 1 and case.negative_prompt else 1.0
    output = _megapixels(sizes.output)
    return {"text_encode": 1.0, "control_encode": _megapixels(sizes.control_encoded),
            "denoise": case.steps * cfg * output, "decode": output, "output_encode": output}


class Rates:
    """Seconds per unit of work of each stage, from the rows of earlier runs (median over cases)."""

    def __init__(self, rows: list[dict]):
        self.by_variant: dict[tuple, dict[str, float]] = {}
        samples: dict[tuple, dict[str, list[float]]] = {}
        for row in rows:
            if row.get("status") != "ok" or row.get("same_as") or not row.get("eff_width"):
                continue
            output = (metric_value(row, "eff_width") or 0) * (metric_value(row, "eff_height") or 0) / 1e6
            control = row.get("eff_control_size_encoded")
            cfg = 2.0 if (metric_value(row, "eff_transformer_calls") or 0) > (metric_value(row, "steps") or 1) else 1.0
            work = {"text_encode": 1.0, "control_encode": _megapixels(control) if control else 0.0,
                    "denoise": (metric_value(row, "steps") or 0) * cfg * output, "decode": output,
                    "output_encode": output}
            for variant in ((row.get("dtype"), row.get("quantize")), ("any",)):
                for stage in STAGES:
                    seconds = metric_value(row, f"time_{stage}_s")
                    if seconds is not None and work[stage] > 0:
                        samples.setdefault(variant, {}).setdefault(stage, []).append(seconds / work[stage])
        for variant, stages in samples.items():
            self.by_variant[variant] = {stage: statistics.median(values) for stage, values in stages.items()}
        self.cases = sum(1 for row in rows if row.get("status") == "ok" and not row.get("same_as"))

    def estimate(self, case: Case, sizes) -> dict[str, float]:
        rates = self.by_variant.get((case.dtype, case.quantize)) or self.by_variant.get(("any",))
        if not rates:
            return {}
        return {stage: rates.get(stage, 0.0) * amount for stage, amount in _work(case, sizes).items()}


def dry_run(cases: list[Case], run_dir: str | Path, engine,
            rows: list[dict] | None = None) -> tuple[list[PlannedCase], int]:
    """Each case's status and estimated stage times, and how many timed cases the estimate rests on;
    ``rows`` are the timings to estimate from (default: the run folder's own, on this device type)."""
    from .runner import run_key

    store = ResultsStore(run_dir) if Path(run_dir).is_dir() else None
    done = store.done() if store else {}
    if rows is None:
        rows = [row for row in (store.rows() if store else []) if _same_machine(row, engine)]
    rates = Rates(rows)
    seen: dict[str, str] = {}
    planned = []
    for case in cases:
        sizes = engine.sizes(case)
        estimate = rates.estimate(case, sizes)
        if run_key(case, engine.base, str(engine.device)) in done:
            planned.append(PlannedCase(case, RESUMED))
            continue
        pixels = engine.render_key(case)
        if pixels in seen:
            planned.append(PlannedCase(case, SAME, seen[pixels], {"output_encode": estimate.get("output_encode", 0.0)}
                                       if estimate else {}))
            continue
        seen[pixels] = case.name
        planned.append(PlannedCase(case, COMPUTE, None, estimate))
    return planned, rates.cases


def _same_machine(row: dict, engine) -> bool:
    """A timing row of this device type (a row names a GPU only when it ran on one)."""
    return ("cuda" if row.get("hw_gpu") else "cpu") == engine.device.type


def summary(planned: list[PlannedCase], rates_cases: int) -> list[str]:
    """The totals of a dry run, in lines for people."""
    counts = {status: sum(p.status == status for p in planned) for status in (COMPUTE, SAME, RESUMED)}
    lines = [f"{len(planned)} cases: {counts[COMPUTE]} to compute, {counts[SAME]} the same image as another case "
             f"(drawn once), {counts[RESUMED]} done already (resumed)"]
    known = [p for p in planned if p.status != RESUMED]
    if known and all(p.seconds for p in known):
        by_stage = {stage: sum(p.seconds.get(stage, 0.0) for p in known) for stage in STAGES}
        total = sum(by_stage.values())
        stages = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in by_stage.items() if seconds)
        lines.append(f"estimated {total:.0f} s ({total / 60:.1f} min): {stages}; from {rates_cases} timed case(s) "
                     "of this base and device")
    elif known:
        lines.append("no timings of this base and device in the run folder yet: run once, or pass --calibrate")
    return lines
