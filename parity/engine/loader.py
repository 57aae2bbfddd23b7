"""Loading a Kontext base: device choice, dtype, offload, and the embedded demo model.

The embedded model (``parity/data/shapes-kontext``) is the demo model ``make demo-model`` trains
(``parity.demo``): a tiny FLUX.1-Kontext that edits scenes of flat shapes. ``PARITY_EMBEDDED_BASE``
points "embedded" at another folder (the tests use it for the older seeded tiny model, whose genuine
previews are fidelity fixtures).

Every base, the 12B checkpoint and the few-MB demo model alike, goes through
``FluxKontextPipeline.from_pretrained``, so what is proven here on CPU is the real path.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import ParityError

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # silence "requires torchvision" notices

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
OFFLOAD = ("none", "model", "sequential")
DEFAULT_BASE = "black-forest-labs/FLUX.1-Kontext-dev"
EMBEDDED_BASE = Path(__file__).resolve().parent.parent / "data" / "shapes-kontext"


def pick_device(requested: str = "auto") -> torch.device:
    """auto: CUDA, then Apple MPS, then CPU."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ParityError(f'device "{requested}" asked for, but this machine has no CUDA device')
    return device


def resolve_base(base: str | os.PathLike | None) -> str:
    """A local folder, 'embedded' (the demo model, or $PARITY_EMBEDDED_BASE) or a Hugging Face model id."""
    if base in (None, "", "embedded"):
        return embedded_base()
    return str(base)


def embedded_base() -> str:
    """The folder "embedded" stands for: $PARITY_EMBEDDED_BASE when set, else the demo model."""
    return os.environ.get("PARITY_EMBEDDED_BASE") or str(EMBEDDED_BASE)


def load_pipeline(base: str, dtype: str, device: torch.device, offload: str = "none", components: dict | None = None):
    """``components``: modules already built (quantized weights from the cache), not read from the base."""
    from diffusers import FluxKontextPipeline
    from diffusers.utils import logging as dlogging

    if offload not in OFFLOAD:
        raise ParityError(f'offload "{offload}" is not one of {", ".join(OFFLOAD)}')
    if offload != "none" and device.type != "cuda":
        raise ParityError(f'offload "{offload}" moves weights between CPU and a GPU; device is {device.type}')
    local = Path(base).is_dir()
    if not local and Path(base).exists():
        raise ParityError("a base model must be a folder saved by save_pretrained or a model id", source=base)
    if local and not (Path(base) / "model_index.json").is_file():
        raise ParityError("no model_index.json: not a diffusers pipeline folder", source=base)
    from transformers.utils import logging as tlogging

    dlogging.set_verbosity_error()
    dlogging.disable_progress_bar()
    tlogging.set_verbosity_error()
    tlogging.disable_progress_bar()
    try:
        pipe = FluxKontextPipeline.from_pretrained(base, dtype=DTYPES[dtype], local_files_only=local,
                                                   use_safetensors=True, **(components or {}))  # never a .bin
    except (OSError, ValueError, EnvironmentError) as err:
        raise ParityError(f"cannot load the base model: {err}", source=base) from None
    pipe.set_progress_bar_config(disable=True)
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    return pipe


def load_text_encoders(base: str, storage: torch.dtype, compute: torch.dtype, device: torch.device):
    """CLIP and T5 of a base with weights rounded to ``storage`` and computed in ``compute`` (ComfyUI keeps
    text-encoder weights in float16 and casts them to float32 for every layer)."""
    from transformers import CLIPTextModel, T5EncoderModel

    local = Path(base).is_dir()
    models = []
    for cls, subfolder in ((CLIPTextModel, "text_encoder"), (T5EncoderModel, "text_encoder_2")):
        try:
            model = cls.from_pretrained(base, subfolder=subfolder, dtype=storage, local_files_only=local,
                                        use_safetensors=True)
        except (OSError, ValueError, EnvironmentError) as err:
            raise ParityError(f"cannot load the base model's {subfolder}: {err}", source=base) from None
        # .to(storage) first: from_pretrained keeps some modules in float32 (T5's `wo`), ComfyUI rounds them all
        models.append(model.to(storage).to(device=device, dtype=compute).eval())
    return tuple(models)
