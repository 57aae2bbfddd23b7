"""The JPEG floor: how much of a preview's difference from the output is just its compression.

AI Toolkit saves previews with a plain PIL ``image.save(path)``: JPEG quality 75, 4:2:0
chroma subsampling. Re-encoding the output the same way and measuring again gives the
best score a perfect reproduction could reach against that preview. The quality of an
arbitrary JPEG is recovered from its quantization tables, which libjpeg derives from the
Annex K example tables with the IJG quality scaling.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, JpegImagePlugin

from ..knobs.encoding import JPEG_DEFAULT_QUALITY as PIL_DEFAULT_QUALITY
from ..knobs.encoding import JPEG_DEFAULT_SUBSAMPLING as PIL_DEFAULT_SUBSAMPLING
from ..knobs.encoding import roundtrip

# ITU-T T.81 Annex K, tables K.1 (luminance) and K.2 (chrominance), row-major
# (natural order, which is also how PIL reports ``Image.quantization``).
ANNEX_K_LUMINANCE = (
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip
ANNEX_K_CHROMINANCE = (
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
) + (99,) * 32  # fmt: skip


def ijg_table(base: tuple[int, ...], quality: int) -> list[int]:
    """``base`` scaled for ``quality`` (1..100) as libjpeg's jpeg_set_quality does, baseline-clamped."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return [min(max((q * scale + 50) // 100, 1), 255) for q in base]


def estimate_quality(img: Image.Image) -> int | None:
    """The IJG quality (1..100) whose tables best match ``img``'s; None if it is not a JPEG.

    Exact for files written by libjpeg-based encoders (PIL among them); for other encoders'
    tables it is the nearest IJG quality.
    """
    tables = getattr(img, "quantization", None)
    if not isinstance(img, JpegImagePlugin.JpegImageFile) or not tables or 0 not in tables:
        return None
    pairs = [(ANNEX_K_LUMINANCE, tables[0])] + ([(ANNEX_K_CHROMINANCE, tables[1])] if 1 in tables else [])

    def mismatch(quality: int) -> int:
        return sum(abs(s - t) for base, table in pairs for s, t in zip(ijg_table(base, quality), table))

    return min(range(1, 101), key=mismatch)


def chroma_subsampling(img: Image.Image) -> int | None:
    """PIL's subsampling code of a colour JPEG (0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0), else None."""
    code = JpegImagePlugin.get_sampling(img) if isinstance(img, JpegImagePlugin.JpegImageFile) else -1
    return None if code == -1 else code


def reencode_jpeg(
    image: Image.Image, quality: int = PIL_DEFAULT_QUALITY, subsampling: int = PIL_DEFAULT_SUBSAMPLING
) -> Image.Image:
    """``image`` after a JPEG round trip with the given settings (the defaults are AI Toolkit's)."""
    return roundtrip(image, format="JPEG", quality=quality, subsampling=subsampling)[1]


# --- JPEG consistency: how far an image is from the set of images a JPEG could have been made from ---
#
# A JPEG keeps, per 8x8 luma block, each DCT coefficient as an integer multiple k of its quantization
# step q: the original coefficient lay in [(k - 1/2) q, (k + 1/2) q]. An image that reproduces the
# preview's original exactly has every coefficient inside its interval; rounding-level noise (another
# CPU's bf16 kernels) leaves it inside almost everywhere; a real difference pushes coefficients out.
# The RMS of how far they stick out (in pixel levels: the DCT is orthonormal) is the gap a JPEG
# preview can actually resolve. Comparing decoded pixels instead amplifies rounding noise about five
# times (a quantization flip moves a whole block), which hides differences such as fp8 quantization.
# Luma only: with 4:2:0 the chroma planes are upsampled by the decoder and cannot be read back exactly.

LIBJPEG_SCALE = 1 << 16  # libjpeg's fixed-point RGB -> Y: FIX(x) = round(x * 2**16), rounded result


def jpeg_luma(rgb: np.ndarray) -> np.ndarray:
    """Y of uint8 RGB as libjpeg's encoder computes it (fixed point, rounded to an integer)."""
    weights = np.array([round(0.299 * LIBJPEG_SCALE), round(0.587 * LIBJPEG_SCALE), round(0.114 * LIBJPEG_SCALE)])
    return ((rgb.astype(np.int64) @ weights + LIBJPEG_SCALE // 2) >> 16).astype(np.float64)


def block_dct(y: np.ndarray) -> np.ndarray:
    """Orthonormal 8x8 DCT-II (JPEG's FDCT) of every whole block of the level-shifted plane: (rows, cols, 8, 8)."""
    from scipy.fft import dctn

    h, w = y.shape[0] // 8 * 8, y.shape[1] // 8 * 8
    blocks = (y[:h, :w] - 128.0).reshape(h // 8, 8, w // 8, 8).transpose(0, 2, 1, 3)
    return dctn(blocks, axes=(2, 3), norm="ortho")


@dataclass(frozen=True)
class JpegLuma:
    """What a JPEG preview says about its original's luma: coefficient indices and their steps."""

    indices: np.ndarray  # (rows, cols, 8, 8) integers k
    steps: np.ndarray  # (8, 8) quantization steps q
    size: tuple[int, int]

    def excess(self, rgb: np.ndarray) -> float:
        """RMS over the luma coefficients of how far ``rgb``'s lie outside the preview's intervals."""
        coefficients = block_dct(jpeg_luma(rgb)) / self.steps
        outside = np.maximum(np.abs(coefficients - self.indices) - 0.5, 0.0) * self.steps
        return float(np.sqrt(np.mean(outside ** 2))) if outside.size else 0.0


def read_jpeg_luma(source: Image.Image | bytes) -> JpegLuma | None:
    """The luma coefficient indices of a JPEG (an opened file, or its bytes), read back from its decoded
    Y plane; None when it is not a JPEG or has no whole 8x8 block. The decoder's rounding moves a
    coefficient by far less than half a step."""
    image = Image.open(io.BytesIO(source)) if isinstance(source, bytes) else source
    tables = getattr(image, "quantization", None)
    if not isinstance(image, JpegImagePlugin.JpegImageFile) or not tables or 0 not in tables:
        return None
    if image.width < 8 or image.height < 8:
        return None
    steps = np.array(tables[0], dtype=np.float64).reshape(8, 8)
    origin = io.BytesIO(source) if isinstance(source, bytes) else getattr(image, "filename", None)
    if origin:
        with Image.open(origin) as decoder:  # a fresh decoder: draft() must come before load()
            decoder.draft("L", decoder.size)  # the Y plane as decoded, no colour conversion
            y = np.asarray(decoder.convert("L"), dtype=np.float64)
    else:  # an image with no file behind it: Y from the decoded RGB (within a level)
        y = jpeg_luma(np.asarray(image.convert("RGB")))
    return JpegLuma(np.round(block_dct(y) / steps), steps, image.size)
