"""Flow-matching training of the Kontext transformer (and of its LoRA) on the edit task.

The model is trained on exactly what ``FluxKontextPipeline`` will feed it, built with the pipeline's
own helpers so nothing is re-implemented that could drift from it:
- control and target latents from the VAE's posterior mode, normalised ``(z - shift) * scale``
  (``_encode_vae_image``), packed 2x2 into 64-channel tokens (``_pack_latents``);
- position ids from ``_prepare_latent_image_ids``: noise tokens (0, y, x), control tokens (1, y, x),
  concatenated after the noise tokens; text ids all zero;
- text from ``encode_prompt``: T5 padded to 512 tokens and the CLIP pooled vector;
- timestep = sigma (the pipeline passes t / 1000), a guidance value into the guidance embedding.
The objective is rectified flow as the FlowMatchEuler scheduler integrates it: x_t = (1 - s) x0 + s e,
target velocity e - x0. Sigmas are drawn the way the sampler visits them: half from a uniform draw
through the same resolution-dependent exponential shift (mu from the token count), half exactly the
8-step schedule the demo and the previews use, so the few points that matter most are seen often.
Guidance is drawn uniformly from [1, 5]: the model has no distilled guidance to learn (there is no
teacher), so it learns to give the same edit at any guidance a preview may use.

Speed: of the 512 T5 tokens a prompt is ~10 words and ~500 padding tokens, whose encodings are
identical to within ~1e-3 (T5's relative position buckets saturate). Text tokens all have position
id 0, so identical tokens are processed identically at every layer and, as attention keys, act like
one key whose logit is raised by log(count). Training therefore keeps the first ``KEEP_TOKENS``
encodings verbatim and replaces the rest by their mean with an additive attention bias of
log(count) (``attention_mask`` through ``joint_attention_kwargs``): the same function to ~1e-4
(``compression_error`` checks it at build time), ~4x cheaper than 640-token sequences. Inference
always runs the real pipeline with all 512 tokens.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from .components import SCHEDULER_KW

SEQ_LEN = 512  # AI Toolkit and the pipeline pad T5 to 512 tokens
KEEP_TOKENS = 24  # verbatim T5 encodings (instructions are <= 14 tokens); the rest become one mean token
GUIDANCE_RANGE = (1.0, 5.0)
SCHEDULE_STEPS = 8


def shift_mu(n_tokens: int) -> float:
    """The pipeline's calculate_shift with the Kontext scheduler's values."""
    c = SCHEDULER_KW
    m = (c["max_shift"] - c["base_shift"]) / (c["max_image_seq_len"] - c["base_image_seq_len"])
    return n_tokens * m + c["base_shift"] - m * c["base_image_seq_len"]


def shifted(u: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """The scheduler's exponential time shift of sigmas u in (0, 1]."""
    e = math.exp(shift_mu(n_tokens))
    return e / (e + (1.0 / u - 1.0))


