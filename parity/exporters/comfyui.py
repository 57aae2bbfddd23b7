"""ComfyUI API-format workflows: the stock flux_kontext_dev_basic graph with a LoraLoaderModelOnly, one branch per
preview, and the graph choices a user makes: the image scale node, a ModelSamplingFlux shift node, the scheduler
and the UNETLoader's file and weight dtype, besides steps, seed, guidance and LoRA strength.

Every node is one `parity import --format comfyui` models (facts: comfyui-kontext-facts.md, section 0). The
images and LoRAs are named as files of ComfyUI's input and models/loras folders; `Files` puts copies (links for
LoRAs) of them in input/ and loras/ beside the workflow. Prompts are written with ( and ) escaped, so ComfyUI
reads them literally, as AI Toolkit did, not as (weights).
"""
from __future__ import annotations

from ..case import Case
from ..importers.comfyui import SCHEDULERS
from . import Choice, Field, Files, clamp, output_size, scale_field, seed_field

FORMAT = "comfyui"
TEMPLATE_UNET = "flux1-dev-kontext_fp8_scaled.safetensors"  # the template's UNETLoader file
FULL_UNET = "flux1-kontext-dev.safetensors"  # BFL's bf16 release of the same weights
CLIP_L = "clip_l.safetensors"
T5 = "t5xxl_fp16.safetensors"  # the case runs T5 in fp16 (the template's fp8 T5 is not modelled)
VAE = "ae.safetensors"
BASE_SHIFT, MAX_SHIFT = 0.5, 1.15  # ModelSamplingFlux's defaults = diffusers' base_shift / max_shift
STEPS = (1, 10000)  # KSampler steps


def escaped(prompt: str) -> str:
    """The prompt as ComfyUI's parser reads it literally: brackets escaped (comfy/sd1_clip.py:296-352)."""
    return prompt.replace("(", "\\(").replace(")", "\\)")


def fields(previews: list[Case]) -> list[Field]:
    template_scale = Choice("FluxKontextImageScale (template)", "kontext")
    template_unet = Choice(f"{TEMPLATE_UNET} (template)", [TEMPLATE_UNET, "default"])
    simple = Choice("simple (template)", "simple")
    no_shift = Choice("none (template: shift 1.15 at every size)")
    own_steps = Choice("the preview's", lambda p: clamp(p.steps, *STEPS))
    return [
        Field("image scale", template_scale, (
            template_scale, Choice("bypassed (the control image's own size, cropped to 8)", "none"),
            Choice("ImageScale lanczos to the preview's size", lambda p: list(output_size(p))))),
        Field("KSampler steps", Choice("20 (template)", 20), (own_steps,)),
        seed_field("KSampler seed", "randomized in the template (0 here)"),
        Field("FluxGuidance", Choice("2.5 (template)", 2.5), (Choice("the preview's", lambda p: p.guidance),
                                                              Choice("2.5 (template)", 2.5))),
        scale_field("LoraLoaderModelOnly strength_model", 1.0),
        Field("KSampler scheduler", simple, tuple(Choice(s + (" (template)" if s == "simple" else ""), s)
                                                  for s in SCHEDULERS)),
        Field("ModelSamplingFlux", no_shift, (no_shift, Choice(
            "at the preview's size (shift as diffusers computes it there)", lambda p: list(output_size(p))))),
        Field("UNETLoader", template_unet, (template_unet, Choice(f"{FULL_UNET}, weight_dtype default",
                                                                  [FULL_UNET, "default"]))),
    ]


class _Graph:
    def __init__(self):
        self.nodes: dict[str, dict] = {}

    def add(self, nid: int, class_type: str, **inputs) -> list:
        self.nodes[str(nid)] = {"class_type": class_type, "inputs": inputs}
        return [str(nid), 0]


def document(items: list[tuple[Case, dict]], files: Files) -> dict:
    """One API-format graph: shared loaders, then a branch per preview ending in its SaveImage (ids increase
    with the preview's position, which is the order `parity import` reads the outputs in)."""
    graph = _Graph()
    first = items[0][1]
    unet_name, weight_dtype = first.get("UNETLoader") or [TEMPLATE_UNET, "default"]
    unet = graph.add(1, "UNETLoader", unet_name=unet_name, weight_dtype=weight_dtype)
    clip = graph.add(2, "DualCLIPLoader", clip_name1=CLIP_L, clip_name2=T5, type="flux", device="default")
    vae = graph.add(3, "VAELoader", vae_name=VAE)
    for i, (preview, values) in enumerate(items):
        base = 100 * (i + 1)
        model = unet
        for j, lora in enumerate(preview.loras):
            strength = values.get("LoraLoaderModelOnly strength_model")
            model = graph.add(base + 1 + j, "LoraLoaderModelOnly", model=model, lora_name=files.lora_name(lora.path),
                              strength_model=1.0 if strength is None else strength)
        shift = values.get("ModelSamplingFlux")
        if shift is not None:
            model = graph.add(base + 10, "ModelSamplingFlux", model=model, max_shift=MAX_SHIFT,
                              base_shift=BASE_SHIFT, width=shift[0], height=shift[1])
        pixels = graph.add(base + 20, "LoadImage", image=files.input_name(preview.control_image))
        scale = values.get("image scale") or "kontext"
        if scale == "kontext":
            pixels = graph.add(base + 21, "FluxKontextImageScale", image=pixels)
        elif scale != "none":
            pixels = graph.add(base + 21, "ImageScale", image=pixels, upscale_method="lanczos", width=scale[0],
                               height=scale[1], crop="disabled")
        latent = graph.add(base + 30, "VAEEncode", pixels=pixels, vae=vae)
        text = graph.add(base + 40, "CLIPTextEncode", text=escaped(preview.prompt), clip=clip)
        positive = graph.add(base + 41, "ReferenceLatent", conditioning=text, latent=latent)
        guidance = values.get("FluxGuidance")
        positive = graph.add(base + 42, "FluxGuidance", conditioning=positive,
                             guidance=2.5 if guidance is None else guidance)
        negative = graph.add(base + 43, "ConditioningZeroOut", conditioning=text)
        seed = values.get("KSampler seed")
        samples = graph.add(base + 50, "KSampler", model=model, seed=0 if seed is None else seed,
                            steps=values.get("KSampler steps") or 20, cfg=1.0, sampler_name="euler",
                            scheduler=values.get("KSampler scheduler") or "simple", denoise=1.0, positive=positive,
                            negative=negative, latent_image=latent)
        image = graph.add(base + 60, "VAEDecode", samples=samples, vae=vae)
        graph.add(base + 99, "SaveImage", images=image, filename_prefix=_prefix(preview))
    return graph.nodes


def _prefix(preview: Case) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in preview.name)
