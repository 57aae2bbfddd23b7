"""Build the demo model from nothing: ``python -m parity.demo.build --out DIR``.

Steps (each seeded; the same machine and thread count give the same weights, see the end):
 1. tokenizers and seeded random text encoders (frozen);
 2. the VAE, trained on scenes; its scaling/shift factors measured; held-out PSNR;
 3. the transformer, trained with flow matching on pre-encoded (control, prompt) -> target pairs;
 4. the model saved with ``save_pretrained`` (safetensors, float32) to DIR/shapes-kontext;
 5. the zxq-style LoRA (PEFT) trained on the same objective; float32 checkpoints at two steps in
    AI Toolkit's key format, DIR/lora/zxq_step{A,B}.safetensors;
 6. measurements on held-out scenes with the saved model loaded by ``from_pretrained``:
    edits per type, LPIPS to target, LoRA effect per multiplier, seconds per 128 px case;
 7. the run definitions and control images for the genuine AI Toolkit previews (DIR/aitk/).
DIR/report.json holds every figure, DIR/held-out-edits.png shows held-out edits.

Two torch threads by default, for a 2-core machine. On an idle machine they make a training step
faster than one thread, as long as OpenMP's threads spin while they wait (its default): side by side,
a base step 0.054 s against 0.081 s, a VAE step 0.11 s against 0.18 s; in the builds, 0.070 s against
0.097 s and 0.131 s against 0.220 s (the 1-thread build shared the machine part of the time). When
another process holds a core, spinning threads make every step many times slower (measured ~30x earlier
in this project): ``build`` says so in its log when the load average shows a busy machine, and
``--threads 1`` is then the faster choice.
The thread count and the CPU's kernels change the order of float sums, so they change the weights
(another CPU builds other weights, with figures as good: README, "Demo model"); the committed model is
the 2-thread build.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

# Sizes of the build: every held-out figure improved from 5000 to 12000 base steps (README, "Demo model").
# VAE scratch runs: 27.2 dB held-out at 2000 steps, 28.0-29.1 at 3000 (by thread count); 4000 for a margin on the bar.
VAE_SEED, VAE_STEPS, VAE_BATCH = 1, 4000, 8
BASE_SEED, BASE_PAIRS, BASE_STEPS, BASE_BATCH, BASE_LR = 2, 9000, 12000, 12, 1e-3
# Edit types of the base pairs: recolour and remove (local edits that need the shape named in the
# prompt found in the image) lagged far behind background and frame in scratch runs at equal shares.
KIND_WEIGHTS = {"recolour": 0.3, "background": 0.2, "frame": 0.2, "remove": 0.3}
NEUTRAL_PREFIX_EVERY = 5  # one base pair in 5 gets a "<word> style, " prefix that changes nothing
LORA_SEED, LORA_PAIRS, LORA_STEPS, LORA_BATCH, LORA_LR = 3, 1200, 300, 8, 1e-3
# A: the style half there; B: fully there. Scratch runs, LPIPS(base, LoRA) at multiplier 1 by step: at lr 2e-3
# 0.16 (20), 0.76 (40); at 1e-3 0.08 (30), 0.33 (40), 0.62 (60), 0.67 (300): the slower rate gives A a partial style.
LORA_CHECKPOINTS = (40, 300)
# One LoRA pair in 4 has no trigger and a plain target, meant to tie the style to the trigger. It barely does: the
# rank-4 adapter on every block still styles plain prompts (committed build: LPIPS 0.63, with the trigger 0.69).
LORA_PLAIN_EVERY = 4
# Seed ranges never overlap: training pairs, LoRA pairs, factor measurement, held-out evaluation.
BASE_SEEDS = range(0, BASE_PAIRS)
LORA_SEEDS = range(10_000_000, 10_000_000 + LORA_PAIRS)
FACTOR_SEEDS = range(20_000_000, 20_000_200)
HELD_OUT = 900_000_000
EVAL_PER_KIND, EVAL_LORA = 25, 16
MODEL_DIRNAME = "shapes-kontext"
DEFAULT_THREADS = 2


def _log_to(path: Path):
    t0 = time.perf_counter()
    fh = path.open("a")  # a resumed build appends to the log of the one it resumes

    def log(msg: str) -> None:
        line = f"[{time.perf_counter() - t0:7.1f} s] {msg}"
        print(line, flush=True)
        fh.write(line + "\n")
        fh.flush()

    return log


def busy_machine_warning(threads: int, load_average: float) -> str | None:
    """A warning when several spinning OpenMP threads would share their cores with another busy process."""
    if threads > 1 and load_average > 1.0:
        return (f"warning: the machine is busy (load average {load_average:.1f}); {threads} spinning OpenMP threads "
                "slow down badly when another process holds a core: --threads 1 may be faster (and gives other weights)")
    return None


def base_kind(seed: int) -> str:
    """The edit type of base pair ``seed`` (seeded by the pair's seed, weighted by KIND_WEIGHTS)."""
    import numpy as np

    kinds = list(KIND_WEIGHTS)
    return str(np.random.default_rng([BASE_SEED, seed]).choice(kinds, p=[KIND_WEIGHTS[k] for k in kinds]))


def build(out: Path, threads: int = DEFAULT_THREADS, resume: bool = False) -> dict:
    import torch

    from . import components, evaluate, flow, lora, runs, scenes, sheet, vae as vae_mod

    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    log = _log_to(out / "build.log")
    warning = busy_machine_warning(threads, os.getloadavg()[0])
    if warning:
        log(warning)
    t_start = time.perf_counter()
    report: dict = {"threads": threads, "timings_s": {}}

    def timed(name, t0):
        report["timings_s"][name] = round(time.perf_counter() - t0, 1)

    # 1. text
    clip_tok, t5_tok = components.make_clip_tokenizer(), components.make_t5_tokenizer()
    text = (clip_tok, t5_tok, *components.make_text_encoders(clip_tok, t5_tok))

    # 2. VAE (with --resume, the one a stopped build saved is reused)
    t0 = time.perf_counter()
    vae = components.make_vae(seed=VAE_SEED)
    stage = out / "_stages"
    stage.mkdir(exist_ok=True)
    if resume and (stage / "vae.safetensors").exists():
        from safetensors.torch import load_file

        vae.load_state_dict(load_file(str(stage / "vae.safetensors")))
        vae.eval()
        report["vae_training"] = json.loads((stage / "vae_training.json").read_text())
        log("VAE reused from a stopped build")
    else:
        report["vae_training"] = vae_mod.train_vae(vae, seed=VAE_SEED, steps=VAE_STEPS, batch=VAE_BATCH, log=log)
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(stage / "vae.safetensors"))
        (stage / "vae_training.json").write_text(json.dumps(report["vae_training"]))
    scale, shift = vae_mod.measure_factors(vae, FACTOR_SEEDS)
    vae.register_to_config(scaling_factor=scale, shift_factor=shift)
    report["vae_factors"] = {"scaling_factor": scale, "shift_factor": shift}
    report["vae_psnr_held_out"] = vae_mod.held_out_psnr(vae, range(HELD_OUT, HELD_OUT + 100))
    log(f"VAE factors scale {scale} shift {shift}; held-out PSNR {report['vae_psnr_held_out']}")
    timed("vae", t0)

    # 3. transformer (with --resume, a base model a stopped build saved is reused)
    t0 = time.perf_counter()
    model_dir = out / MODEL_DIRNAME
    if resume and (stage / "transformer_training.json").exists():
        pipe = components.load_pipeline(model_dir)
        transformer = pipe.transformer
        report.update(json.loads((stage / "transformer_training.json").read_text()))
        log("base model reused from a stopped build")
    else:
        pipe = _train_base(vae, text, report, log)
        transformer = pipe.transformer
        # 4. save the base model
        if model_dir.exists():
            shutil.rmtree(model_dir)
        pipe.save_pretrained(model_dir, safe_serialization=True)
        (stage / "transformer_training.json").write_text(json.dumps(
            {k: report[k] for k in ("transformer_training", "text_compression_max_error", "zero_weight_rows")}))
    timed("transformer", t0)

    # 5. LoRA (with --resume, the checkpoints a stopped build saved are reused)
    t0 = time.perf_counter()
    lora_dir = out / "lora"
    lora_files = {step: _checkpoint(lora_dir, step) for step in LORA_CHECKPOINTS}
    if resume and (stage / "lora_training.json").exists() and all(p.is_file() for p in lora_files.values()):
        report["lora_training"] = json.loads((stage / "lora_training.json").read_text())
        log("LoRA checkpoints reused from a stopped build")
    else:
        lora_files = _train_lora(pipe, transformer, lora_dir, report, log)
    timed("lora", t0)

    # 6. measurements on the saved model
    t0 = time.perf_counter()
    pipe = components.load_pipeline(model_dir)
    pipe.set_progress_bar_config(disable=True)
    held = {kind: [HELD_OUT + 1000 * (i + 1) + j for j in range(EVAL_PER_KIND)] for i, kind in enumerate(scenes.EDITS)}
    report["edits"] = evaluate.edits_report(pipe, held)
    for kind, r in report["edits"].items():
        log(f"{kind}: done {r['done_share']:.0%}, nearest named {r['nearest_named_share']}, "
            f"LPIPS to target mean {r['lpips_to_target_mean']} max {r['lpips_to_target_max']}")
    lora_seeds = [HELD_OUT + 9000 + j for j in range(EVAL_LORA)]
    report["lora_effect"] = {f"step{s}": evaluate.lora_report(pipe, p, lora_seeds) for s, p in lora_files.items()}
    for name, r in report["lora_effect"].items():
        log(f"LoRA {name}: {r['mean']}")
    report["time_per_case"] = evaluate.time_per_case(pipe)
    log(f"time per case: {report['time_per_case']}")
    sheet.held_out_sheet(pipe, held, lora_files[max(lora_files)], out / "held-out-edits.png")
    timed("evaluation", t0)

    # 7. genuine-preview inputs
    report["aitk_runs_yaml"] = str(runs.write_runs(out / "aitk"))
    report["files"] = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*.safetensors"))}
    report["timings_s"]["total"] = round(time.perf_counter() - t_start, 1)
    (model_dir / "demo_model_info.json").write_text(json.dumps(_model_info(report, scale, shift), indent=1))
    (out / "report.json").write_text(json.dumps(report, indent=1))
    log(f"done in {report['timings_s']['total']} s")
    return report