def sample_sigmas(batch: int, n_tokens: int, generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(batch, generator=generator).clamp(1e-3, 1.0)
    grid = torch.linspace(1.0, 1.0 / SCHEDULE_STEPS, SCHEDULE_STEPS)
    on_grid = grid[torch.randint(SCHEDULE_STEPS, (batch,), generator=generator)]
    pick = torch.rand(batch, generator=generator) < 0.5
    return shifted(torch.where(pick, on_grid, u), n_tokens)


@dataclass
class Pairs:
    """Encoded (control, target, prompt) triples of one size: latents N x 16 x h x w, prompt indices N."""

    control: torch.Tensor
    target: torch.Tensor
    prompt: torch.Tensor


class TrainingData:
    """Examples encoded once: latents bucketed by size (a batch is one size), prompts encoded once each."""

    def __init__(self, pipe, examples, *, log=print):
        t0 = time.perf_counter()
        self.prompts = sorted({ex.prompt for ex in examples})
        index = {p: i for i, p in enumerate(self.prompts)}
        with torch.no_grad():
            embeds, pooled = [], []
            for i in range(0, len(self.prompts), 64):
                pe, pp, _ = pipe.encode_prompt(self.prompts[i:i + 64], prompt_2=None, max_sequence_length=SEQ_LEN)
                embeds.append(pe)
                pooled.append(pp)
        self.prompt_embeds, self.pooled = compress_text(torch.cat(embeds)), torch.cat(pooled)
        by_size: dict[tuple[int, int], list] = {}
        for ex in examples:
            by_size.setdefault(ex.control.size, []).append(ex)
        self.buckets: dict[tuple[int, int], Pairs] = {}
        from .vae import to_tensor

        with torch.no_grad():
            for size, items in sorted(by_size.items()):
                ctrl, tgt = [], []
                for i in range(0, len(items), 32):
                    chunk = items[i:i + 32]
                    ctrl.append(pipe._encode_vae_image(to_tensor([e.control for e in chunk]), None))
                    tgt.append(pipe._encode_vae_image(to_tensor([e.target for e in chunk]), None))
                self.buckets[size] = Pairs(torch.cat(ctrl), torch.cat(tgt),
                                           torch.tensor([index[e.prompt] for e in items]))
        self.sizes = list(self.buckets)
        # a batch's size is drawn in proportion to how many pairs have it
        self.weights = np.array([len(self.buckets[s].prompt) for s in self.sizes], np.float64)
        self.weights /= self.weights.sum()
        log(f"encoded {len(examples)} pairs in {len(self.sizes)} sizes, {len(self.prompts)} prompts "
            f"({time.perf_counter() - t0:.0f} s)")

    def batch(self, rng: np.random.Generator, n: int):
        pairs = self.buckets[self.sizes[rng.choice(len(self.sizes), p=self.weights)]]
        idx = torch.from_numpy(rng.choice(len(pairs.prompt), size=n, replace=len(pairs.prompt) < n))
        p = pairs.prompt[idx]
        return pairs.control[idx], pairs.target[idx], self.prompt_embeds[p], self.pooled[p]


def compress_text(prompt_embeds: torch.Tensor) -> torch.Tensor:
    """N x 512 x D -> N x (KEEP_TOKENS + 1) x D: the first tokens as they are, then the mean of the rest."""
    return torch.cat([prompt_embeds[:, :KEEP_TOKENS], prompt_embeds[:, KEEP_TOKENS:].mean(1, keepdim=True)], 1)


def multiplicity_bias(n_text: int, n_image: int) -> torch.Tensor:
    """Additive attention bias over keys (text first, then image): log(count) on the merged token."""
    bias = torch.zeros(1, 1, 1, n_text + n_image)
    bias[..., n_text - 1] = math.log(SEQ_LEN - KEEP_TOKENS)
    return bias


def predict(transformer, noisy_packed, control_packed, h2: int, w2: int, sigma, guidance, prompt_embeds, pooled,
            compressed: bool) -> torch.Tensor:
    """The velocity for the noise tokens, with the pipeline's ids (noise (0, y, x), control (1, y, x))."""
    from diffusers import FluxKontextPipeline as P

    b, n = noisy_packed.shape[:2]
    ids = P._prepare_latent_image_ids(b, h2, w2, "cpu", torch.float32)
    control_ids = ids.clone()
    control_ids[..., 0] = 1
    n_text = prompt_embeds.shape[1]
    kwargs = {"attention_mask": multiplicity_bias(n_text, 2 * n)} if compressed else None
    return transformer(
        hidden_states=torch.cat([noisy_packed, control_packed], dim=1), timestep=sigma, guidance=guidance,
        pooled_projections=pooled, encoder_hidden_states=prompt_embeds, txt_ids=torch.zeros(n_text, 3),
        img_ids=torch.cat([ids, control_ids]), joint_attention_kwargs=kwargs, return_dict=False)[0][:, :n]


@torch.no_grad()
def compression_error(transformer, data: "TrainingData", pipe) -> float:
    """Max |difference| of the prediction with compressed vs full 512-token text on one batch."""
    from diffusers import FluxKontextPipeline as P

    control, target, _, pooled = data.batch(np.random.default_rng(0), 2)
    prompts = [data.prompts[0], data.prompts[-1]]
    full, pooled, _ = pipe.encode_prompt(prompts, prompt_2=None, max_sequence_length=SEQ_LEN)
    b, c, h, w = target.shape
    args = (P._pack_latents(target, b, c, h, w), P._pack_latents(control, b, c, h, w), h // 2, w // 2,
            torch.tensor([0.7, 0.3]), torch.tensor([4.0, 2.5]))
    a = predict(transformer, *args, full, pooled, compressed=False)
    m = predict(transformer, *args, compress_text(full), pooled, compressed=True)
    return float((a - m).abs().max())


def flow_loss(transformer, control, target, prompt_embeds, pooled, generator) -> torch.Tensor:
    """One rectified-flow loss on a batch (text compressed as above), with the pipeline's packing."""
    from diffusers import FluxKontextPipeline as P

    b, c, h, w = target.shape
    noise = torch.randn(target.shape, generator=generator)
    n_tokens = (h // 2) * (w // 2)
    sigma = sample_sigmas(b, n_tokens, generator)
    s = sigma.view(b, 1, 1, 1)
    noisy = (1 - s) * target + s * noise
    guidance = torch.empty(b).uniform_(*GUIDANCE_RANGE, generator=generator)
    pred = predict(transformer, P._pack_latents(noisy, b, c, h, w), P._pack_latents(control, b, c, h, w),
                   h // 2, w // 2, sigma, guidance, prompt_embeds, pooled, compressed=True)
    return (pred - P._pack_latents(noise - target, b, c, h, w)).square().mean()


def train(transformer, data: TrainingData, *, params, steps: int, batch: int, lr: float, seed: int,
          ema_decay: float | None = None, checkpoints=(), on_checkpoint=None, log=print) -> dict:
    """AdamW on ``params`` with warm-up and cosine decay to 10%; optional EMA copied in at the end.

    on_checkpoint(step) is called after each step listed in ``checkpoints`` (the LoRA's two saves).
    """
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, i / steps)))))
    ema = [p.detach().clone() for p in params] if ema_decay else None
    transformer.train()
    history, running, t0 = [], 0.0, time.perf_counter()
    for step in range(1, steps + 1):
        loss = flow_loss(transformer, *data.batch(rng, batch), gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if ema is not None:
            d = min(ema_decay, (1 + step) / (10 + step))  # short memory early, when weights move fast
            with torch.no_grad():
                for e, p in zip(ema, params):
                    e.lerp_(p.detach(), 1 - d)
        running += loss.item()
        if step % 50 == 0:
            history.append({"step": step, "loss": round(running / 50, 5), "s": round(time.perf_counter() - t0, 1)})
            log(f"step {step}/{steps} loss {running / 50:.4f} ({time.perf_counter() - t0:.0f} s)")
            running = 0.0
        if step in checkpoints and on_checkpoint is not None:
            on_checkpoint(step)
    if ema is not None:
        with torch.no_grad():
            for e, p in zip(ema, params):
                p.copy_(e)
    transformer.eval()
    return {"history": history, "seconds": round(time.perf_counter() - t0, 1)}
