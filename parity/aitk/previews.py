"""Finding AI Toolkit's preview files and the LoRA checkpoint that drew each one.

sample() names files `{ms}__{step:09d}_{i}.{ext}` (i = prompt index, unpadded) in
`<run>/samples/`, writing through `samples/.tmp/` with thumbnails in `samples/.thumbs/`.
The training loop saves `{config.name}_{step:09d}.safetensors` and then samples at the same
step; after the loop it saves `{config.name}.safetensors` and samples at step train.steps.
The step-0 preview is drawn before training, from the base model (lora_B is zero).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

PREVIEW_NAME = re.compile(r"^(?P<ms>\d+)__(?P<step>\d{9,})_(?P<index>\d+)\.(?P<ext>[A-Za-z0-9]+)$")
# file extension -> (Case output_format, quality PIL used for a plain image.save)
FORMATS = {"jpg": ("jpeg", 75), "jpeg": ("jpeg", 75), "png": ("png", None), "webp": ("webp", 80)}


@dataclass(frozen=True)
class PreviewFile:
    path: Path
    ms: int  # milliseconds since the epoch when it was saved
    step: int
    index: int  # prompt index
    ext: str


def discover(samples_dir: Path) -> tuple[list[PreviewFile], list[str]]:
    """Preview files sorted by (step, index, time), and the names of everything else (ignored)."""
    found, ignored = [], []
    for entry in sorted(samples_dir.iterdir()):
        if entry.is_dir():
            ignored.append(entry.name + "/")
            continue
        match = PREVIEW_NAME.match(entry.name)
        if not match or match["ext"].lower() not in FORMATS:
            ignored.append(entry.name)
            continue
        found.append(PreviewFile(entry, int(match["ms"]), int(match["step"]), int(match["index"]),
                                 match["ext"].lower()))
    found.sort(key=lambda p: (p.step, p.index, p.ms))
    return found, ignored


def looks_like_samples(folder: Path) -> bool:
    """True when the folder itself holds preview files (a bare samples/ folder)."""
    return any(PREVIEW_NAME.match(p.name) for p in folder.iterdir() if p.is_file())


def pair_checkpoint(step: int, *, lora_name: str, folder: Path, final_step: int, save_every: int,
                    keep: int) -> tuple[Path | None, str | None]:
    """(checkpoint, None), (None, None) for step 0 (base model), or (None, why no file matches)."""
    if step == 0:
        return None, None
    suffixed = folder / f"{lora_name}_{step:09d}.safetensors"
    if suffixed.is_file():
        return suffixed, None
    if step == final_step:
        final = folder / f"{lora_name}.safetensors"
        if final.is_file():
            return final, None
        return None, f"no final checkpoint {final.name} in {folder} (the final preview is at train.steps={final_step})"
    if save_every <= 0 or step % save_every:
        why = f"save_every={save_every} saved no LoRA at this step"
    else:
        why = f"deleted? AI Toolkit keeps only the newest max_step_saves_to_keep={keep} step saves"
    return None, f"no checkpoint {suffixed.name} in {folder} ({why})"
