"""The JPEG floor: how much of a preview's difference from the output is just its compression.

AI Toolkit saves previews with a plain PIL ``image.save(path)``: JPEG quality 75, 4:2:0
chroma subsampling. Re-encoding the output the same way and measuring again gives the
best score a perfect reproduction could reach against that preview. The quality of an
arbitrary JPEG is recovered from its quantization tables, which libjpeg derives from the
Annex K example tables with the IJG quality scaling.
"""
from __future__ import annotations

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
