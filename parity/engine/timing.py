"""Stage timing and peak memory, the same way on every device.

On CUDA, stages are timed with CUDA events (host clocks would measure kernel launches,
not work) and memory is the allocator's peak; on CPU, wall clock and process RSS.
"""
from __future__ import annotations

import resource
import sys
import time
from contextlib import contextmanager

import torch


class StageTimer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._pending: list[tuple[str, object, object]] = []
        self.seconds: dict[str, float] = {}
        self.step_seconds: list[float] = []

    @contextmanager
    def stage(self, name: str):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._pending.append((name, start, end))
        else:
            start = time.perf_counter()
            yield
            self._add(name, time.perf_counter() - start)

    def _add(self, name: str, seconds: float) -> None:
        if name == "step":
            self.step_seconds.append(seconds)
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def finish(self) -> dict:
        if self.cuda:
            torch.cuda.synchronize()
            for name, start, end in self._pending:
                self._add(name, start.elapsed_time(end) / 1000.0)
            self._pending.clear()
        out = {f"time_{name}_s": round(value, 6) for name, value in self.seconds.items()}
        out["time_denoise_s"] = out.pop("time_step_s", 0.0)
        out["time_steps_s"] = [round(s, 6) for s in self.step_seconds]
        return out


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict:
    """CUDA allocator peak on GPU; on CPU the process's peak RSS (it never goes down)."""
    if device.type == "cuda":
        return {
            "mem_peak_allocated_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
            "mem_peak_reserved_mb": round(torch.cuda.max_memory_reserved(device) / 2**20, 1),
        }
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return {"mem_peak_rss_mb": round(rss * scale / 2**20, 1)}
