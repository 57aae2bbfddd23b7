"""Shared fixtures: one torch thread (2-core machines), the tiny seeded model and its genuine runs, the demo.

"embedded" means, in the tests, the older seeded tiny model (tests/data/tiny-kontext): most tests
reproduce its genuine AI Toolkit runs (tests/data/tiny-runs), fixtures kept for fidelity. The demo
model (parity/data/shapes-kontext) and its runs (parity/data/demo-runs) are tested by path.
"""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
TINY_BASE = Path(__file__).resolve().parent / "data" / "tiny-kontext"
os.environ["PARITY_EMBEDDED_BASE"] = str(TINY_BASE)  # inherited by the CLI subprocesses of the tests

import pytest
import torch

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
DEMO_RUNS = ROOT / "tests" / "data" / "tiny-runs"
SIDECARS = DATA / "aitk-sidecars"
SHAPES_BASE = ROOT / "parity" / "data" / "shapes-kontext"
SHAPES_RUNS = ROOT / "parity" / "data" / "demo-runs"


@pytest.fixture(scope="session")
def engine():
    """One engine for the session: the tiny Kontext model loaded through from_pretrained."""
    from parity.engine import Engine

    return Engine("embedded", device="cpu", keep_pipelines=3)


@pytest.fixture(scope="session")
def demo_runs() -> Path:
    return DEMO_RUNS


@pytest.fixture(scope="session")
def sidecars() -> Path:
    return SIDECARS


@pytest.fixture()
def control_png(tmp_path) -> Path:
    """A small textured control image with an aspect unlike the output's."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, 96 * 80 * 3).reshape(80, 96, 3)
    noise = rng.integers(0, 60, size=(80, 96, 3))
    path = tmp_path / "control.png"
    Image.fromarray(((base + noise) % 256).astype("uint8")).save(path)
    return path
