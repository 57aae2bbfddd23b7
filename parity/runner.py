"""The runner: a Plan through the Engine into a run folder, resumable and crash-safe.

For each case: generate (main thread) -> save output files atomically -> compare with its
preview (a worker thread, overlapping the next generation) -> append one results row.
Cases already in the folder with the same inputs and knobs are skipped.
"""
from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .case import Case
from .errors import ParityError
from .knobs.encoding import EXTENSIONS
from .plan import Plan
from .results import ResultsStore, file_digest, safe_name, write_atomic


@dataclass
class RunSummary:
    run_dir: Path
    computed: int = 0
    resumed: int = 0
    failed: int = 0
    rows: list = field(default_factory=list)
    seconds: float = 0.0


def run_key(case: Case, base: str) -> str:
    """Identity of a result: every knob, the base, and the bytes of every input file."""
    parts = [case.key(), str(base), case.name]
    for path in [case.control_image, case.preview, *[l.path for l in case.loras]]:
        parts.append(file_digest(path) if path else "-")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def check_inputs(cases: list[Case]) -> None:
    """Cheap checks before any model loads, so a typo fails in a second, not after an hour."""
    from .engine.lora import PICKLE_SUFFIXES

    for case in cases:
        for what, path in (("control image", case.control_image), ("preview", case.preview)):
            if path and not Path(path).is_file():
                raise ParityError(f'{what} of case "{case.name}" not found', source=path)
        for lora in case.loras:
            path = Path(lora.path)
            if path.suffix.lower() in PICKLE_SUFFIXES:
                raise ParityError(f'case "{case.name}": LoRA is a pickle-based file; only .safetensors are loaded',
                                  source=path)
            if not path.is_file():
                raise ParityError(f'LoRA of case "{case.name}" not found', source=path)


def environment(engine) -> dict:
    import diffusers
    import torch

    return {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "device": str(engine.device), "base": engine.base,
            "torch_threads": torch.get_num_threads(), "argv": sys.argv}


class Runner:
    def __init__(self, run_dir: str | Path, *, engine=None, base: str | None = None, device: str = "auto",
                 offload: str = "none", lpips_net: str = "alex", progress: bool = True, metrics: bool = True,
                 shard: tuple[int, int] | None = None):
        self.shard = shard
        self.store = ResultsStore(run_dir, shard=shard[0] if shard else None)
        self._engine = engine
        self.engine_args = {"base": base, "device": device, "offload": offload}
        self.lpips_net = lpips_net
        self.progress = progress
        self.metrics = metrics

    @property
    def engine(self):
        if self._engine is None:
            from .engine import Engine

            self._engine = Engine(self.engine_args["base"], device=self.engine_args["device"],
                                  offload=self.engine_args["offload"])
        return self._engine

    def run(self, plan: Plan) -> RunSummary:
        """Run this process's share of the plan; tables are written by `write_tables` after."""
        started = time.perf_counter()
        shard = self.shard
        cases = plan.cases if shard is None else [c for i, c in enumerate(plan.cases) if i % shard[1] == shard[0]]
        check_inputs(cases)
        base = self.engine.base
        write_atomic(self.store.dir / "plan.json", json.dumps(
            {"source": plan.source, "base": base, "cases": [c.to_dict() for c in plan.cases]}, indent=1))
        done = self.store.done()
        summary = RunSummary(self.store.dir)
        todo = []
        for case in cases:
            key = run_key(case, base)
            if key in done:
                summary.resumed += 1
                summary.rows.append(done[key])
            else:
                todo.append((case, key))
        if todo:
            write_atomic(self.store.dir / "run_info.json", json.dumps(environment(self.engine), indent=1))
        bar = _progress(len(cases), summary.resumed, self.progress)
        pending: Future | None = None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="parity-metrics") as pool:
            try:
                for case, key in todo:
                    bar.set_postfix_str(case.name[-40:], refresh=False)
                    try:
                        result = self.engine.run(case)
                    except ParityError as err:
                        self._finish(pending, summary, bar)
                        pending = None
                        self.store.append({"name": case.name, "run_key": key, "status": "error",
                                           "error": str(err), **case.columns()})
                        summary.failed += 1
                        raise
                    files = self._save(case, key, result)
                    self._finish(pending, summary, bar)
                    pending = pool.submit(self._row, case, key, result, files)
                self._finish(pending, summary, bar)
                pending = None
            finally:
                if pending is not None:
                    self._finish(pending, summary, bar)
                bar.close()
                if shard is None:
                    self.store.write_tables()
        summary.seconds = time.perf_counter() - started
        return summary

    def _finish(self, pending: Future | None, summary: RunSummary, bar) -> None:
        if pending is None:
            return
        row = pending.result()
        self.store.append(row)
        summary.rows.append(row)
        summary.computed += 1
        bar.update(1)

    def _save(self, case: Case, key: str, result) -> dict:
        stem = f"{safe_name(case.name)}-{key[:8]}"
        files = {"output_file": f"outputs/{stem}.{EXTENSIONS[case.output_format]}"}
        write_atomic(self.store.dir / files["output_file"], result.encoded)
        if result.control_image is not None:
            files["control_file"] = f"controls/{stem}.png"
            _save_png(self.store.dir / files["control_file"], result.control_image)
        return files

    def _row(self, case: Case, key: str, result, files: dict) -> dict:
        row = {"name": case.name, "run_key": key, "status": "ok", **result.row(), **files,
               "preview_file": case.preview or ""}
        if case.preview and self.metrics:
            row.update(self._compare(case, key, result))
        return row

    def _compare(self, case: Case, key: str, result) -> dict:
        from .metrics import compare_with_preview, diff_images

        preview = _open_preview(case.preview)
        metrics = compare_with_preview(result.image, result.raw_image, preview, lpips_net=self.lpips_net)
        heatmap, ssim_map = diff_images(result.image, preview)
        stem = f"{safe_name(case.name)}-{key[:8]}"
        out = dict(metrics)
        out["heatmap_file"] = f"diffs/{stem}.absdiff.png"
        out["ssim_map_file"] = f"diffs/{stem}.ssim.png"
        _save_png(self.store.dir / out["heatmap_file"], heatmap)
        _save_png(self.store.dir / out["ssim_map_file"], ssim_map)
        return out


def _save_png(path: Path, image: Image.Image) -> None:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_atomic(path, buffer.getvalue())


def _open_preview(path: str) -> Image.Image:
    from .engine.engine import _open_image

    return _open_image(Path(path))


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="case", disable=not enabled, dynamic_ncols=True,
                desc="parity")
