"""Output encodings: what the user finally downloads is an encoded file, not a tensor."""
from __future__ import annotations

import io

from PIL import Image

from .registry import describe_family, register

describe_family("output_format", "how the output image is encoded before it is compared")


def _roundtrip(image: Image.Image, **save_args) -> tuple[bytes, Image.Image]:
    buffer = io.BytesIO()
    image.save(buffer, **save_args)
    data = buffer.getvalue()
    decoded = Image.open(io.BytesIO(data))
    decoded.load()
    return data, decoded.convert("RGB")


@register("output_format", "png")
def encode_png(image: Image.Image, quality: int | None) -> tuple[bytes, Image.Image]:
    """Lossless: the decoded image equals the pipeline's pixels."""
    return _roundtrip(image, format="PNG")


@register("output_format", "jpeg")
def encode_jpeg(image: Image.Image, quality: int | None) -> tuple[bytes, Image.Image]:
    """PIL JPEG, 4:2:0; quality 75 is PIL's default and AI Toolkit's previews."""
    return _roundtrip(image, format="JPEG", quality=75 if quality is None else quality, subsampling=2)


@register("output_format", "webp")
def encode_webp(image: Image.Image, quality: int | None) -> tuple[bytes, Image.Image]:
    """Lossy WebP (PIL default quality 80)."""
    return _roundtrip(image, format="WEBP", quality=80 if quality is None else quality)


EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
