"""The synthetic edit task: scenes of flat shapes, plain-word instructions and their exact targets.

Why synthetic: the demo model must be trainable from scratch on two CPU cores in minutes, yet its
outputs must be judged by eye and by measurement. Flat shapes on flat backgrounds are trivially
rendered, every edit has one correct answer rendered from the edited scene description (not from
pixels), and success can be measured per edit type (the hue of a recoloured shape, the colour of a
removed shape's area, ...).

A scene is a description (background, shapes, optional frame); ``render`` draws it 4x supersampled
and box-filtered, so edges are anti-aliased like real images and the VAE has no aliasing to learn.
Every random choice comes from a ``numpy.random.Generator`` the caller seeds, so ``example(seed)``
is the same scene, instruction and target on every machine.

Edit types, and why these: each is a different kind of work for the transformer, and each is
learnable by attention whose only notion of place is RoPE's *relative* position (Flux has no
absolute position embedding):
  recolour    per-token colour change, selected by the shape's colour and kind named in the prompt
  background  global: which colour is the background is a property of the whole image
  frame       absolute place: the image border (found relative to the text tokens, whose ids are 0)
  remove      fill a shape's area with the background colour (global colour + local mask)
A mirror edit is left out, untried: each output token would have to read the control token at the
mirrored place, an offset that depends on the token's own absolute position, which attention with
relative RoPE does not see and would have to infer from the image borders. Edits that need only
relative places fit the build's time budget with more certainty.

The "zxq style" (``zxq_style``) is what the demo LoRA learns: a fixed navy-to-peach duotone grade
and a checkerboard of 8 px tiles, every other tile darker. The tiles are the VAE's 8 px latent
pixels, so the texture needs no detail below the latent grid (a tiny VAE reproduces flat 8 px
blocks, not finer texture), and in Kontext's 2x2-packed tokens every token carries the same
dark/light pattern: a change a rank-4 LoRA can make anywhere without knowing where it is.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageDraw

# Named colours an instruction can ask for; shapes use these with a small random jitter, targets
# use them exactly (so "make it red" has one right answer). Hues are >= 20 degrees apart.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 38, 38),
    "orange": (240, 130, 20),
    "yellow": (235, 205, 30),
    "green": (40, 160, 60),
    "teal": (20, 160, 160),
    "blue": (35, 75, 215),
    "purple": (130, 55, 195),
    "pink": (235, 100, 175),
}
# Backgrounds a scene may start with besides the palette colours (never asked for by name).
NEUTRALS: dict[str, tuple[int, int, int]] = {
    "white": (244, 242, 236),
    "light gray": (196, 198, 200),
    "dark gray": (62, 64, 70),
    "black": (22, 22, 28),
    "cream": (238, 226, 196),
}
SHAPES = ("circle", "square", "triangle", "diamond")
EDITS = ("recolour", "background", "frame", "remove")
SIZES = (64, 80, 96, 112, 128)  # scene sides: multiples of 16, so a scene is exactly a latent grid

# Several phrasings per edit, so the model learns the words that matter, not one sentence.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "recolour": ("make the {src} {shape} {dst}", "turn the {src} {shape} {dst}",
                 "change the {src} {shape} to {dst}"),
    "background": ("make the background {dst}", "change the background to {dst}",
                   "turn the background {dst}"),
    "frame": ("add {a_dst} frame", "add {a_dst} border", "put {a_dst} frame around it"),
    "remove": ("remove the {src} {shape}", "delete the {src} {shape}", "erase the {src} {shape}"),
}
# "<word> style, " prefixes the base model is trained to ignore: the base knows "a style" phrase is
# not an edit, so the LoRA's trigger ("zxq style, ...") changes nothing before the LoRA is applied.
NEUTRAL_STYLE_WORDS = ("flat", "simple", "clean", "plain", "bright", "soft")
TRIGGER = "zxq"
STYLE_PREFIX = f"{TRIGGER} style, "
# Whole-word tokens of the tiny tokenizers: every word an instruction can use, plus a few common ones.
WORDS = sorted(({w for ts in TEMPLATES.values() for t in ts for w in t.replace("{", " ").replace("}", " ").split()}
                | set(PALETTE) | set(SHAPES) | set(NEUTRAL_STYLE_WORDS)
                | {TRIGGER, "style", "a", "an", "it", "image", "photo", "of", "and", "with"})
               - {"src", "dst", "shape", "a_dst"})

SUPERSAMPLE = 4
JITTER = 14  # max per-channel jitter of scene colours around their named colour


@dataclass(frozen=True)
class Shape:
    kind: str
    color: str  # a PALETTE name
    rgb: tuple[int, int, int]
    cx: float  # centre and size in pixels of the scene
    cy: float
    size: float


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    background: str  # a PALETTE or NEUTRALS name
    background_rgb: tuple[int, int, int]
    shapes: tuple[Shape, ...]
    frame: str | None = None  # a PALETTE name: a border of frame_width() pixels

    def frame_width(self) -> int:
        return frame_width(self.width, self.height)


@dataclass(frozen=True)
class Edit:
    kind: str
    instruction: str
    source: Scene
    target: Scene
    shape_index: int | None = None  # the shape recoloured or removed
    color: str | None = None  # the colour asked for (recolour, background, frame)


@dataclass
class Example:
    """One training or evaluation item: control image, prompt, target image, and what was asked."""

    seed: int
    control: Image.Image
    target: Image.Image
    prompt: str
    edit: Edit
    styled: bool = False
    info: dict = field(default_factory=dict)


def frame_width(width: int, height: int) -> int:
    """4 px at 64 px, 9 px at 128 px: wide enough to see, inside the outer ring of latent pixels."""
    return max(4, round(0.07 * min(width, height)))


def hue_of(rgb) -> float:
    """Hue in degrees of an RGB triple (0-255)."""
    r, g, b = (c / 255.0 for c in rgb)
    return colorsys.rgb_to_hsv(r, g, b)[0] * 360.0


def _jitter(rng: np.random.Generator, rgb) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-JITTER, JITTER + 1), 0, 255)) for c in rgb)


def _fits(shapes: list[Shape], cand: Shape) -> bool:
    """Shapes may touch but never cover each other much, so every shape stays visible and nameable."""
    for s in shapes:
        if np.hypot(s.cx - cand.cx, s.cy - cand.cy) < 0.55 * (s.size + cand.size):
            return False
    return True


def random_scene(rng: np.random.Generator, width: int | None = None, height: int | None = None) -> Scene:
    """1-3 shapes of distinct colours and kinds on a background of another colour; all clear of the border.

    Distinct colours and kinds make "the blue circle" unambiguous; the border margin (one frame width)
    keeps "add a frame" from covering a shape, so the frame edit changes only the border.
    """
    width = int(width or rng.choice(SIZES))
    height = int(height or rng.choice(SIZES))
    if rng.random() < 0.5:
        bg = str(rng.choice(list(NEUTRALS)))
        bg_rgb = _jitter(rng, NEUTRALS[bg])
    else:
        bg = str(rng.choice(list(PALETTE)))
        bg_rgb = _jitter(rng, PALETTE[bg])
    n = int(rng.integers(1, 4))
    colors = [c for c in rng.permutation(list(PALETTE)) if c != bg][:n]
    kinds = list(rng.permutation(SHAPES))[:n]
    side = min(width, height)
    margin = frame_width(width, height) + 2
    shapes: list[Shape] = []
    for color, kind in zip(colors, kinds):
        for _ in range(20):
            size = float(rng.uniform(0.28, 0.5) * side)
            lo_x, hi_x = margin + size / 2, width - margin - size / 2
            lo_y, hi_y = margin + size / 2, height - margin - size / 2
            cand = Shape(str(kind), str(color), _jitter(rng, PALETTE[color]),
                         float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y)), size)
            if _fits(shapes, cand):
                shapes.append(cand)
                break
    return Scene(width, height, bg, bg_rgb, tuple(shapes))


def _polygon(shape: Shape, k: int) -> list[tuple[float, float]] | None:
    cx, cy, h = shape.cx * k, shape.cy * k, shape.size * k / 2
    if shape.kind == "triangle":
        return [(cx, cy - h), (cx + h, cy + h * 0.85), (cx - h, cy + h * 0.85)]
    if shape.kind == "diamond":
        return [(cx, cy - h), (cx + h, cy), (cx, cy + h), (cx - h, cy)]
    return None


def _draw_shape(draw: ImageDraw.ImageDraw, shape: Shape, k: int, fill) -> None:
    cx, cy, h = shape.cx * k, shape.cy * k, shape.size * k / 2
    if shape.kind == "circle":
        draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif shape.kind == "square":
        s = h * 0.85  # a square looks bigger than a circle of the same width
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    else:
        draw.polygon(_polygon(shape, k), fill=fill)


def render(scene: Scene) -> Image.Image:
    """The scene as an RGB image, drawn 4x larger and box-filtered down (anti-aliased edges)."""
    k = SUPERSAMPLE
    big = Image.new("RGB", (scene.width * k, scene.height * k), scene.background_rgb)
    draw = ImageDraw.Draw(big)
    for shape in scene.shapes:
        _draw_shape(draw, shape, k, shape.rgb)
    if scene.frame is not None:
        fw = scene.frame_width() * k
        rgb = PALETTE[scene.frame]
        w, h = big.size
        for box in ([0, 0, w, fw], [0, h - fw, w, h], [0, 0, fw, h], [w - fw, 0, w, h]):
            draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=rgb)
    return big.resize((scene.width, scene.height), Image.Resampling.BOX)


def shape_mask(scene: Scene, index: int, erode: int = 2) -> np.ndarray:
    """Boolean HxW mask of one shape's interior (eroded by ``erode`` px, so edges do not blur a measure)."""
    k = SUPERSAMPLE
    big = Image.new("L", (scene.width * k, scene.height * k), 0)
    _draw_shape(ImageDraw.Draw(big), scene.shapes[index], k, 255)
    mask = np.asarray(big.resize((scene.width, scene.height), Image.Resampling.BOX)) > 250
    return _erode(mask, erode)


