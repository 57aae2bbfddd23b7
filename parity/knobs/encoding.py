"""Output encodings: what the user finally downloads is an encoded file, not a tensor."""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from .registry import describe_family, register

describe_family("output_format", "how the output image is encoded before it is compared")


# PIL's JPEG defaults, which AI Toolkit's plain ``image.save(path)`` previews get.
JPEG_DEFAULT_QUALITY = 75
JPEG_DEFAULT_SUBSAMPLING = 2  # PIL's codes: 0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0


def roundtrip(image: Image.Image, **save_args) -> tuple[bytes, Image.Image]:
    """Encode with PIL and decode again: the bytes a user downloads and the RGB pixels they see."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, **save_args)
    data = buffer.getvalue()
    decoded = Image.open(io.BytesIO(data))
    decoded.load()
    return data, decoded.convert("RGB")


@register("output_format", "png")
def encode_png(image: Image.Image, quality: int | None) -> tuple[bytes, Image.Image]:
    """Lossless: the decoded image equals the pipeline's pixels."""
    return roundtrip(image, format="PNG")


@register("output_format", "jpeg")
def encode_jpeg(image: Image.Image, quality: int | None) -> tuple[bytes, Image.Image]:
    """PIL JPEG, 4:2:0; quality 75 is PIL's default and AI Toolkit's previews."""
    quality = JPEG_DEFAULT_QUALITY if quality is None else quality
    return roundtrip(image, format="JPEG", quality=quality, subsampling=JPEG_DEFAULT_SUBSAMPLING)


@register("output_format", "webp")
def encode_webp(image: Image.Image, quality: int | None) -> tuple[bytes, Image.Image]:
    """Lossy WebP (PIL default quality 80)."""
    return roundtrip(image, format="WEBP", quality=80 if quality is None else quality)


EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}


describe_family("output_uint8", "how the VAE's output becomes 8-bit pixels")


@register("output_uint8", "round")
def uint8_round(decoded: torch.Tensor) -> Image.Image:
    """diffusers postprocess: x*0.5+0.5 clamped in the VAE's dtype, then float32, x*255 rounded."""
    pixels = (decoded * 0.5 + 0.5).clamp(0, 1)
    pixels = pixels.cpu().permute(0, 2, 3, 1).float().numpy()
    return Image.fromarray((pixels[0] * 255).round().astype("uint8"))


@register("output_uint8", "truncate")
def uint8_truncate(decoded: torch.Tensor) -> Image.Image:
    """ComfyUI VAEDecode + SaveImage: float32 first, (x+1)/2 clamped, 255*x truncated (comfy/sd.py:287, nodes.py:1593)."""
    pixels = torch.clamp((decoded.float() + 1.0) / 2.0, min=0.0, max=1.0)
    pixels = 255.0 * pixels.cpu().permute(0, 2, 3, 1).numpy()
    return Image.fromarray(np.clip(pixels[0], 0, 255).astype(np.uint8))
