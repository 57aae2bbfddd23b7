"""Engine: one loaded base that turns Cases into images, timings and the arguments it really used.

The denoising loop is FluxKontextPipeline.__call__'s, step for step (a test proves the two
give identical pixels), written out so that each stage can be timed, the prompt and control
encodings cached, and every knob applied where it acts.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ..case import Case
from ..errors import ParityError
from ..imaging import header_size, open_image
from ..knobs import lookup
from ..knobs.control import prepare_control
from ..knobs.schedule import mu_for_tokens
from ..knobs.sizing import pipeline_output_size
from .loader import load_pipeline, pick_device, resolve_base
from .lora import LoraApplier, LoraFile, load_lora_file
from .timing import StageTimer, peak_memory, reset_peak_memory

T5_MAX_TOKENS = 512
SHOWN_CHARS = 80  # of a truncated prompt's dropped end, in a warning


@dataclass
class RunResult:
    """What one case produced: the image as the user receives it, and how it was made."""

    case: Case
    image: Image.Image  # decoded from the chosen output encoding
    raw_image: Image.Image  # the pipeline's pixels before encoding
    encoded: bytes
    control_image: Image.Image | None  # the control image as handed to the pipeline
    timings: dict
    memory: dict
    effective: dict = field(default_factory=dict)
    lora_audits: list = field(default_factory=list)

    def row(self) -> dict:
        """Flat record for the results table: knobs, effective arguments, timings, memory."""
        row = self.case.columns()
        row.update({f"eff_{k}": v for k, v in self.effective.items()})
        row.update(self.timings)
        row.update(self.memory)
        for i, audit in enumerate(self.lora_audits):
            row.update({f"{k}_{i}": v for k, v in audit.summary().items()})
        row["warnings"] = self.warnings()
        return row

    def warnings(self) -> list[str]:
        """What the user must be told: inputs that were cut or changed on their way into the model."""
        out = []
        dropped = self.effective.get("prompt_truncated")
        if dropped:
            shown = dropped if len(dropped) <= SHOWN_CHARS else "..." + dropped[-SHOWN_CHARS:]
            out.append(f"prompt longer than T5's {T5_MAX_TOKENS} tokens: its end was dropped "
                       f"({len(dropped)} characters: {shown!r})")
        out += [f"control image: {note}, as AI Toolkit does" for note in self.effective.get("control_notes", [])]
        return out


class Engine:
    """A Kontext base loaded once; pipelines per (dtype, quantization), LoRA files read once.

    >>> engine = Engine("embedded")            # or a folder / "black-forest-labs/FLUX.1-Kontext-dev"
    >>> result = engine.run(Case(prompt="make it red", control_image="in.png", width=128, height=128))
    >>> result.image                            # PIL image
    """

    def __init__(self, base: str | None = "embedded", *, device: str = "auto", offload: str = "none",
                 keep_pipelines: int = 1, cache_encodings: bool = True):
        self.base = resolve_base(base)
        self.device = pick_device(device)
        self.offload = offload
        self.keep_pipelines = keep_pipelines
        self.cache_encodings = cache_encodings
        self._pipelines: OrderedDict[tuple[str, str], tuple[object, LoraApplier]] = OrderedDict()
        self._lora_files: dict[tuple[str, str], LoraFile] = {}
        self._prompt_cache: dict[tuple, tuple] = {}
        self._control_cache: dict[tuple, tuple] = {}
        self.counters = {"transformer_calls": 0, "pipelines_loaded": 0, "lora_files_read": 0}

    # --- resources --------------------------------------------------------------------------
    def pipeline(self, dtype: str, quantize: str = "none", compile: bool = False, channels_last: bool = False):
        """A loaded pipeline per variant; compiling or re-laying out weights cannot be undone per case."""
        key = (dtype, quantize, compile, channels_last)
        if key not in self._pipelines:
            while len(self._pipelines) >= self.keep_pipelines:
                self._pipelines.popitem(last=False)
                self._lora_files.clear()  # audited against the evicted transformer
                self._prompt_cache.clear()
                self._control_cache.clear()
            pipe = load_pipeline(self.base, dtype, self.device, self.offload)
            if quantize != "none":
                from .quantize import quantize_pipeline

                quantize_pipeline(pipe, quantize)
            if channels_last:
                pipe.vae.to(memory_format=torch.channels_last)
            if compile:
                pipe.transformer.compile()
            self._pipelines[key] = (pipe, LoraApplier(pipe))
            self.counters["pipelines_loaded"] += 1
        self._pipelines.move_to_end(key)
        return self._pipelines[key]

    def lora_file(self, path: str, transformer) -> LoraFile:
        key = (str(Path(path).resolve()), f"{id(transformer)}")
        if key not in self._lora_files:
            self._lora_files[key] = load_lora_file(path, transformer)
            self.counters["lora_files_read"] += 1
        return self._lora_files[key]

    # --- one case ---------------------------------------------------------------------------
    def run(self, case: Case) -> RunResult:
        pipe, applier = self.pipeline(*case.pipeline_variant())
        device = pipe._execution_device
        self._set_attention(pipe, case.attention_backend)
        timer = StageTimer(device)
        reset_peak_memory(device)
        loras = [(self.lora_file(l.path, pipe.transformer), l.scale, l.mode) for l in case.loras]

        control_size = None
        if case.control_image:
            control_size = header_size(case.control_image, "control image", exif_transposed=case.control_exif_transpose)
        asked = lookup("size_source", case.size_source)(case.width, case.height, control_size)
        requested = lookup("snap", case.snap)(*asked)
        max_area = case.max_area if case.max_area is not None else requested[0] * requested[1]
        out_w, out_h = pipeline_output_size(requested[0], requested[1], max_area)
        if out_w < 16 or out_h < 16:
            raise ParityError(f'case "{case.name}": output size {out_w}x{out_h} is too small (16 px minimum)')
        effective = {"requested_width": requested[0], "requested_height": requested[1], "max_area": max_area,
                     "width": out_w, "height": out_h}

        with torch.no_grad(), applier.applied(loras):
            with timer.stage("text_encode"):
                embeds, pooled, text_ids, truncated = self._encode_prompt(pipe, case, case.prompt, device)
            guidance_plan = lookup("guidance_mode", case.guidance_mode)(
                case.guidance, case.true_cfg_scale, case.negative_prompt, pipe.transformer.config.guidance_embeds)
            if guidance_plan.true_cfg_scale is not None:
                with timer.stage("text_encode"):
                    neg = self._encode_prompt(pipe, case, case.negative_prompt, device)
            effective["prompt_truncated"] = truncated

            control_image = None
            image_latents = image_ids = None
            if case.control_image:
                with timer.stage("control_encode"):
                    control_image, image_latents, image_ids, trace = self._encode_control(
                        pipe, case, requested, (out_w, out_h), embeds.dtype, device)
                effective.update(trace)

            generator = lookup("generator", case.generator)(case.seed, device)
            latents, latent_ids = self._initial_noise(pipe, out_h, out_w, embeds.dtype, device, generator)
            if image_ids is not None:
                latent_ids = torch.cat([latent_ids, image_ids], dim=0)

            scheduler, timesteps, sigmas, mu = self._scheduler(pipe, case, latents.shape[1], device)
            effective.update({"mu": mu, "sigmas": [round(float(s), 6) for s in sigmas],
                              "timesteps": [round(float(t), 4) for t in timesteps]})
            guidance = None
            if guidance_plan.embedding is not None:
                guidance = torch.full([1], guidance_plan.embedding, device=device, dtype=torch.float32)
                guidance = guidance.expand(latents.shape[0])
            effective["guidance_embedding"] = guidance_plan.embedding
            effective["true_cfg"] = guidance_plan.true_cfg_scale

            calls_before = self.counters["transformer_calls"]
            for t in timesteps:
                with timer.stage("step"):
                    model_input = latents if image_latents is None else torch.cat([latents, image_latents], dim=1)
                    timestep = t.expand(latents.shape[0]).to(latents.dtype)
                    noise_pred = self._transformer(pipe, model_input, timestep, guidance, pooled, embeds,
                                                   text_ids, latent_ids)[:, : latents.size(1)]
                    if guidance_plan.true_cfg_scale is not None:
                        neg_pred = self._transformer(pipe, model_input, timestep, guidance, neg[1], neg[0],
                                                     neg[2], latent_ids)[:, : latents.size(1)]
                        noise_pred = neg_pred + guidance_plan.true_cfg_scale * (noise_pred - neg_pred)
                    latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
            effective["transformer_calls"] = self.counters["transformer_calls"] - calls_before

            with timer.stage("decode"):
                raw = self._decode(pipe, latents, out_h, out_w)
        with timer.stage("output_encode"):
            encoded, decoded = lookup("output_format", case.output_format)(raw, case.output_quality)
        effective["output_bytes"] = len(encoded)
        timings = timer.finish()
        timings["time_total_s"] = round(sum(v for k, v in timings.items() if k.endswith("_s") and k != "time_steps_s"), 6)
        return RunResult(case, decoded, raw, encoded, control_image, timings, peak_memory(device), effective,
                         [lora.audit for lora, _, _ in loras])

    def _set_attention(self, pipe, name: str) -> None:
        """Set explicitly for every case: resetting does not bring every kernel choice back."""
        if getattr(pipe, "_parity_attention", None) == name:
            return
        pipe._parity_attention = None  # unknown until the switch and its probe succeed
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        backend = lookup("attention_backend", name)()
        try:
            pipe.transformer.set_attention_backend(backend)
            probe = torch.zeros(1, 4, 2, 16, device=pipe._execution_device, dtype=pipe.transformer.dtype)
            dispatch_attention_fn(probe, probe, probe, backend=backend)  # fails here, not mid-run
        except (RuntimeError, ValueError, ImportError) as err:
            raise ParityError(f'attention backend "{name}" is not usable here: {err}') from None
        pipe._parity_attention = name

    # --- stages -----------------------------------------------------------------------------
    def _encode_prompt(self, pipe, case: Case, prompt: str, device):
        """CLIP pooled + T5 (padded to 512, no mask), as the pipeline does; cached per prompt."""
        key = (prompt, case.dtype, case.quantize)
        if self.cache_encodings and key in self._prompt_cache:
            return self._prompt_cache[key]
        ids = pipe.tokenizer_2(prompt, truncation=False, return_tensors="pt").input_ids[0]
        truncated = ""
        if len(ids) > T5_MAX_TOKENS:
            truncated = pipe.tokenizer_2.decode(ids[T5_MAX_TOKENS - 1:-1])
        embeds, pooled, text_ids = pipe.encode_prompt(prompt=prompt, prompt_2=None, device=device,
                                                      max_sequence_length=T5_MAX_TOKENS)
        value = (embeds, pooled, text_ids, truncated)
        if self.cache_encodings:
            self._prompt_cache[key] = value
        return value

    def _encode_control(self, pipe, case: Case, requested, output, dtype, device):
        path = Path(case.control_image)
        data = _read_bytes(path, "control image")
        knobs = (case.control_exif_transpose, case.control_alpha, case.control_target, case.control_resize,
                 case.control_fit, case.control_auto_resize, case.control_pipeline_resize)
        key = (hashlib.sha256(data).hexdigest(), tuple(requested), tuple(output), knobs, case.dtype, case.quantize,
               case.channels_last)
        if self.cache_encodings and key in self._control_cache:
            return self._control_cache[key]
        image = open_image(path, "control image")
        handed, encoded, trace = prepare_control(
            image, exif_transpose=case.control_exif_transpose, alpha=case.control_alpha,
            target=case.control_target, resize=case.control_resize, fit=case.control_fit,
            auto_resize=case.control_auto_resize, pipeline_resize=case.control_pipeline_resize,
            requested=tuple(requested), output=tuple(output))
        # The pipeline's own preprocessing: same values AND same memory layout, which picks the conv kernels.
        pixels = pipe.image_processor.preprocess(encoded, encoded.height, encoded.width)
        pixels = pixels.to(device=device, dtype=dtype)
        latents = pipe._encode_vae_image(image=pixels, generator=None)
        _, channels, lat_h, lat_w = latents.shape
        packed = pipe._pack_latents(latents, 1, channels, lat_h, lat_w)
        ids = pipe._prepare_latent_image_ids(1, lat_h // 2, lat_w // 2, device, dtype)
        ids[..., 0] = 1
        value = (handed, packed, ids, trace)
        if self.cache_encodings:
            self._control_cache[key] = value
        return value

    def _initial_noise(self, pipe, height, width, dtype, device, generator):
        from diffusers.utils.torch_utils import randn_tensor

        channels = pipe.transformer.config.in_channels // 4
        lat_h = 2 * (height // (pipe.vae_scale_factor * 2))
        lat_w = 2 * (width // (pipe.vae_scale_factor * 2))
        noise = randn_tensor((1, channels, lat_h, lat_w), generator=generator, device=device, dtype=dtype)
        latents = pipe._pack_latents(noise, 1, channels, lat_h, lat_w)
        ids = pipe._prepare_latent_image_ids(1, lat_h // 2, lat_w // 2, device, dtype)
        return latents, ids

    def _scheduler(self, pipe, case: Case, tokens: int, device):
        from diffusers import FlowMatchEulerDiscreteScheduler

        config = dict(pipe.scheduler.config)
        config.update(use_dynamic_shifting=case.dynamic_shifting, shift=case.shift,
                      base_shift=case.base_shift, max_shift=case.max_shift)
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
        sigmas = lookup("sigma_schedule", case.sigma_schedule)(case.steps)
        mu = None
        if case.dynamic_shifting:
            mu = mu_for_tokens(tokens, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                               case.base_shift, case.max_shift)
        kwargs = {"mu": mu} if mu is not None else {}
        if sigmas is None:
            scheduler.set_timesteps(case.steps, device=device, **kwargs)
        else:
            scheduler.set_timesteps(sigmas=sigmas, device=device, **kwargs)
        scheduler.set_begin_index(0)
        return scheduler, scheduler.timesteps, scheduler.sigmas, mu

    def _transformer(self, pipe, hidden, timestep, guidance, pooled, embeds, text_ids, image_ids):
        self.counters["transformer_calls"] += 1
        return pipe.transformer(hidden_states=hidden, timestep=timestep / 1000, guidance=guidance,
                                pooled_projections=pooled, encoder_hidden_states=embeds, txt_ids=text_ids,
                                img_ids=image_ids, joint_attention_kwargs={}, return_dict=False)[0]

    def _decode(self, pipe, latents, height, width) -> Image.Image:
        latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
        latents = latents / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        image = pipe.vae.decode(latents, return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type="pil")[0]


def _read_bytes(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise ParityError(f"{what} not found", source=path)
    data = path.read_bytes()
    if not data:
        raise ParityError(f"{what} is empty", source=path)
    return data
