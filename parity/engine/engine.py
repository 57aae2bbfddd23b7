"""Engine: one loaded base that turns Cases into images, timings and the arguments it really used.

The denoising loop is FluxKontextPipeline.__call__'s, step for step (a test proves the two
give identical pixels), written out so that each stage can be timed, the prompt and control
encodings cached, and every knob applied where it acts.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import OrderedDict
from functools import partial
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ..case import Case
from ..errors import ParityError
from ..files import file_digest
from ..imaging import exif_orientation, has_transparent_pixels, open_image
from ..knobs import lookup
from ..knobs.control import prepare_control
from ..knobs.schedule import mu_for_tokens, time_shift
from ..knobs.sizing import size_plan
from ..knobs.text import T5_MAX_TOKENS, apply_token_weights
from .loader import DTYPES, load_pipeline, load_text_encoders, pick_device, resolve_base
from .lora import LoraApplier, LoraFile, load_lora_file
from .quantize import load_cached
from .timing import StageTimer, peak_memory, reset_peak_memory

SHOWN_CHARS = 80  # of a truncated prompt's dropped end, in a warning
CONTROL_SOURCES = 64  # decoded control images kept (each case of a preview shares one; a run uses a few)


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
        out += [str(note) for note in self.effective.get("prompt_notes", [])]
        return out


class Engine:
    """A Kontext base loaded once; pipelines per (dtype, quantization), LoRA files read once.

    >>> engine = Engine("embedded")            # or a folder / "black-forest-labs/FLUX.1-Kontext-dev"
    >>> result = engine.run(Case(prompt="make it red", control_image="in.png", width=128, height=128))
    >>> result.image                            # PIL image
    """

    def __init__(self, base: str | None = "embedded", *, device: str = "auto", offload: str = "none",
                 keep_pipelines: int = 1, cache_encodings: bool = True, cache_dir: str | Path | None = None):
        """``cache_dir``: where quantized weights are kept between runs (``parity.engine.quantize``); None: not
        kept, every load quantizes again."""
        self.base = resolve_base(base)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.device = pick_device(device)
        self.offload = offload
        self.keep_pipelines = keep_pipelines
        self.cache_encodings = cache_encodings
        self._pipelines: OrderedDict[tuple[str, str], tuple[object, LoraApplier]] = OrderedDict()
        self._lora_files: dict[tuple[str, str], LoraFile] = {}
        self._prompt_cache: dict[tuple, tuple] = {}
        self._control_cache: dict[tuple, tuple] = {}
        self._control_sources: dict[tuple[str, str], ControlSource] = {}
        self._text_encoders: dict[tuple, tuple] = {}
        self._exact_timestep = None  # what the time embedding gets instead of the transformer's cast (timestep_dtype)
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
            plan = lookup("quantize", quantize)()
            cache = self._quantized_cache(plan, dtype)
            built = load_cached(cache, self.base, DTYPES[dtype]) if cache and cache.is_dir() else {}
            pipe = load_pipeline(self.base, dtype, self.device, self.offload, built)
            self._quantize(pipe, plan, cache, tuple(built))
            if channels_last:
                pipe.vae.to(memory_format=torch.channels_last)
            if compile:
                pipe.transformer.compile()
            pipe.transformer.time_text_embed.register_forward_pre_hook(self._exact_timestep_hook)
            self._pipelines[key] = (pipe, LoraApplier(pipe))
            self.counters["pipelines_loaded"] += 1
        self._pipelines.move_to_end(key)
        return self._pipelines[key]

    def _quantized_cache(self, plan, dtype: str) -> Path | None:
        """The cache folder of quanto weights for this base, dtype and qtype (None: no cache, or not quanto)."""
        from .quantize import cache_folder

        if plan.kind != "quanto" or self.cache_dir is None:
            return None
        return cache_folder(self.cache_dir, self.base, dtype, plan.qtype)

    def _quantize(self, pipe, plan, cache: Path | None, cached: tuple[str, ...]) -> None:
        """Store the weights as ``plan`` (``parity.knobs.quantize.Quantization``) says; ``cached``: quanto
        components the pipeline was built with from ``cache`` (already quantized)."""
        from . import quantize as q

        if plan.kind == "quanto":
            q.quantize_pipeline(pipe, plan.qtype, cache=cache, cached=cached)
        elif plan.kind == "fp8":
            pipe.transformer._parity_storage = q.store_fp8(pipe.transformer, plan.fp8)
            if plan.fast:
                q.clamp_inputs_to_fp8(pipe.transformer)
        elif plan.kind == "fp8_scaled":
            pipe.transformer._parity_storage = q.store_fp8_scaled(pipe.transformer, plan.fp8)

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
        model_dtype = DTYPES[case.dtype]
        latent_dtype = lookup("latent_dtype", case.latent_dtype)(model_dtype)
        sampler = lookup("sampler", case.sampler)()
        grid = lookup("latent_padding", case.latent_padding)()

        source = self._control_source(case.control_image) if case.control_image else None
        sizes = self.sizes(case)
        out_w, out_h = sizes.output
        effective = sizes.effective()

        with torch.no_grad(), applier.applied(loras):
            with timer.stage("text_encode"):
                embeds, pooled, text_ids, plan = self._encode_prompt(pipe, case, case.prompt, device)
            guidance_plan = lookup("guidance_mode", case.guidance_mode)(
                case.guidance, case.true_cfg_scale, case.negative_prompt, pipe.transformer.config.guidance_embeds)
            if guidance_plan.true_cfg_scale is not None:
                with timer.stage("text_encode"):
                    neg = self._encode_prompt(pipe, case, case.negative_prompt, device)
            effective["prompt_truncated"] = plan.truncated
            effective["prompt_notes"] = list(plan.notes)
            effective["t5_tokens"] = len(plan.t5_ids)

            control_image = None
            image_latents = image_ids = None
            if case.control_image:
                with timer.stage("control_encode"):
                    control_image, image_latents, image_ids, trace = self._encode_control(
                        pipe, case, sizes, source, model_dtype, device)
                effective.update(trace)

            generator = lookup("generator", case.generator)(case.seed, device)
            latents, latent_ids = self._initial_noise(pipe, out_h, out_w, latent_dtype, device, generator,
                                                      noise=case.noise, grid=grid, ids_dtype=model_dtype)
            channels, lat_h, lat_w = latents.shape[1:]
            pad_h, pad_w = grid.pad(latents[:, :1]).shape[-2:]
            if image_ids is not None:
                latent_ids = torch.cat([latent_ids, image_ids], dim=0)

            scheduler, timesteps, sigmas, mu = self._scheduler(pipe, case, (pad_h // 2) * (pad_w // 2), device)
            effective.update({"mu": mu, "sigmas": [round(float(s), 6) for s in sigmas],
                              "timesteps": [round(float(t), 4) for t in timesteps]})
            guidance = None
            if guidance_plan.embedding is not None:
                guidance = torch.full([1], guidance_plan.embedding, device=device, dtype=torch.float32)
                guidance = guidance.expand(latents.shape[0])
            effective["guidance_embedding"] = guidance_plan.embedding
            effective["true_cfg"] = guidance_plan.true_cfg_scale

            calls_before = self.counters["transformer_calls"]
            try:
                for i, t in enumerate(timesteps):
                    with timer.stage("step"):
                        padded = grid.pad(latents.to(model_dtype))
                        packed = pipe._pack_latents(padded, 1, channels, pad_h, pad_w)
                        model_input = packed if image_latents is None else torch.cat([packed, image_latents], dim=1)
                        timestep = sampler.timestep(sigmas[i], t, latents.dtype)
                        self._exact_timestep = lookup("timestep_dtype", case.timestep_dtype)(timestep)
                        noise_pred = self._transformer(pipe, model_input, timestep, guidance, pooled, embeds,
                                                       text_ids, latent_ids)[:, : packed.size(1)]
                        if guidance_plan.true_cfg_scale is not None:
                            neg_pred = self._transformer(pipe, model_input, timestep, guidance, neg[1], neg[0],
                                                         neg[2], latent_ids)[:, : packed.size(1)]
                            noise_pred = neg_pred + guidance_plan.true_cfg_scale * (noise_pred - neg_pred)
                        velocity = pipe._unpack_latents(noise_pred, pad_h * pipe.vae_scale_factor,
                                                        pad_w * pipe.vae_scale_factor, pipe.vae_scale_factor)
                        latents = sampler.step(latents, velocity[:, :, :lat_h, :lat_w], sigmas[i], sigmas[i + 1])
            finally:
                self._exact_timestep = None
            effective["transformer_calls"] = self.counters["transformer_calls"] - calls_before

            with timer.stage("decode"):
                raw = self._decode(pipe, case, latents)
        with timer.stage("output_encode"):
            encoded, decoded = lookup("output_format", case.output_format)(raw, case.output_quality)
        effective["output_bytes"] = len(encoded)
        timings = timer.finish()
        timings["time_total_s"] = round(sum(v for k, v in timings.items() if k.endswith("_s") and k != "time_steps_s"), 6)
        return RunResult(case, decoded, raw, encoded, control_image, timings, peak_memory(device), effective,
                         [lora.audit for lora, _, _ in loras])

    def sizes(self, case: Case):
        """The case's size plan (``parity.knobs.sizing.size_plan``) with its control image's real size."""
        source = self._control_source(case.control_image) if case.control_image else None
        return size_plan(case, source.size(case.control_exif_transpose) if source else None)

    def render_key(self, case: Case) -> str:
        """Identity of the pixels ``case`` draws: cases with one render key draw the same image, so it is
        computed once. Knobs enter as what they decide for this case (the size plan's sizes instead of the
        rules that lead to them; a control-image knob that has nothing to act on, such as alpha handling of
        an opaque image or a resize filter with no resize, drops out), with the base, the device type, the
        torch and diffusers versions and the bytes of the control image and LoRA files."""
        import diffusers

        data = case.to_dict()
        for skip in ("name", "gated", "tags", "preview", "base_preview", "output_format", "output_quality",
                     "width", "height", "size_source", "snap", "max_area", "control_target", "control_auto_resize"):
            data.pop(skip)
        source = self._control_source(case.control_image) if case.control_image else None
        sizes = self.sizes(case)
        data["sizes"] = [sizes.output, sizes.control_target, sizes.control_encoded]
        control_knobs = [k for k in data if k.startswith("control_") and k != "control_image"]
        if source is None:
            for knob in control_knobs:
                data.pop(knob)
        else:
            data["control_image"] = source.digest
            if not has_transparent_pixels(source.image):
                data.pop("control_alpha")  # drop and white agree on an opaque image
            if exif_orientation(source.image) == 1:
                data.pop("control_exif_transpose")
            if sizes.control_target is None:
                data.pop("control_resize"), data.pop("control_fit")  # no first resize
            if sizes.control_encoded == sizes.control_handed:
                data.pop("control_pipeline_resize")  # PIL returns an exact copy at the same size
        data["loras"] = [[file_digest(lora["path"]), lora["scale"], lora["mode"]] for lora in data["loras"]]
        parts = [json.dumps(data, sort_keys=True, default=str), self.base, self.device.type, torch.__version__,
                 diffusers.__version__]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]

    def reencode(self, result: RunResult, case: Case) -> RunResult:
        """``result``'s pixels as ``case`` delivers them (its output format and quality): a case that draws
        the same image as one already drawn costs only its encoding."""
        encoded, decoded = lookup("output_format", case.output_format)(result.raw_image, case.output_quality)
        return dataclasses.replace(result, case=case, image=decoded, encoded=encoded,
                                   effective={**result.effective, "output_bytes": len(encoded)})

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
    def text_encoders(self, pipe, precision: str):
        """CLIP and T5 for a case: the pipeline's own, or copies loaded once in another precision."""
        dtypes = lookup("text_encoder_dtype", precision)()
        if dtypes is None:
            return pipe.text_encoder, pipe.text_encoder_2
        key = (precision, str(pipe._execution_device))
        if key not in self._text_encoders:
            self._text_encoders[key] = load_text_encoders(self.base, *dtypes, pipe._execution_device)
        return self._text_encoders[key]

    def _encode_prompt(self, pipe, case: Case, prompt: str, device):
        """CLIP pooled + T5 states (no mask) for the case's prompt encoding; cached per prompt."""
        key = (prompt, case.dtype, case.quantize, case.prompt_encoding, case.text_encoder_dtype)
        if self.cache_encodings and key in self._prompt_cache:
            return self._prompt_cache[key]
        plan = lookup("prompt_encoding", case.prompt_encoding)(prompt, pipe.tokenizer, pipe.tokenizer_2)
        clip, t5 = self.text_encoders(pipe, case.text_encoder_dtype)
        model_dtype = DTYPES[case.dtype]
        clip_ids = torch.tensor([plan.clip_ids], device=device)
        pooled = clip(clip_ids, output_hidden_states=False).pooler_output.to(dtype=clip.dtype, device=device)
        embeds = t5(torch.tensor([plan.t5_ids], device=device), output_hidden_states=False)[0]
        embeds = embeds.to(dtype=t5.dtype, device=device)
        if plan.t5_weights is not None:
            empty = t5(torch.tensor([plan.t5_empty_ids], device=device), output_hidden_states=False)[0]
            embeds = apply_token_weights(embeds, empty.to(dtype=t5.dtype, device=device), plan.t5_weights)
        pooled, embeds = pooled.to(model_dtype), embeds.to(model_dtype)  # no-ops unless precisions differ
        text_ids = torch.zeros(embeds.shape[1], 3).to(device=device, dtype=model_dtype)
        value = (embeds, pooled, text_ids, plan)
        if self.cache_encodings:
            self._prompt_cache[key] = value
        return value

    def _control_source(self, path: str) -> "ControlSource":
        """A control image file, read, hashed and decoded once for all the cases that use it."""
        key = (str(Path(path).resolve()), file_digest(path))
        if key not in self._control_sources:
            if len(self._control_sources) >= CONTROL_SOURCES:
                self._control_sources.pop(next(iter(self._control_sources)))
            self._control_sources[key] = ControlSource(key[1], open_image(path, "control image"))
        return self._control_sources[key]

    def _encode_control(self, pipe, case: Case, sizes, source: "ControlSource", dtype, device):
        knobs = (case.control_exif_transpose, case.control_alpha, case.control_target, case.control_resize,
                 case.control_fit, case.control_auto_resize, case.control_pipeline_resize, case.control_encode,
                 case.latent_dtype, case.latent_padding)
        key = (source.digest, sizes, knobs, case.dtype, case.quantize, case.channels_last)
        if self.cache_encodings and key in self._control_cache:
            return self._control_cache[key]
        handed, encoded, trace = prepare_control(source.image, case, sizes)
        # The pipeline's own preprocessing: same values AND same memory layout, which picks the conv kernels.
        # Its resize step is left out: it floors to 16 (a no-op for diffusers' sizes, wrong for ComfyUI's x8).
        processor = pipe.image_processor
        pixels = processor.normalize(processor.numpy_to_pt(processor.pil_to_numpy([encoded])))
        pixels = pixels.to(device=device, dtype=dtype)
        # FluxKontextPipeline._encode_vae_image, with the shift and scale in the latent dtype
        from diffusers.pipelines.flux.pipeline_flux_kontext import retrieve_latents

        latents = retrieve_latents(pipe.vae.encode(pixels), generator=None, sample_mode="argmax")
        latents = latents.to(lookup("latent_dtype", case.latent_dtype)(dtype))
        latents = (latents - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
        latents = lookup("latent_padding", case.latent_padding)().pad(latents)
        _, channels, lat_h, lat_w = latents.shape
        if lat_h % 2 or lat_w % 2:
            raise ParityError(f'case "{case.name}": the control image is encoded at {encoded.width}x{encoded.height}, '
                              "an odd number of latents; with latent_padding none each side must be a multiple of "
                              "16 px (control_encode resize16, or latent_padding circular as in ComfyUI)")
        packed = pipe._pack_latents(latents, 1, channels, lat_h, lat_w).to(dtype)
        ids = pipe._prepare_latent_image_ids(1, lat_h // 2, lat_w // 2, device, dtype)
        ids[..., 0] = 1
        value = (handed, packed, ids, trace)
        if self.cache_encodings:
            self._control_cache[key] = value
        return value

    def _initial_noise(self, pipe, height, width, dtype, device, generator, *, noise="latent", grid=None,
                       ids_dtype=None):
        """The initial latents (NCHW, the VAE's latent size) and the image ids of their 2x2 patches."""
        channels = pipe.transformer.config.in_channels // 4
        lat_h, lat_w = height // pipe.vae_scale_factor, width // pipe.vae_scale_factor
        latents = lookup("noise", noise)((1, channels, lat_h, lat_w), generator, device, dtype)
        pad_h, pad_w = (grid.pad(latents[:, :1]) if grid is not None else latents).shape[-2:]
        ids = pipe._prepare_latent_image_ids(1, pad_h // 2, pad_w // 2, device, ids_dtype or dtype)
        return latents, ids

    def _scheduler(self, pipe, case: Case, tokens: int, device):
        from diffusers import FlowMatchEulerDiscreteScheduler

        config = dict(pipe.scheduler.config)
        config.update(use_dynamic_shifting=case.dynamic_shifting, shift=case.shift,
                      base_shift=case.base_shift, max_shift=case.max_shift)
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
        mu = None
        if case.dynamic_shifting:
            mu = mu_for_tokens(tokens, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                               case.base_shift, case.max_shift)
        shift = partial(time_shift, mu=mu, shift=case.shift)
        sigmas = lookup("sigma_schedule", case.sigma_schedule)(case.steps, shift)
        kwargs = {"mu": mu} if mu is not None else {}
        if sigmas is None:
            scheduler.set_timesteps(case.steps, device=device, **kwargs)
        else:
            scheduler.set_timesteps(sigmas=sigmas, device=device, **kwargs)
        scheduler.set_begin_index(0)
        return scheduler, scheduler.timesteps, scheduler.sigmas, mu

    def _exact_timestep_hook(self, module, args):
        """time_text_embed(timestep, [guidance,] pooled): the timestep replaced when the case asks for it."""
        if self._exact_timestep is None:
            return None
        return (self._exact_timestep.to(args[0].device), *args[1:])

    def _transformer(self, pipe, hidden, timestep, guidance, pooled, embeds, text_ids, image_ids):
        self.counters["transformer_calls"] += 1
        return pipe.transformer(hidden_states=hidden, timestep=timestep, guidance=guidance,
                                pooled_projections=pooled, encoder_hidden_states=embeds, txt_ids=text_ids,
                                img_ids=image_ids, joint_attention_kwargs={}, return_dict=False)[0]

    def _decode(self, pipe, case: Case, latents) -> Image.Image:
        latents = latents / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        image = pipe.vae.decode(latents.to(pipe.vae.dtype), return_dict=False)[0]
        return lookup("output_uint8", case.output_uint8)(image)


@dataclass(frozen=True)
class ControlSource:
    """A decoded control image and the digest of its file's bytes."""

    digest: str
    image: Image.Image

    def size(self, exif_transposed: bool) -> tuple[int, int]:
        """Its size, turned a quarter when an EXIF transpose will turn it."""
        width, height = self.image.size
        return (height, width) if exif_transposed and exif_orientation(self.image) in (5, 6, 7, 8) else (width, height)
