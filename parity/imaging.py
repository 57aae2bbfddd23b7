"""Opening input images (control images, previews) and saying what turning them into RGB changes.

AI Toolkit opens a control image with ``Image.open(path).convert("RGB")``: no EXIF transpose, alpha
dropped, CMYK by PIL's plain formula, 16-bit values clipped to 0-255. kontext-parity does the same
and records it, because a preview drawn from such a file only matches an output drawn the same way.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ParityError

EXIF_ORIENTATION = 0x0112
HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # convert("RGB") clips, it does not rescale
LOSSLESS = ("RGB", "RGBX", "L", "1", "P")  # convert("RGB") keeps every value


@contextmanager
def _quiet_size_warning():
    """PIL warns (once, on stderr) about images above MAX_IMAGE_PIXELS; conversion_notes says it per case."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _opened(path: Path, what: str) -> Image.Image:
    if path.is_dir():
        raise ParityError(f"{what} is a folder, not an image file", source=path)
    if not path.is_file():
        raise ParityError(f"{what} not found", source=path)
    if path.stat().st_size == 0:
        raise ParityError(f"{what} is empty (0 bytes)", source=path)
    try:
        return Image.open(path)
    except Image.DecompressionBombError as err:
        raise ParityError(f"{what} refused as a decompression bomb: {err}", source=path) from None
    except UnidentifiedImageError:
        raise ParityError(f"{what} is not an image PIL can read (corrupt, or another kind of file)",
                          source=path) from None
    except OSError as err:
        raise ParityError(f"{what} cannot be read: {err.strerror or err}", source=path) from None


def open_image(path: str | Path, what: str = "image") -> Image.Image:
    """Open and decode fully, so a truncated file fails here and not halfway through a run."""
    path = Path(path)
    with _quiet_size_warning():
        image = _opened(path, what)
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as err:
            image.close()
            raise ParityError(f"{what} cannot be decoded (truncated or corrupt?): {err}", source=path) from None
    return image


def header_size(path: str | Path, what: str = "image", *, exif_transposed: bool = False) -> tuple[int, int]:
    """(width, height) from the header alone, swapped when an EXIF transpose will turn the image a quarter."""
    with _quiet_size_warning(), _opened(Path(path), what) as image:
        width, height = image.size
        return (height, width) if exif_transposed and exif_orientation(image) in (5, 6, 7, 8) else (width, height)


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 = as stored)."""
    return int(image.getexif().get(EXIF_ORIENTATION, 1) or 1)


def has_transparent_pixels(image: Image.Image) -> bool:
    """Alpha that hides something: dropping an all-opaque alpha channel loses nothing."""
    if not image.has_transparency_data:
        return False
    return image.convert("RGBA").getchannel("A").getextrema()[0] < 255


def conversion_notes(image: Image.Image, *, alpha_composited: bool = False, exif_transposed: bool = False) -> list[str]:
    """What ``image.convert("RGB")`` changes or ignores, in words; empty for a plain 8-bit RGB, grey or
    palette file without transparency or rotation."""
    mode, notes = image.mode, []
    if mode in HIGH_DEPTH:
        values = np.asarray(image)
        outside = float(np.mean((values < 0) | (values > 255)))
        notes.append(f'mode {mode} (more than 8 bits): convert("RGB") clips values to 0-255 instead of scaling '
                     f"them; {outside:.0%} of pixels lie outside 0-255 and saturate")
    elif mode == "CMYK":
        notes.append('mode CMYK: convert("RGB") uses PIL\'s plain formula, no ICC colour profile')
    elif has_transparent_pixels(image) and not alpha_composited:
        notes.append(f'mode {mode} with transparent pixels: convert("RGB") drops the transparency, so the '
                     "colours stored under them show")
    elif mode not in LOSSLESS and not image.has_transparency_data:
        notes.append(f'mode {mode}: converted by PIL\'s convert("RGB")')
    orientation = exif_orientation(image)
    if orientation != 1 and not exif_transposed:
        notes.append(f"EXIF orientation {orientation} ignored: the pixels are used as stored, not turned as "
                     "image viewers show them")
    pixels = image.width * image.height
    if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
        notes.append(f"{image.width}x{image.height} is {pixels} pixels, above PIL's decompression-bomb warning "
                     f"limit of {Image.MAX_IMAGE_PIXELS}; decoded anyway")
    return notes
