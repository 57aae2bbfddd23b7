"""AI Toolkit's sample prompts: trigger words, `--flag value` parsing, seeds and sizes.

Mirrors BaseSDTrainProcess.sample() (seed walk, per-item seed, trigger injection) and
GenerateImageConfig (flag parsing, random seed for -1, 8 px floor), and the Kontext
sampler's 16 px floor, so each prompt index gets the arguments AI Toolkit passed to the
pipeline. Quirks are kept on purpose: a preview is reproduced only with AI Toolkit's values.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import ParityError
from ..knobs.sizing import pipeline_output_size, snap_aitk
from .config import SampleSettings


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


# flag -> (GenerateImageConfig attribute, converter), as GenerateImageConfig._process_prompt_string reads them.
FLAGS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "p2": ("prompt_2", str), "n": ("negative_prompt", str), "n2": ("negative_prompt_2", str),
    "w": ("width", int), "h": ("height", int), "d": ("seed", int), "seed": ("seed", int),
    "l": ("guidance_scale", float), "cfg": ("guidance_scale", float),
    "s": ("num_inference_steps", int), "steps": ("num_inference_steps", int),
    "m": ("network_multiplier", float), "network_multiplier": ("network_multiplier", float),
    "gr": ("guidance_rescale", float), "a": ("adapter_conditioning_scale", float),
    "ref": ("refiner_start_at", float), "ev": ("extra_values", _floats), "extra_values": ("extra_values", _floats),
    "frames": ("num_frames", int), "num_frames": ("num_frames", int), "fps": ("fps", int),
    "ctrl_img": ("ctrl_img", str), "ctrl_idx": ("ctrl_idx", int),
}
# Parsed by AI Toolkit but with no effect on a Kontext preview.
UNUSED_BY_KONTEXT = ("prompt_2", "negative_prompt_2", "guidance_rescale", "adapter_conditioning_scale",
                     "refiner_start_at", "extra_values", "num_frames", "fps", "ctrl_idx")


@dataclass(frozen=True)
class ParsedPrompt:
    """A prompt string split into its text and the attributes its flags set (last one wins)."""

    prompt: str
    values: dict = field(default_factory=dict)
    flags: tuple[str, ...] = ()  # known flags, in order
    unknown: tuple[str, ...] = ()  # flags AI Toolkit silently ignores


def parse_prompt(text: str) -> ParsedPrompt:
    """Split on every "--"; the first piece is the prompt, each other piece is `flag content`.

    A flag is the piece up to its first space; its content is the rest, stripped (so paths may
    hold spaces, but a literal "--" anywhere starts a new flag). Empty prompts are not parsed.
    """
    if not text:
        return ParsedPrompt(prompt=text)
    pieces = text.strip().split("--")
    values: dict = {}
    flags: list[str] = []
    unknown: list[str] = []
    for piece in pieces[1:]:
        flag = piece.split(" ")[0].strip()
        content = piece[len(flag):].strip()
        if flag not in FLAGS:
            unknown.append(flag)
            continue
        attribute, convert = FLAGS[flag]
        try:
            values[attribute] = convert(content)
        except ValueError:
            kind = {int: "an integer", float: "a number", _floats: "comma-separated numbers"}.get(convert, "a value")
            raise ParityError(f"--{flag} needs {kind}, not {content!r} (AI Toolkit fails on this prompt)") from None
        flags.append(flag)
    return ParsedPrompt(prompt=pieces[0].strip(), values=values, flags=tuple(flags), unknown=tuple(unknown))


def inject_trigger(prompt: str, trigger: str) -> str:
    """[trigger] and [name] become the trigger word; it is never prepended (add_if_not_present=False)."""
    return prompt.replace("[trigger]", trigger).replace("[name]", trigger)


@dataclass(frozen=True)
class PromptArgs:
    """What AI Toolkit handed the Kontext pipeline for one prompt index."""

    index: int
    prompt_from_config: str
    prompt_after_trigger: str
    prompt: str
    negative_prompt: Any
    seed: int | None  # None: drawn with random.randint, not recorded anywhere
    constructor_seed: int
    width: int  # after flags, before flooring
    height: int
    steps: int
    guidance: float
    network_multiplier: float
    ctrl_img: str | None
    flags: tuple[str, ...]
    notes: tuple[str, ...]

    def effective(self) -> dict:
        """Named as the recorder's `effective` block: sizes after the 8 px floor, then the sampler's 16 px
        (the size plan's snap "aitk" and pipeline output, as the aitk-preview profile runs them)."""
        w8, h8 = snap_aitk(self.width, self.height)
        w16, h16 = pipeline_output_size(w8, h8, w8 * h8)
        return {
            "prompt": self.prompt, "negative_prompt": self.negative_prompt, "seed": self.seed,
            "width": self.width, "height": self.height,
            "width_after_8px_floor": w8, "height_after_8px_floor": h8,
            "pipeline_width": w16, "pipeline_height": h16, "max_area": w16 * h16, "auto_resize": False,
            "num_inference_steps": self.steps, "guidance_scale": self.guidance,
            "network_multiplier": self.network_multiplier, "ctrl_img": self.ctrl_img,
        }


def sample_args(settings: SampleSettings, trigger_word: str | None, *, source: str | None = None) -> list[PromptArgs]:
    """Every prompt of one sample() call, in order (index i = the `_i` of the file name).

    Seeds: walk_seed sets seed+i; an item's own seed replaces it and, without walk_seed, stays
    in force for the following items too (AI Toolkit keeps one running variable).
    """
    prompts = settings.prompts
    out = []
    current = settings.seed
    for i, text in enumerate(prompts):
        item = settings.items[i]  # AI Toolkit pairs prompt i with item i even if an earlier item had no prompt
        notes = []
        if settings.walk_seed:
            current = settings.seed + i
        after_trigger = text if trigger_word is None else inject_trigger(text, trigger_word)
        if trigger_word is None and "[trigger]" in text:
            notes.append("[trigger] stays in the prompt text: the config has no trigger_word")
        if item.prompt != text:
            notes.append(f"item {i} has no prompt; AI Toolkit used its settings for the next item's prompt")
        if item.seed is not None:
            current = item.seed
        try:
            parsed = parse_prompt(after_trigger)
        except ParityError as err:
            raise ParityError(f"{settings.key} prompt {i}: {err.problem}", source=source) from None
        values = parsed.values
        seed = values.get("seed", None if current == -1 else current)
        if seed is None:
            notes.append("seed -1: AI Toolkit drew a random seed and did not record it")
        notes += [f"unknown flag --{f} ignored, as AI Toolkit does" for f in parsed.unknown]
        notes += [f"{a} (set by a flag) has no effect on a Kontext preview" for a in values if a in UNUSED_BY_KONTEXT]
        width, height = values.get("width", item.width), values.get("height", item.height)
        notes += [f"{side} {size} is below 16 px: AI Toolkit samples at 64 (its 64 px floor)" for side, size in
                  (("width", width), ("height", height)) if size < 16]  # below a Case's smallest size
        out.append(PromptArgs(
            index=i, prompt_from_config=text, prompt_after_trigger=after_trigger, prompt=parsed.prompt,
            negative_prompt=values.get("negative_prompt", item.neg), seed=seed, constructor_seed=current,
            width=width, height=height,
            steps=values.get("num_inference_steps", item.sample_steps),
            guidance=values.get("guidance_scale", item.guidance_scale),
            network_multiplier=values.get("network_multiplier", item.network_multiplier),
            ctrl_img=values.get("ctrl_img", item.ctrl_img), flags=parsed.flags, notes=tuple(notes),
        ))
    return out
