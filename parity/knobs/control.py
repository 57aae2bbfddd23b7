"""Control-image preparation: the knobs that decide which pixels the VAE encodes.

The chain mirrors what servers, AI Toolkit and ComfyUI do, one step per knob:
load -> EXIF transpose (or not) -> RGB (alpha dropped or composited) -> resize to a
target (method + stretch/fit/crop) -> the pipeline's own step before the VAE (``control_encode``:
diffusers' optional auto-resize to a preferred Kontext resolution, floor to 16, resize with its
method; or ComfyUI VAEEncode's centre crop to a multiple of 8).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from PIL import Image, ImageOps

from ..errors import ParityError
from ..imaging import conversion_notes
from .registry import describe_family, register
from .sizing import preferred_resolution

describe_family("resize", "PIL resampling filter used when a control image is resized")
describe_family("fit", "how a control image is brought to a target size of another aspect")
describe_family("alpha", "what happens to a control image's alpha channel")
describe_family("control_target", "the size the control image is resized to before the pipeline")
describe_family("control_encode", "how the pipeline brings the control image to a size the VAE encodes")

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def _resize_with(filter_):
    def resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
        # PIL returns an exact copy when the size is unchanged, as diffusers relies on.
        return image.resize(size, resample=filter_)

    resize.__doc__ = f"PIL {filter_.name} resampling"
    return resize


for _name, _filter in RESAMPLE.items():
    register("resize", _name)(_resize_with(_filter))


@register("fit", "stretch")
def fit_stretch(image: Image.Image, size: tuple[int, int], resize) -> Image.Image:
    """Resize straight to the target, distorting the aspect (AI Toolkit, the reference server)."""
    return resize(image, size)


@register("fit", "crop")
def fit_crop(image: Image.Image, size: tuple[int, int], resize) -> Image.Image:
    """Scale to cover the target, then centre-crop the overflow."""
    tw, th = size
    scale = max(tw / image.width, th / image.height)
    cover = (max(tw, round(image.width * scale)), max(th, round(image.height * scale)))
    scaled = resize(image, cover)
    left, top = (cover[0] - tw) // 2, (cover[1] - th) // 2
    return scaled.crop((left, top, left + tw, top + th))


@register("fit", "crop_then_resize")
def fit_crop_then_resize(image: Image.Image, size: tuple[int, int], resize) -> Image.Image:
    """Centre-crop to the target's aspect first, then resize (ComfyUI common_upscale, crop "center")."""
    tw, th = size
    old, new = image.width / image.height, tw / th
    left = top = 0
    if old > new:  # ComfyUI rounds the margin with Python's round() (comfy/utils.py:871-874)
        left = round((image.width - image.width * (new / old)) / 2)
    elif old < new:
        top = round((image.height - image.height * (old / new)) / 2)
    return resize(image.crop((left, top, image.width - left, image.height - top)), size)


