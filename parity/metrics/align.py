"""Bringing an output and a preview to comparable pixels, and recording what that took.

A size mismatch (say a 1024x1024 output against an 832x1216 preview) is a finding in
itself, not a crash: the output is resized to the preview's size with LANCZOS so the
metrics can still be computed, and the result says so.
"""
from __future__ import annotations

import numpy as np
from PIL import Image


def _size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def align_to_preview(output: Image.Image, preview: Image.Image) -> tuple[np.ndarray, np.ndarray, dict]:
    """uint8 RGB arrays of ``output`` (resized to the preview if needed) and ``preview``, plus a
    record: size_mismatch, output_size and preview_size as [w, h], resized_for_compare (a
    description of the resize, or None)."""
    record = {
        "size_mismatch": output.size != preview.size,
        "output_size": list(output.size),
        "preview_size": list(preview.size),
        "resized_for_compare": None,
    }
    out = output.convert("RGB")
    if record["size_mismatch"]:
        out = out.resize(preview.size, Image.Resampling.LANCZOS)
        record["resized_for_compare"] = f"output {_size(output.size)} -> {_size(preview.size)} (LANCZOS)"
    return np.asarray(out), np.asarray(preview.convert("RGB")), record