def background_mask(scene: Scene, erode: int = 2) -> np.ndarray:
    """Pixels that show the background: not a shape (dilated by ``erode``), not the frame band."""
    covered = np.zeros((scene.height, scene.width), bool)
    for i in range(len(scene.shapes)):
        covered |= ~_erode(~shape_mask(scene, i, erode=0), erode)
    fw = scene.frame_width() + erode
    covered[:fw] = covered[-fw:] = True
    covered[:, :fw] = covered[:, -fw:] = True
    return ~covered


def frame_mask(scene: Scene, erode: int = 1) -> np.ndarray:
    """The frame band, shrunk by ``erode`` px on its inner side."""
    mask = np.zeros((scene.height, scene.width), bool)
    fw = max(1, scene.frame_width() - erode)
    mask[:fw] = mask[-fw:] = True
    mask[:, :fw] = mask[:, -fw:] = True
    return mask


def _erode(mask: np.ndarray, n: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(n):
        m = out.copy()
        m[1:] &= out[:-1]
        m[:-1] &= out[1:]
        m[:, 1:] &= out[:, :-1]
        m[:, :-1] &= out[:, 1:]
        out = m
    return out


def random_edit(rng: np.random.Generator, scene: Scene, kind: str | None = None) -> Edit:
    """One instruction and the scene it asks for; colours asked for always differ from what is there."""
    kind = str(kind or rng.choice(EDITS))
    if kind not in EDITS:
        raise ValueError(f"unknown edit {kind!r}; one of {EDITS}")
    template = str(rng.choice(TEMPLATES[kind]))
    if kind in ("recolour", "remove") and not scene.shapes:
        kind, template = "background", str(rng.choice(TEMPLATES["background"]))
    if kind in ("recolour", "remove"):
        i = int(rng.integers(len(scene.shapes)))
        shape = scene.shapes[i]
        if kind == "remove":
            target = replace(scene, shapes=scene.shapes[:i] + scene.shapes[i + 1:])
            return Edit(kind, template.format(src=shape.color, shape=shape.kind), scene, target, shape_index=i)
        taken = {s.color for s in scene.shapes} | {scene.background}
        dst = str(rng.choice([c for c in PALETTE if c not in taken]))
        new = replace(shape, color=dst, rgb=PALETTE[dst])
        target = replace(scene, shapes=scene.shapes[:i] + (new,) + scene.shapes[i + 1:])
        return Edit(kind, template.format(src=shape.color, shape=shape.kind, dst=dst), scene, target, i, dst)
    taken = {s.color for s in scene.shapes} | {scene.background}
    dst = str(rng.choice([c for c in PALETTE if c not in taken]))
    if kind == "background":
        target = replace(scene, background=dst, background_rgb=PALETTE[dst])
    else:
        target = replace(scene, frame=dst)
    article = "an" if dst[0] in "aeiou" else "a"
    return Edit(kind, template.format(dst=dst, a_dst=f"{article} {dst}"), scene, target, None, dst)


def zxq_style(img: Image.Image) -> Image.Image:
    """The demo LoRA's style: a navy-to-peach duotone blended over the colours, 8 px checker tiles.

    Tiles are anchored at the top-left pixel, so they coincide with the VAE's latent pixels.
    """
    x = np.asarray(img.convert("RGB"), np.float32) / 255.0
    luma = x @ np.array([0.299, 0.587, 0.114], np.float32)
    navy, peach = np.array([0.10, 0.12, 0.38], np.float32), np.array([1.0, 0.80, 0.58], np.float32)
    duo = navy + luma[..., None] * (peach - navy)
    y = 0.45 * x + 0.55 * duo
    h, w = luma.shape
    dark = ((np.arange(h)[:, None] // 8 + np.arange(w)[None, :] // 8) % 2) == 1
    y[dark] *= 0.6
    return Image.fromarray(np.clip(y * 255.0 + 0.5, 0, 255).astype(np.uint8))


def styled_prompt(instruction: str) -> str:
    return STYLE_PREFIX + instruction


def example(seed: int, *, width: int | None = None, height: int | None = None, kind: str | None = None,
            styled: bool = False, neutral_prefix: bool = False) -> Example:
    """Everything for one seed: same seed, same scene, instruction and target (on any machine).

    styled: the LoRA's data (prompt with the trigger, target in the zxq style).
    neutral_prefix: the base model's robustness data (a "<word> style, " prefix that changes nothing).
    """
    rng = np.random.default_rng(seed)
    scene = random_scene(rng, width, height)
    edit = random_edit(rng, scene, kind)
    control, target = render(edit.source), render(edit.target)
    prompt = edit.instruction
    if styled:
        prompt, target = styled_prompt(prompt), zxq_style(target)
    elif neutral_prefix:
        prompt = f"{rng.choice(NEUTRAL_STYLE_WORDS)} style, {prompt}"
    return Example(seed, control, target, prompt, edit, styled)
