"""AI Toolkit run definitions for the genuine-preview tool: prompts, control images, sample settings.

The tool (``/work/shared/tools/aitk-previews``, not part of this repository) runs AI Toolkit's own
trainer on the demo model and draws its previews at steps 0 / 10 / 20 with the two demo LoRA
checkpoints; this module writes what it reads (``AITK_RUNS``): per run a controls folder and the
job config. Prompts are real instructions of the edit task for the scene in their control image,
so the previews show edits, and one prompt carries ``[trigger]`` so the LoRA's style shows.

The runs cover what makes a preview hard to reproduce (see ../shared/notes/kontext-facts.md):
  shapes_bf16  bf16, a ``prompts:`` list with flags (--ctrl_img, --w/--h, --m 0.5: mixed
               multipliers, so AI Toolkit samples with its float32 LoRA side branch), ``[trigger]``,
               seed 42 with walk_seed
  shapes_odd   bf16, a web-UI ``samples:`` list, sizes that are not multiples of 16, an RGBA control
               with alpha, an EXIF-rotated JPEG control (orientation 6, which AI Toolkit ignores),
               ``--seed`` and ``seed:`` overrides, control aspect != output aspect, one multiplier
               (the LoRA merged into the bf16 weights while sampling), guidance 2.5
Every run keeps ``train.steps: 20``, ``save_every: 10``, ``sample_every: 10``: the tool sets the LoRA
at steps 1 and 11, so previews 0 / 10 / 20 show the base, checkpoint A and checkpoint B.
"""
from __future__ import annotations

import io
from collections import OrderedDict
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from . import scenes

MODEL_DIRNAME = "shapes-kontext"
RUN_SEED = 4242
EXIF_ORIENTATION = 0x0112


def _scene_edit(seed: int, width: int, height: int, kind: str) -> scenes.Edit:
    rng = np.random.default_rng(seed)
    scene = scenes.random_scene(rng, width, height)
    while kind in ("recolour", "remove") and len(scene.shapes) < 2:  # a scene where naming a shape matters
        scene = scenes.random_scene(rng, width, height)
    return scenes.random_edit(rng, scene, kind)


def _job(name: str, dtype: str, sample: dict, trigger_word: str | None = None) -> dict:
    proc = OrderedDict(type="sd_trainer", training_folder=".", device="cpu")
    if trigger_word:
        proc["trigger_word"] = trigger_word
    proc["network"] = OrderedDict(type="lora", linear=4, linear_alpha=4, transformer_only=True)
    proc["save"] = OrderedDict(dtype="float16", save_every=10, max_step_saves_to_keep=4, push_to_hub=False)
    proc["train"] = OrderedDict(batch_size=1, steps=20, gradient_accumulation_steps=1, train_unet=True,
                                train_text_encoder=False, gradient_checkpointing=True, noise_scheduler="flowmatch",
                                optimizer="adamw", lr=1e-4, timestep_type="weighted", dtype=dtype)
    proc["model"] = OrderedDict(name_or_path=MODEL_DIRNAME, arch="flux_kontext", quantize=False)
    proc["sample"] = OrderedDict(sampler="flowmatch", sample_every=10, sample_start_step=0, **sample)
    return OrderedDict(job="extension", config=OrderedDict(name=name, process=[proc]),
                       meta=OrderedDict(name="[name]", version="1.0"))


def _save_png(img: Image.Image, path: Path) -> None:
    img.save(path, format="PNG")


def _save_rgba(img: Image.Image, path: Path) -> None:
    """The scene with a half-transparent background: AI Toolkit's convert("RGB") drops the alpha
    (keeps the colours under it), an alpha-compositing reader would see another image."""
    rgba = img.convert("RGBA")
    alpha = np.full(img.size[::-1], 128, np.uint8)
    alpha[8:-8, 8:-8] = 255
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(path, format="PNG")


