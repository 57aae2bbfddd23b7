"""The machine a result was computed on: what picks the kernels, so what decides the last bits.

bf16 outputs differ between machines whose matmul kernels differ (an AMX-BF16 Xeon and an AMD EPYC
give 0.4/255 mean apart on the demo; GPUs differ per model and compute capability), so a result is
only "exact" relative to the hardware and libraries that drew it. Every run folder records this
fingerprint (run_info.json, each results row, the report) so a difference between two runs can be
traced to the machine, and `hardware_id` tells at a glance whether two rows share one.
"""
from __future__ import annotations

import functools
import hashlib
import json
import platform
from pathlib import Path

# CPU features that select torch/oneDNN kernels for float32/bf16/fp16 arithmetic.
KERNEL_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_fp16", "amx_int8", "asimd", "sve", "sve2",
                "bf16", "i8mm")
PACKAGES = ("torch", "diffusers", "transformers", "peft", "accelerate", "optimum-quanto")


def _cpu() -> tuple[str, list[str]]:
    """CPU model name and its kernel-relevant ISA flags (Linux /proc/cpuinfo; the platform's name elsewhere)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return model, []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and value.strip():
            model = value.strip()
        elif key in ("flags", "Features"):
            flags.update(value.split())
    return model, sorted(flags.intersection(KERNEL_FLAGS))


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=None)
def _static() -> dict:
    import torch

    model, flags = _cpu()
    info = {"cpu": model, "cpu_isa": flags, "machine": platform.machine(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cuda": torch.version.cuda, "cudnn": None, "gpu": None, "gpu_compute_capability": None,
            "versions": {name: _version(name) for name in PACKAGES}}
    if torch.cuda.is_available():
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def fingerprint(device=None) -> dict:
    """The fingerprint of this process on ``device`` (a torch device or its name; GPU fields for CUDA)."""
    import torch

    info = dict(_static())
    info["threads"] = torch.get_num_threads()
    info["device"] = str(device) if device is not None else "cpu"
    if device is not None and torch.device(device).type == "cuda":
        index = torch.device(device).index or 0
        info["gpu"] = torch.cuda.get_device_name(index)
        major, minor = torch.cuda.get_device_capability(index)
        info["gpu_compute_capability"] = f"{major}.{minor}"
    info["hardware_id"] = hardware_id(info)
    return info


def hardware_id(info: dict) -> str:
    """Short id of everything in a fingerprint that can change the arithmetic (not the device index)."""
    keys = ("cpu", "cpu_isa", "machine", "torch_cpu_capability", "cuda", "cudnn", "gpu", "gpu_compute_capability",
            "versions", "threads")
    blob = json.dumps({k: info.get(k) for k in keys}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def describe(info: dict) -> str:
    """One line for people: "AMD EPYC (avx2 avx512_bf16 ...; torch CPU AVX512), 1 thread, torch 2.13.0"."""
    isa = " ".join(info.get("cpu_isa") or []) or "no ISA flags read"
    where = f"{info.get('cpu')} ({isa}; torch CPU {info.get('torch_cpu_capability')})"
    if info.get("gpu"):
        where = f"{info['gpu']} (compute {info.get('gpu_compute_capability')}, CUDA {info.get('cuda')}, " \
                f"cuDNN {info.get('cudnn')}) on {where}"
    versions = info.get("versions") or {}
    libs = ", ".join(f"{k} {v}" for k, v in versions.items() if v and k in ("torch", "diffusers", "transformers", "peft"))
    threads = info.get("threads")
    return f"{where}, {threads} thread{'s' if threads != 1 else ''}, {libs}"


def row_columns(info: dict) -> dict:
    """The fingerprint as flat results-table columns (hw_*), so rows from two machines can be told apart."""
    versions = info.get("versions") or {}
    return {"hardware_id": info.get("hardware_id"), "hw_cpu": info.get("cpu"),
            "hw_cpu_isa": " ".join(info.get("cpu_isa") or []), "hw_torch_cpu_capability": info.get("torch_cpu_capability"),
            "hw_gpu": info.get("gpu"), "hw_gpu_compute_capability": info.get("gpu_compute_capability"),
            "hw_cuda": info.get("cuda"), "hw_cudnn": info.get("cudnn"), "hw_threads": info.get("threads"),
            **{f"hw_{name}": versions.get(name) for name in ("torch", "diffusers", "transformers", "peft")}}


def describe_row(row: dict) -> str:
    """``describe`` of the hw_* columns a results row carries (see ``row_columns``)."""
    info = {"cpu": row.get("hw_cpu"), "cpu_isa": (row.get("hw_cpu_isa") or "").split(),
            "torch_cpu_capability": row.get("hw_torch_cpu_capability"), "gpu": row.get("hw_gpu"),
            "gpu_compute_capability": row.get("hw_gpu_compute_capability"), "cuda": row.get("hw_cuda"),
            "cudnn": row.get("hw_cudnn"), "threads": row.get("hw_threads"),
            "versions": {name: row.get(f"hw_{name}") for name in ("torch", "diffusers", "transformers", "peft")}}
    return describe(info)