def _train_base(vae, text, report: dict, log):
    """Step 3: the transformer trained with flow matching on the base pairs; returns the pipeline."""
    from . import components, flow, scenes

    transformer = components.make_transformer(seed=BASE_SEED)
    pipe = components.make_pipeline(vae, transformer, text)
    base_pairs = [scenes.example(s, kind=base_kind(s), neutral_prefix=s % NEUTRAL_PREFIX_EVERY == 0)
                  for s in BASE_SEEDS]
    data = flow.TrainingData(pipe, base_pairs, log=log)
    report["transformer_training"] = flow.train(
        transformer, data, params=transformer.parameters(), steps=BASE_STEPS, batch=BASE_BATCH, lr=BASE_LR,
        seed=BASE_SEED, ema_decay=0.998, log=log)
    report["text_compression_max_error"] = flow.compression_error(transformer, data, pipe)
    report["zero_weight_rows"] = components.zero_rows(transformer)
    log(f"text compression max error {report['text_compression_max_error']:.2e}; "
        f"all-zero weight rows: {report['zero_weight_rows'] or 'none'}")

    return pipe


def _checkpoint(lora_dir: Path, step: int) -> Path:
    return lora_dir / f"zxq_step{step}.safetensors"


def _train_lora(pipe, transformer, lora_dir: Path, report: dict, log) -> dict:
    """Step 5: the zxq-style LoRA (PEFT) on the base; returns {step: checkpoint file}."""
    from . import flow, lora, scenes

    lora_params = lora.add_lora(transformer, seed=LORA_SEED)
    lora_pairs = [scenes.example(s, styled=s % LORA_PLAIN_EVERY != 0) for s in LORA_SEEDS]
    data = flow.TrainingData(pipe, lora_pairs, log=log)
    lora_files = {}

    def save_checkpoint(step: int) -> None:
        path = _checkpoint(lora_dir, step)
        lora.save_aitk_lora(path, lora.aitk_state_dict(transformer), step=step, name="zxq")
        lora_files[step] = path
        log(f"LoRA checkpoint {path.name}")

    report["lora_training"] = flow.train(
        transformer, data, params=lora_params, steps=LORA_STEPS, batch=LORA_BATCH, lr=LORA_LR, seed=LORA_SEED,
        checkpoints=LORA_CHECKPOINTS, on_checkpoint=save_checkpoint, log=log)
    (lora_dir.parent / "_stages" / "lora_training.json").write_text(json.dumps(report["lora_training"]))
    return lora_files


def _model_info(report: dict, scale: float, shift: float) -> dict:
    from . import components

    return {
        "what": "kontext-parity demo model: a tiny FLUX.1-Kontext trained on a synthetic shapes edit task",
        "build": "python -m parity.demo.build --out DIR (see parity/demo/build.py)",
        "transformer_kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in components.TRANSFORMER_KW.items()},
        "vae_kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in components.VAE_KW.items()}
        | {"scaling_factor": scale, "shift_factor": shift},
        "text_encoders": "seeded random, frozen (seed %d); three T5 heads attend to a fixed neighbour" % components.TEXT_SEED,
        "vae_psnr_held_out": report["vae_psnr_held_out"],
        "edits": {k: {m: v for m, v in r.items() if m != "rows"} for k, r in report.get("edits", {}).items()},
        "seconds_per_128px_8_step_case_1_thread": report.get("time_per_case", {}).get("median_s"),
    }


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help=f"torch threads (default {DEFAULT_THREADS}, the committed build's; 1 on a machine "
                             "where other processes are busy)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse what a stopped build finished in DIR (the VAE, the base model, the LoRA checkpoints)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, not {args.threads}")
    build(args.out, args.threads, args.resume)


if __name__ == "__main__":
    main()