@register("fit", "fit")
def fit_pad(image: Image.Image, size: tuple[int, int], resize) -> Image.Image:
    """Scale to fit inside the target, keep the aspect, pad the rest with black."""
    tw, th = size
    scale = min(tw / image.width, th / image.height)
    inner = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    canvas = Image.new("RGB", size, (0, 0, 0))
    canvas.paste(resize(image, inner), ((tw - inner[0]) // 2, (th - inner[1]) // 2))
    return canvas


@register("alpha", "drop")
def alpha_drop(image: Image.Image) -> Image.Image:
    """PIL convert("RGB"): alpha discarded, hidden colours show (AI Toolkit, diffusers)."""
    return image.convert("RGB")


def _composites(image: Image.Image) -> bool:
    """Whether alpha_white composites this image (others go through plain convert("RGB"))."""
    return image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info)


@register("alpha", "white")
def alpha_white(image: Image.Image) -> Image.Image:
    """Composite transparent pixels over white before dropping alpha."""
    if _composites(image):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


# Every target gets the same sizes: requested (snapped), output, and by keyword the size asked for before
# snapping and the control image's own size (after EXIF transpose).


@register("control_target", "none")
def target_none(requested: tuple[int, int], output: tuple[int, int], asked=None, image_size=None):
    """Leave the image at its own size: only the pipeline step touches it."""
    return None


@register("control_target", "requested")
def target_requested(requested: tuple[int, int], output: tuple[int, int], asked=None, image_size=None):
    """The snapped size handed to the pipeline (AI Toolkit: the 8-floored sample size)."""
    return requested


@register("control_target", "output")
def target_output(requested: tuple[int, int], output: tuple[int, int], asked=None, image_size=None):
    """The final 16-aligned output size (the reference server)."""
    return output


@register("control_target", "asked")
def target_asked(requested: tuple[int, int], output: tuple[int, int], asked=None, image_size=None):
    """The width/height asked for, before snapping (ComfyUI ImageScale; VAEEncode crops after)."""
    return asked if asked is not None else requested


@register("control_target", "preferred")
def target_preferred(requested: tuple[int, int], output: tuple[int, int], asked=None, image_size=None):
    """The preferred Kontext resolution nearest the image's own aspect (ComfyUI FluxKontextImageScale)."""
    return preferred_resolution(*image_size)


@dataclass(frozen=True)
class EncodeStep:
    """The pipeline's last step before the VAE: the smallest side it accepts, the size it encodes at
    and how it gets there."""

    floor: int  # sides are floored to a multiple of this, so a smaller side leaves no pixel
    size: Callable[[tuple[int, int], bool], tuple[int, int]]  # (handed size, auto_resize) -> encoded size
    apply: Callable[[Image.Image, tuple[int, int], str], Image.Image]  # (image, encoded size, filter) -> encoded


def _resize16_size(size: tuple[int, int], auto_resize: bool) -> tuple[int, int]:
    # diffusers floors to 16 first, takes the aspect of that, then snaps and floors again.
    width, height = size[0] // 16 * 16, size[1] // 16 * 16
    if auto_resize:
        width, height = preferred_resolution(width, height)
    return width // 16 * 16, height // 16 * 16


def _resize(image: Image.Image, size: tuple[int, int], resize: str) -> Image.Image:
    from .registry import lookup

    return lookup("resize", resize)(image, size)


def _crop8_size(size: tuple[int, int], auto_resize: bool) -> tuple[int, int]:
    return size[0] // 8 * 8, size[1] // 8 * 8


def _crop(image: Image.Image, size: tuple[int, int], resize: str) -> Image.Image:
    if tuple(size) == image.size:
        return image
    left, top = (image.width % 8) // 2, (image.height % 8) // 2  # comfy/sd.py:598-610
    return image.crop((left, top, left + size[0], top + size[1]))


@register("control_encode", "resize16")
def encode_resize16() -> EncodeStep:
    """diffusers: floor to 16, snap to a preferred resolution if control_auto_resize, resize (control_pipeline_resize)."""
    return EncodeStep(16, _resize16_size, _resize)


@register("control_encode", "crop8")
def encode_crop8() -> EncodeStep:
    """ComfyUI VAEEncode: each side centre-cropped down to a multiple of 8, no resize (auto-resize knobs unused)."""
    return EncodeStep(8, _crop8_size, _crop)


def control_encode_size(case, handed: tuple[int, int]) -> tuple[int, int]:
    """The size the VAE encodes a control image handed to the pipeline at ``handed`` (part of the size plan)."""
    from .registry import lookup

    step = lookup("control_encode", case.control_encode)()
    if min(handed) < step.floor:  # flooring would leave no pixel (diffusers divides by zero)
        after = "loading" if case.control_target == "none" else f"resizing to the {case.control_target} size"
        raise ParityError(f"control image {handed[0]}x{handed[1]} is smaller than {step.floor} px after "
                          f"{after}: the pipeline floors each side to a multiple of {step.floor}")
    return step.size(handed, case.control_auto_resize)


def prepare_control(image: Image.Image, case, sizes) -> tuple[Image.Image, Image.Image, dict]:
    """Run the chain for ``case`` with its size plan ``sizes``; returns (image handed to the pipeline, image
    the VAE sees, a trace: sizes seen, the file's mode, and notes on what becoming RGB changed, as AI
    Toolkit's convert("RGB") changes it too)."""
    from .registry import lookup

    notes = conversion_notes(image, alpha_composited=case.control_alpha == "white" and _composites(image),
                             exif_transposed=case.control_exif_transpose)
    trace = {"control_file_size": list(image.size), "control_mode": image.mode, "control_notes": notes}
    if case.control_exif_transpose:
        image = ImageOps.exif_transpose(image)
    image = lookup("alpha", case.control_alpha)(image)
    if sizes.control_target is not None:
        image = lookup("fit", case.control_fit)(image, sizes.control_target, lookup("resize", case.control_resize))
    handed = image
    trace["control_size_passed"] = list(handed.size)
    encoded = lookup("control_encode", case.control_encode)().apply(handed, sizes.control_encoded,
                                                                    case.control_pipeline_resize)
    trace["control_size_encoded"] = [encoded.width, encoded.height]
    return handed, encoded, trace
