"""Training the tiny VAE on the scenes, and measuring its latent scaling_factor / shift_factor.

Why train it at all: a random VAE decodes anything to coloured noise, so no edit could ever be seen.
Why these choices:
- Data: the scenes the transformer will edit (controls and targets, frames included) and their
  zxq-style versions (the LoRA's outputs must be decodable too), generated on the fly from a seeded
  stream, so the VAE never sees the same image twice and cannot overfit.
- 64 px crops at offsets that are multiples of 8 (the latent grid, and the zxq stripe period): a
  fully convolutional VAE learns the same thing from crops at a quarter of the cost of 128 px scenes.
- Loss: L1 + MSE on pixels in [-1, 1], decoding the posterior mode plus Gaussian noise of 10% of the
  latents' spread, so the decoder tolerates the small latent errors an 8-step sampler leaves. The
  posterior's variance is not trained (the pipeline only ever uses the mode).
- An auxiliary loss asks latent channels 0-2 to also hold the image average-pooled 8x. Why: the
  scenes are flat colours, and every GroupNorm removes each image's mean; at first the decoder
  learns to ignore the latents and the encoder's gradient vanishes (measured: a flat-colour image
  was not reproduced after 200 steps). The direct target gives the encoder a gradient from step
  one and the latents a smooth colour layout, which also suits the transformer. With it the VAE
  passes 28 dB in ~2500 steps; without it, it was at 13-17 dB after 300-1000 steps.
- GroupNorm with a single group (``norm_num_groups=1``): it removes only one mean and scale per
  image, so colour survives as the pattern across channels; 4 or 16 groups learned slower here.
- The pipeline encodes with the posterior mode (``argmax``) and normalises with
  ``(z - shift_factor) * scaling_factor``: the two factors are measured here (mean and 1/std of the
  modes over training scenes) so the transformer sees latents of unit variance, as in Flux.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from . import scenes

CROP = 64


def to_tensor(images) -> torch.Tensor:
    """PIL RGB images -> float32 N x 3 x H x W in [-1, 1], as VaeImageProcessor.preprocess gives."""
    arr = np.stack([np.asarray(im.convert("RGB"), np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """N x 3 x H x W in [-1, 1] -> N x H x W x 3 uint8, rounding as the pipeline's postprocess does."""
    x = (x.detach().float() / 2 + 0.5).clamp(0, 1)
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _training_image(rng: np.random.Generator):
    """A control or target scene (a third of them zxq-styled), cropped to 64 px on the 8 px grid."""
    ex = scenes.example(int(rng.integers(2**31)))
    img = ex.target if rng.random() < 0.5 else ex.control
    if rng.random() < 1 / 3:
        img = scenes.zxq_style(img)
    w, h = img.size
    x0 = 8 * int(rng.integers((w - CROP) // 8 + 1))
    y0 = 8 * int(rng.integers((h - CROP) // 8 + 1))
    return img.crop((x0, y0, x0 + CROP, y0 + CROP))


def train_vae(vae, *, seed: int, steps: int, batch: int = 8, lr: float = 2e-3, latent_noise: float = 0.1,
              colour_weight: float = 1.0, log=print) -> dict:
    """AdamW with warm-up and cosine decay; returns the loss history (every 100 steps)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=1e-4)
    warm = 50
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    history, t0, running = [], time.perf_counter(), 0.0
    for step in range(steps):
        x = to_tensor([_training_image(rng) for _ in range(batch)])
        z = vae.encode(x).latent_dist.mode()
        rec = vae.decode(z + latent_noise * z.detach().std() * torch.randn_like(z)).sample
        colour = (z[:, :3] - torch.nn.functional.avg_pool2d(x, 8)).square().mean()
        loss = (rec - x).abs().mean() + (rec - x).square().mean() + colour_weight * colour
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        running += loss.item()
        if (step + 1) % 100 == 0:
            history.append({"step": step + 1, "loss": round(running / 100, 5), "s": round(time.perf_counter() - t0, 1)})
            log(f"vae step {step + 1}/{steps} loss {running / 100:.4f} ({time.perf_counter() - t0:.0f} s)")
            running = 0.0
    vae.eval()
    return {"history": history, "seconds": round(time.perf_counter() - t0, 1)}


@torch.no_grad()
def measure_factors(vae, seeds) -> tuple[float, float]:
    """(scaling_factor, shift_factor): 1/std and mean of the posterior modes over these scenes' images."""
    zs = []
    for seed in seeds:
        ex = scenes.example(seed)
        x = to_tensor([ex.control, ex.target, scenes.zxq_style(ex.target)])
        zs.append(vae.encode(x).latent_dist.mode().flatten())
    z = torch.cat(zs)
    shift = float(z.mean())
    return round(1.0 / float((z - shift).std()), 4), round(shift, 4)


@torch.no_grad()
def held_out_psnr(vae, seeds) -> dict:
    """Mean PSNR (dB, uint8 pixels) of encode(mode) -> decode over held-out scenes, per image kind."""
    out: dict[str, list[float]] = {"scenes": [], "targets": [], "zxq_style": []}
    for seed in seeds:
        ex = scenes.example(seed)
        for kind, img in (("scenes", ex.control), ("targets", ex.target), ("zxq_style", scenes.zxq_style(ex.target))):
            x = to_tensor([img])
            rec = to_uint8(vae.decode(vae.encode(x).latent_dist.mode()).sample)[0].astype(np.float64)
            mse = np.mean((rec - np.asarray(img, np.float64)) ** 2)
            out[kind].append(10 * math.log10(255.0**2 / max(mse, 1e-10)))
    return {k: round(float(np.mean(v)), 2) for k, v in out.items()} | {"n": len(seeds)}