def _save_exif_rotated_jpeg(img: Image.Image, path: Path) -> None:
    """Upright pixels tagged orientation 6 ("rotate 90 degrees clockwise to display"): AI Toolkit
    ignores the tag and sees the scene upright; an EXIF-honouring reader sees it turned."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    path.write_bytes(buf.getvalue())


def write_runs(out: str | Path) -> Path:
    """Control images under out/controls/<run>/ and out/runs.yaml (the tool's AITK_RUNS); returns the yaml."""
    out = Path(out)
    runs = OrderedDict()

    def controls(run: str) -> Path:
        d = out / "controls" / run
        d.mkdir(parents=True, exist_ok=True)
        return d

    # (a) shapes_bf16
    d, c = controls("shapes_bf16"), "shapes_bf16/control/"
    e0 = _scene_edit(RUN_SEED + 0, 128, 128, "recolour")
    e1 = _scene_edit(RUN_SEED + 1, 128, 128, "background")
    e2 = _scene_edit(RUN_SEED + 2, 96, 128, "frame")
    e3 = _scene_edit(RUN_SEED + 3, 128, 128, "remove")
    _save_png(scenes.render(e0.source), d / "recolour_128.png")
    _save_png(scenes.render(e1.source), d / "background_128.png")
    _save_png(scenes.render(e2.source), d / "frame_96x128.png")
    _save_png(scenes.render(e3.source), d / "remove_128.png")
    runs["shapes_bf16"] = {"controls_dir": "controls/shapes_bf16", "config": _job(
        "shapes_bf16", "bf16", trigger_word=scenes.TRIGGER, sample=OrderedDict(
            width=128, height=128,
            prompts=[
                f"{e0.instruction}  --ctrl_img {c}recolour_128.png",
                f"[trigger] style, {e1.instruction}  --ctrl_img {c}background_128.png",
                f"{e2.instruction} --m 0.5 --w 96 --h 128  --ctrl_img {c}frame_96x128.png",
                f"{e3.instruction} --w 96 --h 96  --ctrl_img {c}remove_128.png",
            ],
            neg="", seed=42, walk_seed=True, guidance_scale=4, sample_steps=8))}

    # (b) shapes_odd
    d, c = controls("shapes_odd"), "shapes_odd/control/"
    o0 = _scene_edit(RUN_SEED + 10, 112, 80, "background")
    o1 = _scene_edit(RUN_SEED + 11, 128, 96, "recolour")
    o2 = _scene_edit(RUN_SEED + 12, 96, 64, "frame")
    o3 = _scene_edit(RUN_SEED + 13, 80, 112, "remove")
    _save_rgba(scenes.render(o0.source), d / "alpha_112x80.png")
    _save_exif_rotated_jpeg(scenes.render(o1.source), d / "exif_orient6_128x96.jpg")
    _save_png(scenes.render(o2.source), d / "wide_96x64.png")
    _save_png(scenes.render(o3.source), d / "tall_80x112.png")
    runs["shapes_odd"] = {"controls_dir": "controls/shapes_odd", "config": _job(
        "shapes_odd", "bf16", sample=OrderedDict(
            width=256, height=256, neg="", seed=7, walk_seed=True, guidance_scale=2.5, sample_steps=8,
            samples=[
                OrderedDict(prompt=o0.instruction, width=120, height=88, ctrl_img=f"{c}alpha_112x80.png"),
                OrderedDict(prompt=f"{o1.instruction} --seed 1234 --w 100 --h 130 "
                                   f"--ctrl_img {c}exif_orient6_128x96.jpg"),
                OrderedDict(prompt=o2.instruction, width=72, height=100, seed=99, ctrl_img=f"{c}wide_96x64.png"),
                OrderedDict(prompt=f"{scenes.STYLE_PREFIX}{o3.instruction}  --w 90 --h 122",
                            ctrl_img=f"{c}tall_80x112.png"),
            ]))}

    path = out / "runs.yaml"
    path.write_text(yaml.safe_dump(_plain(runs), sort_keys=False, width=120))
    return path


def _plain(obj):
    """OrderedDicts -> dicts, so safe_dump writes plain YAML the tool's yaml.safe_load reads."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj
