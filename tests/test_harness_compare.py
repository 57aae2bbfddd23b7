"""The harness-vs-naive comparison of `make bench`, run small, so it cannot rot: both sides draw the same
images from the same case mix on the same device, and the harness loads the base once, reads each LoRA
file once and computes each distinct image once."""
from __future__ import annotations

import numpy as np
import pytest

from harness_compare import ablation, distinct_matrix, harness, naive_script


@pytest.mark.parametrize("make", [distinct_matrix, ablation], ids=["distinct", "ablation"])
def test_harness_and_naive_script_draw_the_same_images(tmp_path, make):
    cases = make(6)
    (tmp_path / "naive").mkdir()
    naive = naive_script(cases, tmp_path / "naive", "cpu")
    ours, summary, engine = harness(cases, tmp_path / "harness", "cpu")
    for case, a, b in zip(cases, naive, ours):
        if case.output_format == "png":
            assert np.array_equal(np.asarray(a), np.asarray(b)), case.name
    assert engine.counters["pipelines_loaded"] == 1
    assert engine.counters["lora_files_read"] == len({lo.path for c in cases for lo in c.loras})
    distinct = 6 if make is distinct_matrix else 3  # the ablation's other three changes draw the baseline's image
    assert summary.computed - summary.reused == distinct and summary.reused == 6 - distinct
