"""An AI Toolkit run folder as previews to reproduce: load_run() and preview_cases().

Each preview becomes the `aitk-preview` Case: the arguments AI Toolkit passed to the
pipeline (prompts.py), the checkpoint it sampled with (previews.py), the control file found
on this machine (controls.py), and the LoRA mode AI Toolkit used for the whole batch:
generate_images merges the network into the base weights (float32 sum, written back in the
base dtype) only when every prompt of the batch has the same multiplier and the network can
merge (not quantized, not layer-offloaded); otherwise each Linear gets a float32 side branch.
A preview that cannot be reproduced (random seed, missing checkpoint, unmodelled features)
is kept with reproducible=False and the reasons in its notes, and gets no Case.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..case import DTYPES as CASE_DTYPES
from ..case import Case
from ..errors import ParityError
from ..imaging import open_image
from ..metrics.jpeg import estimate_quality
from ..profiles import load_profile
from .config import JobConfig, load_job_config
from .controls import resolve_control
from .previews import FORMATS, PreviewFile, discover, looks_like_samples, pair_checkpoint
from .prompts import PromptArgs, sample_args

PROFILE = "aitk-preview"
# AI Toolkit's get_torch_dtype spellings of each Case dtype -> that dtype.
SPELLINGS = {"bf16": ("bf16", "bfloat16"), "fp16": ("fp16", "half", "float16"),
             "fp32": ("fp32", "float", "single", "float32")}
DTYPES = {spelling: dtype for dtype in CASE_DTYPES for spelling in SPELLINGS[dtype]}
LORA_TYPES = ("lora", "locon")  # plain low-rank A/B modules on Linear layers
MAX_CASE_SEED = next(f for f in dataclasses.fields(Case) if f.name == "seed").metadata["range"][1]
UNPAIRED = ("error", "skip")


@dataclass(frozen=True)
class Preview:
    """One preview file and everything needed to draw it again."""

    name: str  # <run>/step<N>/p<i>
    path: str
    step: int
    prompt_index: int
    ms: int
    checkpoint: str | None  # None: the base model alone (step 0) or no file found
    effective: dict  # arguments AI Toolkit passed, named as the sidecar `effective` block
    lora_mode: str | None  # merged_fp32 | branch for the batch; None without a network
    lora_scale: float
    control_image: str | None  # the file found on this machine
    output_format: str
    output_quality: int | None
    reproducible: bool
    notes: tuple[str, ...] = ()


@dataclass
class AitkRun:
    name: str
    run_dir: str
    samples_dir: str
    config: JobConfig
    dtype: str
    quantize: str
    previews: list[Preview]
    ignored: list[str] = field(default_factory=list)  # files in samples/ that are not previews
    notes: list[str] = field(default_factory=list)


def load_run(path: str | Path, *, config: str | Path | None = None, ctrl_root: str | Path | None = None,
             unpaired: str = "error") -> AitkRun:
    """Read a run folder (or a bare samples/ folder with `config`) into previews.

    The LoRA checkpoints are looked for in the run folder (the config's folder for a bare samples/
    folder). unpaired: "error" (default) fails on a preview with no checkpoint; "skip" keeps it
    with reproducible=False.
    """
    if unpaired not in UNPAIRED:
        raise ParityError(f"unpaired must be one of {', '.join(UNPAIRED)}, not {unpaired!r}")
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise ParityError("not a folder (expected an AI Toolkit run folder or its samples/ folder)", source=path)
    if (path / "samples").is_dir():
        run_dir, samples_dir = path, path / "samples"
        config_path = Path(config).expanduser().resolve() if config else run_dir / "config.yaml"
    elif looks_like_samples(path):
        samples_dir = path
        config_path = Path(config).expanduser().resolve() if config else path.parent / "config.yaml"
        run_dir = config_path.parent
    else:
        raise ParityError("holds neither samples/ nor preview files ({ms}__{step:09d}_{i}.jpg)", source=path)
    if not config_path.is_file():
        raise ParityError(f"no job config at {config_path}; pass config=<path to the run's config.yaml>",
                          source=path)
    if ctrl_root and not Path(ctrl_root).expanduser().is_dir():
        raise ParityError("ctrl_root is not a folder", source=ctrl_root)
    job = load_job_config(config_path, run_name=run_dir.name)
    files, ignored = discover(samples_dir)
    if not files:
        raise ParityError("no preview files ({ms}__{step:09d}_{i}.jpg) in the samples folder", source=samples_dir)
    dtype = DTYPES.get(job.train_dtype)
    if dtype is None:
        raise ParityError(f"train.dtype {job.train_dtype!r} is not one kontext-parity runs "
                          f"(one of {', '.join(DTYPES)})", source=config_path)
    builder = _Builder(job, dtype, run_dir, Path(ctrl_root).expanduser() if ctrl_root else None, files)
    previews = [builder.preview(f) for f in files]
    builder.raise_problems(unpaired, samples_dir)
    run_notes = list(job.notes) + [f"ignored in samples/: {name}" for name in ignored]
    return AitkRun(name=job.process_name, run_dir=str(run_dir), samples_dir=str(samples_dir), config=job,
                   dtype=dtype, quantize=builder.quantize, previews=previews, ignored=ignored, notes=run_notes)


class _Builder:
    """Turns preview files into Previews; collects problems so one error lists them all."""

    def __init__(self, job: JobConfig, dtype: str, run_dir: Path, ctrl_root: Path | None, files: list[PreviewFile]):
        self.job, self.dtype, self.checkpoints, self.ctrl_root = job, dtype, run_dir, ctrl_root
        self.roots = list(dict.fromkeys([run_dir, run_dir.parent]))
        settings = [job.sample] + ([job.first_sample] if job.first_sample else [])
        self.args = {s.key: sample_args(s, job.trigger_word, source=job.path) for s in settings}
        self.modes = {s.key: _batch_lora_mode(job, self.args[s.key]) for s in settings}
        self.quantize, self.run_blockers = _run_blockers(job)
        self.latest: dict[tuple[int, int], int] = {}
        for f in files:  # several files for one (step, index): a rerun; the newest matches the checkpoint
            self.latest[(f.step, f.index)] = max(self.latest.get((f.step, f.index), 0), f.ms)
        self.first_lora_step = min((f.step for f in files if f.step > 0), default=0)
        self.missing_controls: list[str] = []
        self.unresolved_controls = False  # a ctrl_img that ctrl_root could help find
        self.unpaired: list[str] = []

    def preview(self, f: PreviewFile) -> Preview:
        job = self.job
        blockers, notes = list(self.run_blockers), []
        name = f"{job.process_name}/step{f.step}/p{f.index}"
        if f.ms != self.latest[(f.step, f.index)]:
            name += f"~{f.ms}"
            blockers.append("superseded: a newer preview of this step and prompt exists (a rerun overwrote "
                            "the checkpoint)")
        settings = job.sample
        if f.step == 0 and job.first_sample is not None:
            if job.skip_first_sample:
                settings = job.first_sample
            else:
                blockers.append("step 0 holds both first_sample and baseline previews under the same names")
        batch = self.args[settings.key]
        output_format, quality = FORMATS[f.ext]
        if output_format == "jpeg":  # the quality the file was written with, not an assumed one
            quality = _jpeg_quality(f.path) or quality
        if f.ext != settings.ext and {f.ext, settings.ext} != {"jpg", "jpeg"}:
            notes.append(f"file is .{f.ext} but sample.format is {settings.ext}")
        if f.index >= len(batch):
            blockers.append(f"prompt index {f.index} but {settings.key} has {len(batch)} prompts (config changed?)")
            return Preview(name, str(f.path), f.step, f.index, f.ms, None, {}, None, 1.0, None, output_format,
                           quality, False, tuple(blockers + notes))
        args = batch[f.index]
        notes += args.notes
        if args.seed is None:
            blockers.append("the seed is unknowable (random)")
        elif args.seed % 2**64 > MAX_CASE_SEED:
            blockers.append(f"seed {args.seed} (torch uses {args.seed % 2**64}) is beyond a Case's seed range")
        mode = self.modes[settings.key]
        checkpoint = self._checkpoint(f, blockers)
        if mode == "merged_fp32" and f.step > self.first_lora_step:
            notes.append("AI Toolkit merged and unmerged the LoRA in the base weights for earlier batches: "
                         "they had drifted slightly (not modelled)")
        control = None if blockers else self._control(args)
        effective = {**args.effective(), "lora_merged_into_base": mode == "merged_fp32", "dtype": self.dtype}
        return Preview(name, str(f.path), f.step, f.index, f.ms, checkpoint, effective, mode,
                       float(args.network_multiplier), control, output_format, quality, not blockers,
                       tuple(blockers + notes))

    def _checkpoint(self, f: PreviewFile, blockers: list) -> str | None:
        job = self.job
        if f.step == 0:
            if job.pretrained_lora_path:
                blockers.append(f"the network started from pretrained_lora_path {job.pretrained_lora_path}")
            return None
        if job.network_type is None:
            blockers.append("no network (full fine-tune): checkpoints are whole models, not modelled")
            return None
        found, problem = pair_checkpoint(f.step, lora_name=job.name, folder=self.checkpoints,
                                         final_step=job.train_steps, save_every=job.save_every,
                                         keep=job.max_step_saves_to_keep)
        if problem:
            blockers.append(f"unpaired: {problem}")
            self.unpaired.append(f"{f.path.name}: {problem}")
        return str(found) if found else None

    def _control(self, args: PromptArgs) -> str | None:
        if args.ctrl_img is None:
            problem = f"prompt {args.index}: no ctrl_img (AI Toolkit's Kontext sampler needs one)"
            found, tried = None, []
        else:
            found, tried = resolve_control(args.ctrl_img, self.roots, self.ctrl_root)
            problem = f"prompt {args.index}: control image {args.ctrl_img!r} not found (tried {', '.join(tried)})"
            self.unresolved_controls |= found is None
        if found is None and problem not in self.missing_controls:
            self.missing_controls.append(problem)
        return str(found) if found else None

    def raise_problems(self, unpaired: str, samples_dir: Path) -> None:
        if self.missing_controls:
            unhelped = self.unresolved_controls and not self.ctrl_root
            hint = "; pass ctrl_root=<folder holding the control images>" if unhelped else ""
            raise ParityError("; ".join(self.missing_controls) + hint, source=self.job.path)
        if self.unpaired and unpaired == "error":
            raise ParityError(f"{len(self.unpaired)} preview(s) have no checkpoint: " + "; ".join(self.unpaired)
                              + " (pass unpaired='skip' to keep them as not reproducible)", source=samples_dir)


def _jpeg_quality(path: Path) -> int | None:
    """The IJG quality of a JPEG preview from its tables; None when it does not read (the run's input
    check names the file before anything is computed)."""
    try:
        with open_image(path, "preview") as image:
            return estimate_quality(image)
    except ParityError:
        return None


def _batch_lora_mode(job: JobConfig, batch: list[PromptArgs]) -> str | None:
    """generate_images: merge when the batch shares one multiplier and network.can_merge_in."""
    if job.network_type is None:
        return None
    can_merge = not (job.quantize or job.layer_offloading) and job.network_type.lower() not in ("lorm", "dora")
    one_multiplier = len({float(a.network_multiplier) for a in batch}) == 1
    return "merged_fp32" if can_merge and one_multiplier else "branch"


def _run_blockers(job: JobConfig) -> tuple[str, list[str]]:
    """Case.quantize, and why no preview of this run can be modelled (empty when all is well)."""
    blockers = [f"{key} is set: its effect on previews is not modelled" for key in job.unmodelled]
    if job.network_type is not None and job.network_type.lower() not in LORA_TYPES:
        blockers.append(f"network.type {job.network_type!r} is not modelled (only {', '.join(LORA_TYPES)})")
    if not job.quantize and not job.quantize_te:
        return "none", blockers
    if job.quantize != job.quantize_te:
        blockers.append(f"quantize={job.quantize} but quantize_te={job.quantize_te}: "
                        "a Case quantizes the transformer and T5 together")
    qtype = "float8" if job.layer_offloading and job.qtype == "qfloat8" else job.qtype
    if qtype != "qfloat8":
        blockers.append(f"qtype {qtype!r} is not modelled (only qfloat8)")
    return "qfloat8", blockers


def preview_notes(previews: list[Preview], shown: int = 3) -> list[str]:
    """One line per distinct note, naming the previews it concerns; a preview left out says why (its
    first note is what blocks it)."""
    grouped: dict[str, list[str]] = {}
    for p in previews:
        texts = p.notes if p.reproducible else (f"not reproduced: {p.notes[0]}", *p.notes[1:])
        for text in texts:
            grouped.setdefault(text, []).append(p.name)
    out = []
    for text, names in grouped.items():
        more = f" and {len(names) - shown} more" if len(names) > shown else ""
        out.append(f"{', '.join(names[:shown])}{more}: {text}")
    return out


# Effective arguments that may differ between a LoRA preview and its base-model twin.
LORA_ARGS = ("network_multiplier", "lora_merged_into_base")


def base_twins(run: AitkRun) -> dict[str, str]:
    """LoRA preview path -> the step-0 preview of the same prompt drawn with the same arguments.

    The step-0 preview is the base model alone (lora_B is zero before training), so the two differ
    by exactly what the LoRA does: the yardstick of how much of that a redraw misses.
    """
    def same_args(a: Preview, b: Preview) -> bool:
        strip = lambda eff: {k: v for k, v in eff.items() if k not in LORA_ARGS}  # noqa: E731
        return strip(a.effective) == strip(b.effective) and a.control_image == b.control_image

    base = {p.prompt_index: p for p in run.previews if p.step == 0 and p.reproducible}
    return {p.path: base[p.prompt_index].path for p in run.previews
            if p.checkpoint and p.reproducible and p.prompt_index in base and same_args(p, base[p.prompt_index])}


def preview_requests(run: AitkRun) -> list[dict]:
    """What each reproducible preview says, as Case fields and no knob: the arguments AI Toolkit passed,
    the checkpoint and LoRA mode of its batch, the run's dtype and quantization, the file's encoding, its
    base twin, and tags (run, step, prompt index, checkpoint). A profile turns it into a Case."""
    requests = []
    twins = base_twins(run)
    for p in run.previews:
        if not p.reproducible:
            continue
        eff = p.effective
        loras = [{"path": p.checkpoint, "scale": p.lora_scale, "mode": p.lora_mode}] if p.checkpoint else []
        requests.append({
            "name": p.name, "prompt": eff["prompt"], "control_image": p.control_image, "preview": p.path,
            "base_preview": twins.get(p.path),
            "steps": eff["num_inference_steps"], "guidance": eff["guidance_scale"], "seed": eff["seed"] % 2**64,
            # sizes below 16 are refused by a Case; AI Toolkit floors them to 64 anyway, as snap "aitk" does
            "width": max(eff["width"], 16), "height": max(eff["height"], 16),
            "negative_prompt": eff["negative_prompt"] if isinstance(eff["negative_prompt"], str) else "",
            "dtype": run.dtype, "quantize": run.quantize, "loras": loras,
            "output_format": p.output_format, "output_quality": p.output_quality,
            "tags": {"run": run.name, "step": p.step, "prompt_index": p.prompt_index,
                     "checkpoint": Path(p.checkpoint).name if p.checkpoint else "base",
                     "aitk_lora_mode": p.lora_mode or "none"},
        })
    for request in requests:  # a value no Case takes is the run config's fault: say so there, now
        Case.from_dict(request, source=run.config.path)
    return requests


def preview_cases(run: AitkRun) -> list[Case]:
    """The aitk-preview Case of every reproducible preview: its request under AI Toolkit's sampler."""
    profile = load_profile(PROFILE)
    return [Case.from_dict({**profile.apply(request), "tags": {**request["tags"], "profile": PROFILE}},
                           source=run.config.path) for request in preview_requests(run)]
