"""Contact sheets: pictures of what the demo model does, for people to look at.

``held_out_sheet`` draws, per held-out scene: control | base output | target | LoRA output (zxq
style prompt, multiplier 1). ``grid`` lays out any rows of images with captions.
"""
from __future__ import annotations

from PIL import Image, ImageDraw

from . import scenes

PAD, CAPTION = 4, 12


def grid(rows: list[tuple[str, list[Image.Image]]], cell: int = 128) -> Image.Image:
    """Rows of images (each fitted into cell x cell), a caption line above each row."""
    ncols = max(len(images) for _, images in rows)
    sheet = Image.new("RGB", (PAD + ncols * (cell + PAD), PAD + len(rows) * (cell + CAPTION + PAD)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (caption, images) in enumerate(rows):
        y = PAD + r * (cell + CAPTION + PAD)
        draw.text((PAD, y), caption, fill=(0, 0, 0))
        for c, img in enumerate(images):
            im = img.convert("RGB")
            im.thumbnail((cell, cell))
            sheet.paste(im, (PAD + c * (cell + PAD), y + CAPTION))
    return sheet


def held_out_sheet(pipe, held: dict[str, list[int]], lora_path, path, per_kind: int = 2) -> None:
    """control | base output | target | LoRA output with the trigger prompt, for a few held-out scenes."""
    from safetensors.torch import load_file

    from .evaluate import generate

    pipe.load_lora_weights(load_file(str(lora_path)), adapter_name="zxq_sheet")
    rows = []
    try:
        for kind, seeds in held.items():
            for seed in seeds[:per_kind]:
                ex = scenes.example(seed, width=128, height=128, kind=kind)
                pipe.disable_lora()
                base = generate(pipe, ex.control, ex.prompt, seed)
                pipe.enable_lora()
                styled = generate(pipe, ex.control, scenes.styled_prompt(ex.prompt), seed)
                rows.append((f"{ex.prompt}  (control | output | target | + zxq LoRA)",
                             [ex.control, base, ex.target, styled]))
    finally:
        pipe.delete_adapters(["zxq_sheet"])
    grid(rows).save(path)
