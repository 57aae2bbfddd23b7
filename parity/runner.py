"""The runner: a Plan through the Engine into a run folder, resumable and crash-safe.

For each case: generate (main thread) -> save output files atomically -> for a gated case, its
noise floor (reruns under numerically equivalent perturbations, ``parity.noise``; one per floor
group) -> compare with its preview and measure the LoRA's own effect (a worker thread, overlapping
the next generation unless ``serial_metrics``) -> append one results row. Cases already in the
folder with the same inputs, knobs, device type and library versions, measured as this run
measures, are skipped. A case that raises anything but bad input (a bug, an out-of-memory) gets an
error row with the exception's type and message, and the run goes on with the next case.
"""
from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
import traceback
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from . import noise
from .case import Case
from .errors import ParityError
from .hardware import fingerprint, row_columns
from .imaging import conversion_notes, open_image
from .knobs.encoding import EXTENSIONS
from .plan import Plan
from .files import file_digest, safe_name, write_atomic
from .results import PLAN, ResultsStore
from .verdict import lora_gap_fraction

RENDERS_KEPT = 32  # results kept for identical cases later in the run (a preview's variants come together)


@dataclass
class RunSummary:
    run_dir: Path
    computed: int = 0
    resumed: int = 0
    reused: int = 0  # computed from an identical case's pixels (same render key), not drawn again
    failed: int = 0
    crashed: list = field(default_factory=list)  # "case: ExceptionType: message" of cases that raised
    rows: list = field(default_factory=list)
    seconds: float = 0.0
    noise_reruns: int = 0
    noise_seconds: float = 0.0


def run_key(case: Case, base: str, device: str) -> str:
    """Identity of a result: every knob, its name, the base, the bytes of every input file, the device type
    (cpu/cuda/mps) and the torch and diffusers versions (outputs differ across any of them)."""
    import diffusers
    import torch

    parts = [case.key(), str(base), case.name, torch.device(device).type, torch.__version__, diffusers.__version__]
    for path in [case.control_image, case.preview, case.base_preview, *[l.path for l in case.loras]]:
        parts.append(file_digest(path) if path else "-")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def check_inputs(cases: list[Case]) -> None:
    """Checks before any model loads, so a bad file fails in seconds, not after an hour: every image
    decodes, every LoRA is a safetensors file whose header reads. Each distinct file is checked once."""
    from .engine.lora import check_lora_file

    checked: set[tuple[str, str]] = set()
    for case in cases:
        files = [("control image", case.control_image), ("preview", case.preview),
                 ("base preview", case.base_preview)]
        files += [("LoRA", lora.path) for lora in case.loras]
        for what, path in files:
            if not path or (what, path) in checked:
                continue
            try:
                if what == "LoRA":
                    check_lora_file(path)
                else:
                    open_image(path, what).close()
            except ParityError as err:
                raise naming_case(err, case) from None
            checked.add((what, path))


def naming_case(err: ParityError, case: Case) -> ParityError:
    """The error as the user reads it: the file, the case, the problem (a file may serve many cases)."""
    prefix = f'case "{case.name}": '
    return ParityError(err.problem if err.problem.startswith(prefix) else prefix + err.problem, source=err.source)


def environment(engine, hardware: dict) -> dict:
    import diffusers
    import torch

    return {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "device": str(engine.device), "base": engine.base,
            "torch_threads": torch.get_num_threads(), "argv": sys.argv, "hardware": hardware}


class Runner:
    def __init__(self, run_dir: str | Path, *, engine=None, base: str | None = None, device: str = "auto",
                 offload: str = "none", lpips_net: str = "alex", progress: bool = True, metrics: bool = True,
                 shard: tuple[int, int] | None = None, serial_metrics: bool = False, noise_floor: int = 1,
                 noise_scope: str = "group", noise_k_for=None, reuse: bool = True, cache_dir: str | Path | None = None):
        """``serial_metrics``: compare each case with its preview before the next case starts, so
        timings and memory are not inflated by the comparison (it matters on CPU); slower overall.
        ``noise_floor``: how many estimators measure the noise floor of gated cases (0: none);
        ``noise_scope``: "group" shares one floor among cases of one floor group, "case" measures each.
        ``noise_k_for``: row -> k of the noise verdict written into the tables (the thresholds' own).
        ``reuse``: draw each distinct image once (``Engine.render_key``); off, every case runs the pipeline.
        ``cache_dir``: where quantized weights are kept between runs (default: cache/ in the run folder)."""
        if noise_scope not in noise.SCOPES:
            raise ParityError(f"noise scope must be one of {', '.join(noise.SCOPES)}, not {noise_scope!r}")
        self.shard = shard
        self.serial_metrics = serial_metrics
        self.noise_floor = noise_floor
        self.noise_scope = noise_scope
        self.noise_k_for = noise_k_for
        self.reuse = reuse
        self._floors: dict[str, dict] = {}  # floor group -> the noise_* columns measured for it
        self._effects: dict[tuple[str, str], dict] = {}  # (base preview, preview) -> lora_effect_* columns
        self._renders: OrderedDict[str, object] = OrderedDict()  # render key -> the newest results drawn
        self._warned: dict[str, list[str]] = {}  # warning text -> cases that got it
        self.store = ResultsStore(run_dir, shard=shard[0] if shard else None)
        self._engine = engine
        self.engine_args = {"base": base, "device": device, "offload": offload,
                            "cache_dir": cache_dir or self.store.dir / "cache"}
        self.lpips_net = lpips_net
        self.progress = progress
        self.metrics = metrics

    @property
    def engine(self):
        if self._engine is None:
            from .engine import Engine

            self._engine = Engine(**self.engine_args)
        return self._engine

    def run(self, plan: Plan) -> RunSummary:
        """Run this process's share of the plan; a single process writes the tables at the end
        (also on an error), a multi-process run merges them after every process is done."""
        started = time.perf_counter()
        shard = self.shard
        cases = plan.cases if shard is None else [c for i, c in enumerate(plan.cases) if i % shard[1] == shard[0]]
        check_inputs(cases)
        if self.metrics and any(case.preview for case in cases):
            from .metrics.lpips import get_model

            # Built here, before the comparison thread starts: loading a pipeline or a LoRA in this thread
            # patches torch's parameter registration for every thread for a moment (accelerate's and PEFT's
            # meta-device init), and a network built in the other thread meanwhile got meta tensors ("Cannot
            # copy out of meta tensor" on one case of a `parity advise` run). A missing LPIPS install fails now too.
            get_model(self.lpips_net)
        base, device = self.engine.base, str(self.engine.device)
        write_atomic(self.store.dir / PLAN, json.dumps(
            {"source": plan.source, "base": base, "cases": [c.to_dict() for c in plan.cases]}, indent=1))
        done = self.store.done()
        summary = RunSummary(self.store.dir)
        self.hardware = fingerprint(self.engine.device)
        self._estimators = noise.estimators(self.noise_floor, self.engine.device.type)
        for row in done.values():  # floors measured by an earlier run of this folder are not measured again
            if row.get("noise_group") and row.get("noise_from") == row["name"]:
                self._floors.setdefault(row["noise_group"], {k: v for k, v in row.items() if k.startswith("noise_")})
        todo = []
        for case in cases:
            key = run_key(case, base, device)
            if key in done and self._measured(case, done[key]):
                summary.resumed += 1
                summary.rows.append(done[key])
            else:
                todo.append((case, key))
        # Cases that need another pipeline variant (dtype, quantization, compile, layout) run together:
        # switching variants reloads the base, minutes for a 12B checkpoint. Results do not depend on order.
        todo.sort(key=lambda item: item[0].pipeline_variant())
        if todo:
            write_atomic(self.store.dir / "run_info.json",
                         json.dumps(environment(self.engine, self.hardware), indent=1))
        bar = _progress(len(cases), summary.resumed, self.progress)
        pending: tuple[Future, Case, str] | None = None  # the case whose comparison runs in the worker
        comparing = False  # whether the pending case is compared with a preview (a real load on the CPU)

        def settle():
            """Append the pending case's row exactly once, also when an error is on its way out."""
            nonlocal pending
            done, pending = pending, None
            if done is not None:
                self._finish(*done, summary, bar)

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="parity-metrics") as pool:
            try:
                for case, key in todo:
                    bar.set_postfix_str(case.name[-40:], refresh=False)
                    overlapped = comparing and pending is not None and not pending[0].done()
                    try:
                        pixels = self.engine.render_key(case) if self.reuse else None
                        same = self._renders.get(pixels) if pixels else None
                        result = self.engine.reencode(same, case) if same else self._render(case, pixels)
                        summary.reused += same is not None
                        files = self._save(case, key, result)
                        preview = open_image(case.preview, "preview") if case.preview and self.metrics else None
                        noise_columns = self._noise(case, result, preview, summary) if preview else {}
                    except ParityError as err:
                        settle()
                        raise self._fail(case, key, err, summary) from None
                    except Exception as err:  # a bug or an out-of-memory: recorded, and on to the next case
                        settle()
                        self._crash(case, key, err, summary, bar)
                        continue
                    settle()
                    files["same_as"] = same.case.name if same else None
                    pending = (pool.submit(self._row, case, key, result, files, overlapped, preview, noise_columns),
                               case, key)
                    comparing = preview is not None
                    if self.serial_metrics:
                        settle()
            finally:
                settle()
                bar.close()
                repeated = sum(len(cases) - 1 for cases in self._warned.values())
                if repeated:
                    _print_warning(f"{repeated} repeats of the warnings above in other cases (their rows' "
                                   "`warnings` column lists them)")
                if shard is None:
                    self.store.write_tables(self.noise_k_for)
        summary.seconds = time.perf_counter() - started
        return summary

    def _render(self, case: Case, pixels: str | None):
        """Run the case and keep its result for the cases of the same render key still to come."""
        result = self.engine.run(case)
        if pixels is None:
            return result
        self._renders[pixels] = result
        while len(self._renders) > RENDERS_KEPT:
            self._renders.popitem(last=False)
        return result

    def _finish(self, future: Future, case: Case, key: str, summary: RunSummary, bar) -> None:
        try:
            row = future.result()
        except ParityError as err:
            raise self._fail(case, key, err, summary) from None
        except Exception as err:
            self._crash(case, key, err, summary, bar)
            return
        self.store.append(row)
        summary.rows.append(row)
        summary.computed += 1
        bar.update(1)
        for warning in row["warnings"]:  # each distinct warning printed once, repeats counted
            seen = self._warned.setdefault(warning, [])
            if not seen:
                _print_warning(f'case "{case.name}": {warning}')
            seen.append(case.name)

    def _fail(self, case: Case, key: str, err: ParityError, summary: RunSummary) -> ParityError:
        """Record an error row (the table shows which case stopped the run, and why); return the error to raise."""
        err = naming_case(err, case)
        self.store.append({"name": case.name, "run_key": key, "status": "error", "error_type": "ParityError",
                           "error": str(err), **case.columns(), **row_columns(self.hardware)})
        summary.failed += 1
        return err

    def _crash(self, case: Case, key: str, err: Exception, summary: RunSummary, bar) -> None:
        """An exception that is not bad input: an error row with its type, message and place, a warning,
        and the run goes on (one out-of-memory case must not cost the other hundred)."""
        frame = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
        where = f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}" if frame else ""
        message = " ".join(str(err).split()) or "(no message)"
        self.store.append({"name": case.name, "run_key": key, "status": "error", "error_type": type(err).__name__,
                           "error": message, "error_where": where, **case.columns(), **row_columns(self.hardware)})
        summary.failed += 1
        summary.crashed.append(f"{case.name}: {type(err).__name__}: {message}")
        bar.update(1)
        _print_warning(f'case "{case.name}" failed: {type(err).__name__}: {message[:300]} ({where}); '
                       "its row records it, and the run goes on")
        _free_accelerator_memory()

    def _save(self, case: Case, key: str, result) -> dict:
        stem = f"{safe_name(case.name)}-{key[:8]}"
        files = {"output_file": f"outputs/{stem}.{EXTENSIONS[case.output_format]}"}
        write_atomic(self.store.dir / files["output_file"], result.encoded)
        if result.control_image is not None:
            files["control_file"] = f"controls/{stem}.png"
            _save_png(self.store.dir / files["control_file"], result.control_image)
        return files

    def _measured(self, case: Case, row: dict) -> bool:
        """Whether a finished row holds what this run would measure: a run with --no-metrics, with
        another LPIPS backbone or with other noise-floor estimators does not stand in for this one
        (the case is regenerated)."""
        if not (case.preview and self.metrics):
            return True
        if "ssim" not in row or row.get("lpips_net") != self.lpips_net:
            return False
        if case.gated and self._estimators:
            return row.get("noise_estimators") == [e.name for e in self._estimators]
        return True

    def _noise(self, case: Case, result, preview: Image.Image, summary: RunSummary) -> dict:
        """The noise_* columns of a case: its floor group, and for a gated case the floor, measured
        now unless another case of its group measured it already (then copied, at no cost)."""
        from .metrics import jpeg_settings

        settings = jpeg_settings(preview)
        stored_as = f"jpeg q{settings[0]} subsampling {settings[1]}" if settings else preview.format or "lossless"
        group = noise.floor_group(case, result.effective, stored_as, self.noise_scope)
        if not (case.gated and self._estimators):
            return {"noise_group": group}
        if group in self._floors:
            return {**self._floors[group], "noise_time_s": 0.0}
        started = time.perf_counter()
        floor = noise.measure(self.engine, case, result, preview, self._estimators, self.lpips_net)
        seconds = time.perf_counter() - started
        summary.noise_reruns += len(self._estimators)
        summary.noise_seconds += seconds
        columns = {"noise_group": group, "noise_from": case.name, "noise_estimators": [e.name for e in self._estimators],
                   **{f"noise_{k}": v for k, v in floor.items()}}
        self._floors[group] = columns
        return {**columns, "noise_time_s": round(seconds, 6)}

    def _row(self, case: Case, key: str, result, files: dict, overlapped: bool, preview: Image.Image | None,
             noise_columns: dict) -> dict:
        """``overlapped``: the previous case's comparison was still running when this case started,
        so on CPU its time_* and mem_* columns may be inflated (see ``serial_metrics``)."""
        row = {"name": case.name, "run_key": key, "status": "ok", **result.row(), **files,
               "preview_file": case.preview or "", "metrics_overlapped": overlapped, **row_columns(self.hardware)}
        if preview is not None:
            row["preview_mode"] = preview.mode
            row["warnings"] = [*row["warnings"], *(f"preview: {note}" for note in conversion_notes(preview))]
            row.update(self._compare(case, key, result, preview))
            row.update(noise_columns)
            if case.base_preview:
                row.update(self._lora_effect(case.base_preview, case.preview))
                row["lora_gap_fraction"] = lora_gap_fraction(row)
        return row

    def _lora_effect(self, base_preview: str, preview: str) -> dict:
        """lora_effect_*: the base model's preview against the LoRA's, both as AI Toolkit saved them;
        once per pair (every variant of a preview shares it)."""
        from .metrics import distance
        from .metrics.jpeg import jpeg_luma

        pair = (base_preview, preview)
        if pair not in self._effects:
            base, drawn = open_image(base_preview, "base preview"), open_image(preview, "preview")
            if base.size != drawn.size:
                self._effects[pair] = {"lora_effect_preview": base_preview,
                                       "lora_effect_note": f"base preview is {base.size}, preview {drawn.size}"}
            else:
                a, b = np.asarray(base.convert("RGB")), np.asarray(drawn.convert("RGB"))
                effect = {k: v for k, v in distance(a, b, self.lpips_net).items() if k != "psnr"}
                effect["luma_rms"] = float(np.sqrt(np.mean((jpeg_luma(a) - jpeg_luma(b)) ** 2)))
                self._effects[pair] = {"lora_effect_preview": base_preview,
                                       **{f"lora_effect_{k}": v for k, v in effect.items()}}
        return self._effects[pair]

    def _compare(self, case: Case, key: str, result, preview: Image.Image) -> dict:
        from .metrics import compare_with_pictures

        metrics, (heatmap, ssim_map) = compare_with_pictures(result.image, preview, raw=result.raw_image,
                                                             lpips_net=self.lpips_net)
        stem = f"{safe_name(case.name)}-{key[:8]}"
        out = dict(metrics)
        out["heatmap_file"] = f"diffs/{stem}.absdiff.png"
        out["ssim_map_file"] = f"diffs/{stem}.ssim.png"
        _save_png(self.store.dir / out["heatmap_file"], heatmap)
        _save_png(self.store.dir / out["ssim_map_file"], ssim_map)
        return out


def _free_accelerator_memory() -> None:
    """After a failed case, give back what it held on a GPU (an out-of-memory case leaves caches full)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _save_png(path: Path, image: Image.Image) -> None:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_atomic(path, buffer.getvalue())


def _print_warning(text: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(f"warning: {text}", file=sys.stderr)  # above the progress bar, not through it


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="case", disable=not enabled, dynamic_ncols=True,
                desc="parity")
