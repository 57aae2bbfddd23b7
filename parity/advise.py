"""`parity advise`: the request a serving system should be sent to redraw a LoRA's AI Toolkit previews.

For a profile with a request format (fal, oxen, lumenfall, prodia-dev, aitk-inference, comfyui) the request
fields a user sets (``parity.exporters``: steps, guidance, seed, size or aspect mode, LoRA scale, output
encoding; for ComfyUI also the graph: scale node, shift node, scheduler, model file) are searched for the
request that best redraws the previews, and written in the system's own format.

Every candidate is what the system would get: its request body, read back by the system's importer
(``parity.importers``, so `parity import` of the written file gives the very cases measured), run by the
Runner into a run folder (a rerun resumes; identical requests are run once) and compared with the previews.

  Objective   the perceptual gap: LPIPS of the output against the preview (the output compressed like the
              preview when that is a JPEG, floor_lpips, so AI Toolkit's own JPEG artifacts are no gap, as in the
              verdict) as a fraction of the LoRA's own LPIPS effect (the preview against its step-0 twin),
              averaged over the previews; 0 is a perfect redraw, 1 as far off as the base model. Within 2% of
              each other, the verdict's gap
              decides (the gate's lora_gap_fraction: JPEG excess or mean abs as a fraction of the LoRA's
              effect in the same measure). The verdict's pixel-wise gap ranks near-exact redraws best, but
              once images differ in structure it rewards blur: on the demo previews it scores Prodia's 1024x1024
              default above an aspect-true 512x512 that LPIPS and the eye find closer. Both are reported.
              Without step-0 twins: plain LPIPS, then the plain verdict gap.
  Search      a coordinate search from the preview's own values (and the system's defaults where a preview has
              no counterpart) on a few previews (one per run first): each field's choices against the best so
              far, kept only when better by 2% and by twice what AI Toolkit's own settings miss by (rounding);
              a choice clearly worse on the first search preview is not measured on the others; two passes at
              most. Encoding fields are decided on the chosen generation's lossless pixels, encoded by the
              engine's own encoder. The system's defaults win if nothing beats them.
  Gap         the system's defaults and the advised request on the search previews, the advised request on
              every preview (imported back from the written file), and AI Toolkit's own settings (the floor).
  Causes      each behaviour the request cannot change (a profile's fixed knobs, a field's range), set back to
              AI Toolkit's value one group of knobs at a time, on the search previews.
  Usual       the real model's usual settings (AI Toolkit's example Kontext sample config: 1024x1024, 20 steps,
              guidance 4): previews redrawn there with AI Toolkit's settings from the control image scaled to
              about 1 MP stand in for the previews, and the advised request's choices are applied to them, on
              the tiny model (whose images respond to each difference with their own magnitude).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .case import Case
from .errors import ParityError, did_you_mean
from .exporters import Files, exporter
from .files import write_atomic
from .plan import Plan, load_plan
from .verdict import lora_gap_fraction, number

USUAL = {"width": 1024, "height": 1024, "steps": 20, "guidance": 4.0}  # AI Toolkit's example Kontext samples
MIN_GAIN = 0.02  # a change must lower the objective by 2% (and by twice the floor) to be taken
PASSES = 2
NOTES_SHOWN = 6
# Case fields by the behaviour they make up: attribution sets a whole group back to AI Toolkit's values.
GROUPS = (
    ("output size", ("width", "height", "size_source", "snap", "max_area", "latent_padding")),
    ("control image preparation", ("control_exif_transpose", "control_alpha", "control_target", "control_resize",
                                   "control_fit", "control_auto_resize", "control_pipeline_resize",
                                   "control_encode")),
    ("steps", ("steps",)),
    ("guidance", ("guidance", "guidance_mode", "true_cfg_scale", "negative_prompt")),
    ("seed and noise", ("seed", "generator", "noise")),
    ("sigma schedule", ("sigma_schedule", "dynamic_shifting", "shift", "base_shift", "max_shift")),
    ("sampler numerics", ("sampler", "latent_dtype", "timestep_dtype")),
    ("prompt encoding", ("prompt", "prompt_encoding", "text_encoder_dtype")),
    ("precision", ("dtype", "quantize")),
    ("LoRA (file, scale, mode)", ("loras",)),
    ("output encoding", ("output_format", "output_quality", "output_uint8")),
    ("speed knobs", ("attention_backend", "compile", "channels_last")),
)
NOT_KNOBS = ("name", "preview", "base_preview", "gated", "tags", "control_image")
ENCODING = ("output_format", "output_quality", "output_uint8")
# effective values (results columns) that show what a group's knobs did, where its fields alone do not
EFFECTIVE = {"output size": ("eff_width", "eff_height"), "control image preparation": ("eff_control_size_encoded",),
             "sigma schedule": ("eff_mu",)}


def request_format(profile: str) -> str:
    """The importer --format whose requests run as ``profile`` (read off each importer's PROFILE)."""
    from importlib import import_module

    from .importers import FORMATS

    systems = {getattr(import_module(f".importers.{module}", __package__), "PROFILE"): fmt
               for fmt, module in FORMATS.items()}
    if profile in systems:
        return systems[profile]
    raise ParityError(f'profile "{profile}" has no request format to write (it is no serving system a user sends '
                      f"requests to); choose one of: {', '.join(systems)}")


def select_previews(runs: list[str], train_steps="last", *, config: str | None = None,
                    ctrl_root: str | None = None) -> list[Case]:
    """The aitk-preview cases of the chosen previews of each run (train_steps: last, first or a list)."""
    from .aitk import load_run, preview_cases

    chosen = []
    for run_dir in runs:
        cases = preview_cases(load_run(run_dir, config=config, ctrl_root=ctrl_root))
        steps = sorted({int(c.tag("step")) for c in cases})
        if not steps:
            raise ParityError("no preview of this run can be reproduced", source=run_dir)
        wanted = {max(steps)} if train_steps == "last" else {min(steps)} if train_steps == "first" \
            else set(train_steps)
        picked = [c for c in cases if int(c.tag("step")) in wanted]
        if not picked:
            raise ParityError(f"train_steps {train_steps} selects no preview (this run has previews at steps "
                              f"{', '.join(map(str, steps))})", source=run_dir)
        chosen += picked
    return chosen


def spread(previews: list[Case], n: int) -> list[Case]:
    """``n`` previews taken from the runs in turn (the first of each run first)."""
    runs: dict[str, list[Case]] = {}
    for p in previews:
        runs.setdefault(p.tag("run") or "", []).append(p)
    order = []
    while len(order) < min(n, len(previews)):
        for queue in runs.values():
            if queue and len(order) < n:
                order.append(queue.pop(0))
    return order


@dataclass
class Measured:
    """One request (field choices) measured on some previews: (perceptual, verdict) gaps, lower is better."""

    choice: tuple
    cases: dict  # preview name -> Case
    rows: dict  # preview name -> results row (or a row-like record for an encoding decided on pixels)
    score: tuple = (math.inf, math.inf)


@dataclass
class Advice:
    profile: str
    format: str
    request_file: str
    objective: str
    previews: list = field(default_factory=list)
    search_previews: list = field(default_factory=list)
    advised: dict = field(default_factory=dict)  # field -> choice label
    search: list = field(default_factory=list)  # one record per field tried
    gap: dict = field(default_factory=dict)  # what -> [perceptual, verdict]
    per_preview: list = field(default_factory=list)
    causes: list = field(default_factory=list)
    chosen_differently: list = field(default_factory=list)
    usual: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    cases_computed: int = 0
    cases_reused: int = 0
    seconds: float = 0.0
    check_file: str = ""
    import_command: str = ""


class Advisor:
    def __init__(self, profile: str, previews: list[Case], *, out: Path, run_dir: Path, base: str = "embedded",
                 engine=None, device: str = "auto", search_previews: int = 2, usual_previews: int = 1,
                 attribution: bool = True, fields: list[str] | None = None, lpips_net: str = "alex",
                 usual: dict | None = None, log=print):
        from .profiles import load_profile
        from .runner import Runner

        if not previews:
            raise ParityError("no preview to advise on")
        loaded = load_profile(profile)
        self.profile = loaded.name
        self.lora_mode = loaded.knobs.get("lora_mode")  # how the system applies a LoRA (for the attribution)
        self.fmt = request_format(self.profile)
        self.exporter = exporter(self.fmt)
        self.previews = previews
        self.search_set = spread(previews, max(1, search_previews))
        self.usual_n = max(0, usual_previews)
        self.usual_settings = dict(usual or USUAL)
        self.attribution = attribution
        self.out = Path(out).resolve()
        self.run_dir = Path(run_dir)
        self.log = log
        self.lpips_net = lpips_net
        self.fields = self.exporter.fields(previews)
        known = [f.name for f in self.fields]
        for name in fields or []:
            if name not in known:
                raise ParityError(f'--fields: "{name}" is not a request field of {self.fmt}{did_you_mean(name, known)}'
                                  f"; its fields: {', '.join(known)}")
        self.searched = [i for i, f in enumerate(self.fields) if not fields or f.name in fields]
        comfy = self.fmt == "comfyui"
        files_dir = self.out.parent / f"{self.out.stem}-files"
        self.files = Files(files_dir if comfy else None)
        self.control_dir = files_dir / "input" if comfy else self.run_dir / "inputs"
        self.lora_dir = files_dir / "loras" if comfy else None
        self.twins = all(p.base_preview for p in previews)
        self.runner = Runner(self.run_dir, engine=engine, base=base, device=device, progress=False,
                             noise_floor=0, lpips_net=lpips_net)
        self.base = base
        self.floor = (0.0, 0.0)  # the objective of AI Toolkit's own settings redrawing the search previews
        self.seen: dict[str, list[Case]] = {}  # preview -> every case the search ran for it
        self.all_cases: dict[str, Case] = {}
        self.computed: set[str] = set()  # cases this advice computed
        self.reused: set[str] = set()  # cases an earlier run into the folder had computed
        self.notes: list[str] = []
        self.shown: set[str] = set()  # warning lines already shown

    # --- requests -> cases -> rows ------------------------------------------------------------------------
    def values(self, choice: tuple, preview: Case) -> dict:
        """The request's field values for one preview; choice[i] None is the field's default."""
        return {f.name: (f.default if i is None else f.choices[i]).resolve(preview) for f, i in zip(self.fields, choice)}

    def labels(self, choice: tuple) -> dict:
        return {f.name: (f.default if i is None else f.choices[i]).label for f, i in zip(self.fields, choice)}

    def document(self, choice: tuple, previews: list[Case]):
        return self.exporter.document([(p, self.values(choice, p)) for p in previews], self.files)

    def inputs(self, previews: list[Case]) -> list[str]:
        """Images the request carries outside its body (a Prodia job's multipart part), one per preview."""
        if not hasattr(self.exporter, "inputs"):
            return []
        return self.exporter.inputs([(p, {}) for p in previews])

    def cases(self, choice: tuple, previews: list[Case]) -> dict[str, Case]:
        """preview name -> the case the system runs for this request (via its importer, like `parity import`)."""
        from .importers import import_body

        dicts, _ = import_body(self.document(choice, previews), self.fmt, source=self.out,
                               write_dir=self.control_dir, control_dir=self.control_dir, lora_dir=self.lora_dir,
                               inputs=self.inputs(previews))
        if len(dicts) != len(previews):
            raise ParityError(f"the {self.fmt} request gave {len(dicts)} cases for {len(previews)} previews")
        blob = json.dumps(dicts, sort_keys=True, default=str)
        path = self.run_dir / "requests" / f"{hashlib.sha256(blob.encode()).hexdigest()[:16]}.yaml"
        if not path.is_file():
            write_atomic(path, yaml.safe_dump({"cases": dicts}, sort_keys=False, allow_unicode=True))
        return {p.name: self.attach(case, p) for case, p in zip(load_plan(path).cases, previews)}

    def attach(self, case: Case, preview: Case, what: str = "") -> Case:
        """The case compared with the preview, named by its knobs (the same request is the same case)."""
        tags = {**dict(case.tags), "advise": self.profile, "advise_preview": preview.name}
        return case.replace(name=f"{self.profile}/{preview.name}/{what}{case.key()[:12]}", preview=preview.preview,
                            base_preview=preview.base_preview, gated=False, tags=tags)

    def run(self, cases: list[Case]) -> dict[str, dict]:
        """name -> row; each distinct case once. A case that raised (not bad input) is tried once more."""
        unique = {c.name: c for c in cases}
        if not unique:
            return {}
        plan = Plan(source=f"parity advise --profile {self.profile}", cases=list(unique.values()), base=self.base)
        summary = self._run(plan)
        if summary.crashed:
            self.notes += [f"a case raised and was run again: {text}" for text in summary.crashed]
            summary = self._run(plan)
        rows = {row["name"]: row for row in summary.rows}
        for name in unique:
            if name not in self.all_cases and name in rows:
                # a resumed row is read back from the folder, stamped; a computed one is this run's own record
                (self.reused if rows[name].get("finished_at") else self.computed).add(name)
        self.all_cases.update(unique)
        return rows

    def _run(self, plan: Plan):
        """The Runner on a plan, its warnings shown once for the whole advice (it tallies repeats after each run)."""
        buffer = io.StringIO()
        try:
            with contextlib.redirect_stderr(buffer):
                return self.runner.run(plan)
        finally:
            for line in buffer.getvalue().splitlines():
                if line.strip() and " repeats of the warnings above" not in line and line not in self.shown:
                    self.shown.add(line)
                    self.log(line)

    def measure(self, choices: list[tuple], previews: list[Case]) -> list[Measured]:
        """Each request measured on the previews, all in one run."""
        made = []
        for choice in choices:
            cases = self.cases(choice, previews)
            for name, case in cases.items():
                self.seen.setdefault(name, []).append(case)
            made.append(Measured(choice, cases, {}))
        rows = self.run([c for m in made for c in m.cases.values()])
        for m in made:
            m.rows = {p: rows.get(c.name) for p, c in m.cases.items()}
            m.score = self.score(list(m.rows.values()))
        return made

    def score(self, rows: list) -> tuple[float, float]:
        """(perceptual, verdict) gap over the rows; inf when a row is missing or failed."""
        perceptual, verdict = [], []
        for row in rows:
            if row is None or row.get("status", "ok") != "ok":
                return math.inf, math.inf
            perceptual.append(_perceptual(row, self.twins))
            value = lora_gap_fraction(row) if self.twins else verdict_gap(row)
            verdict.append(math.inf if value is None else value)
        return sum(perceptual) / len(perceptual), sum(verdict) / len(verdict)

    @property
    def objective(self) -> str:
        if self.twins:
            return ("perceptual gap: LPIPS of the output against the preview (compressed like the preview when that "
                    "is a JPEG) as a fraction of the LoRA's own LPIPS effect (the preview against its step-0 twin), "
                    "the mean over the previews (0: a perfect "
                    "redraw, 1: as far off as the base model); within 2%, the verdict's gap decides (the gate's "
                    "lora_gap_fraction: JPEG excess or mean abs as a fraction of the LoRA's effect). Shown as "
                    "perceptual / verdict")
        return ("perceptual gap: LPIPS of the output against the preview (compressed like the preview when that is "
                "a JPEG), the mean over the previews; "
                "within 2%, the verdict's gap decides (JPEG excess or mean abs). Shown as perceptual / verdict")

    def better(self, a: Measured, b: Measured) -> bool:
        """Whether a is clearly better than b: the perceptual gap lower by MIN_GAIN of b's and by twice the floor
        (what AI Toolkit's own settings miss by: rounding), or within that margin and the verdict's gap lower by
        the same rule. Choices that only trade noise for noise are not taken."""
        for index in (0, 1):
            margin = max(MIN_GAIN * abs(b.score[index]), 2 * self.floor[index])
            if a.score[index] < b.score[index] - margin:
                return True
            if a.score[index] > b.score[index] + margin:
                return False
        return False

    # --- the search -------------------------------------------------------------------------------------------
    def search(self, advice: Advice, defaults: Measured) -> Measured:
        start = tuple(0 for _ in self.fields)
        [best] = self.measure([start], self.search_set)
        self.log(f"start (the preview's own values, the system's defaults elsewhere): {_pair(best.score)}")
        generation = [i for i in self.searched if not self.fields[i].encoding]
        todo = generation
        for number_ in range(PASSES):
            last_change = None
            for i in todo:
                f = self.fields[i]
                alternatives = [best.choice[:i] + (j,) + best.choice[i + 1:]
                                for j in range(len(f.choices)) if j != best.choice[i]]
                if not alternatives:
                    continue
                tried = self.race(alternatives, best)
                winner = best
                for m in tried:
                    if len(m.rows) == len(self.search_set) and self.better(m, winner):
                        winner = m
                self._record(advice, f, i, number_ + 1, [best, *tried], winner)
                if winner is not best:
                    best, last_change = winner, i
            if last_change is None:
                break
            todo = [i for i in generation if i < last_change]  # fields after it were tried in the final context
            if not todo:
                break
        best = self.search_encoding(best, advice)
        if self.better(defaults, best):  # nothing the search found beats leaving every field out
            self.log("the system's defaults are better than anything the search found: the advice is the defaults")
            advice.notes.append("no request the search tried beats the system's defaults")
            return defaults
        return best

    def _record(self, advice: Advice, f, i: int, number_: int, tried: list[Measured], winner: Measured,
                on_pixels: bool = False) -> None:
        complete = len(self.search_set)
        record = {"field": f.name, "pass": number_, "on_pixels": on_pixels,
                  "scores": {f.choices[m.choice[i]].label: list(m.score) for m in tried},
                  "first_preview_only": [f.choices[m.choice[i]].label for m in tried if len(m.rows) < complete],
                  "chosen": f.choices[winner.choice[i]].label}
        if record["first_preview_only"]:  # what those were up against there
            record["first_preview_of_chosen"] = list(self.score([tried[0].rows[self.search_set[0].name]]))
        advice.search.append(record)
        how = " (decided on the pixels)" if on_pixels else ""
        against = f" (first preview only, where the best so far scores {_pair(record['first_preview_of_chosen'])})" \
            if record["first_preview_only"] else ""
        self.log(f"  {f.name}{how}: " + ", ".join(
            f"{label} {_pair(score)}" + ("*" if label in record["first_preview_only"] else "")
            for label, score in record["scores"].items()) + f" -> {record['chosen']}" + (
            f"; * {against.strip(' ()')}" if against else ""))

    def race(self, choices: list[tuple], best: Measured) -> list[Measured]:
        """The choices measured on the first search preview, and those not clearly worse there (by the rule of
        ``better``) on the others too; a dropped choice keeps its first-preview score (it cannot win)."""
        first, rest = self.search_set[:1], self.search_set[1:]
        measured = self.measure(choices, first)
        if not rest:
            return measured
        top = Measured(best.choice, {}, {}, self.score([best.rows[first[0].name]]))
        alive = [m for m in measured if not self.better(top, m)]
        complete = {m.choice: m for m in self.measure([m.choice for m in alive], self.search_set)} if alive else {}
        return [complete.get(m.choice, m) for m in measured]

    def search_encoding(self, best: Measured, advice: Advice) -> Measured:
        """Encoding fields on the chosen generation's pixels: its outputs are lossless (the search ran them as PNG
        where the system offers PNG), so each encoding is the engine's own encoder applied to them."""
        generated = best  # its lossless outputs are encoded for every encoding choice
        for i in self.searched:
            f = self.fields[i]
            if not f.encoding:
                continue
            tried = [best] + [self.encoded(generated, best.choice[:i] + (j,) + best.choice[i + 1:])
                              for j in range(len(f.choices)) if j != best.choice[i]]
            winner = best
            for m in tried[1:]:
                if self.better(m, winner):
                    winner = m
            self._record(advice, f, i, 1, tried, winner, on_pixels=True)
            best = winner
        return best

    def encoded(self, generated: Measured, choice: tuple) -> Measured:
        from PIL import Image

        from .imaging import open_image
        from .knobs import lookup
        from .metrics import compare

        cases = self.cases(choice, self.search_set)
        rows = {}
        for name, case in cases.items():
            row, source = generated.rows[name], generated.cases[name]
            if row is None or source.output_format != "png":
                raise ParityError("an encoding is decided on the pixels only after a lossless generation")
            if _generation(case) != _generation(source):
                raise ParityError(f"the encoding field of {self.fmt} changed more than the encoding of {name}")
            raw = Image.open(self.run_dir / row["output_file"]).convert("RGB")
            _, decoded = lookup("output_format", case.output_format)(raw, case.output_quality)
            record = compare(decoded, open_image(case.preview, "preview"), raw=raw, lpips_net=self.lpips_net)
            record.update({k: v for k, v in row.items() if k.startswith("lora_effect_")})
            record["lora_gap_fraction"] = lora_gap_fraction(record)
            rows[name] = record
        return Measured(choice, cases, rows, self.score(list(rows.values())))

    # --- what remains -----------------------------------------------------------------------------------------
    def causes(self, advised: dict[str, tuple[Case, dict]], references: dict[str, tuple[Case, dict]],
               advice: Advice, base: tuple) -> None:
        """Each group of knobs the request cannot change, set back to AI Toolkit's values on the search previews.

        A group counts as the user's when some request the search tried gave AI Toolkit's values for it (then a
        difference is the search's choice, listed apart); the others are the system's fixed behaviour or a
        field's limits. The output encoding is no cause where every preview is a JPEG: both measures compare the
        output compressed like the preview. A LoRA the system cannot take at all is added as the system's
        profile applies one (its lora_mode), since AI Toolkit's own mode may not run on its weights."""
        jpeg = all(row is not None and row.get("jpeg_excess") is not None for _, row in references.values())
        for group, names in _groups():
            differing = [p for p in self.search_set if _differs(advised[p.name][0], references[p.name][0], names)]
            if not differing:
                continue
            detail = _detail(advised, references, group, names, differing)
            reachable = any(not _differs(seen, references[p.name][0], names)
                            for p in differing for seen in self.seen.get(p.name, []))
            if reachable:
                advice.chosen_differently.append({"group": group, **detail})
                continue
            if jpeg and set(names) <= set(ENCODING):
                advice.causes.append({"group": group, **detail, "unseen": "the previews are JPEGs: both gaps compare "
                                      "the output compressed like the preview, whatever the system delivers"})
                continue
            flipped = []
            for p in self.search_set:
                case, reference = advised[p.name][0], references[p.name][0]
                if p in differing:
                    changes = {n: getattr(reference, n) for n in names}
                    if "loras" in names and not case.loras and self.lora_mode:
                        changes["loras"] = tuple(dataclasses.replace(lora, mode=self.lora_mode)
                                                 for lora in reference.loras)
                        detail["added_as"] = f"lora_mode {self.lora_mode}, as the {self.profile} profile applies one"
                    case = self.attach(case.replace(**changes), p, "flip-")
                flipped.append(case)
            try:
                rows = self.run(flipped)
            except ParityError as err:
                advice.causes.append({"group": group, **detail, "error": str(err)})
                continue
            score = self.score([rows.get(c.name) for c in flipped])
            advice.causes.append({"group": group, **detail, "score": list(score),
                                  "change": [s - b for s, b in zip(score, base)]})
        advice.causes.sort(key=lambda c: tuple(c.get("change", (math.inf, math.inf))))

    def usual(self, choice: tuple, advice: Advice) -> None:
        """The gap at the real model's usual settings: previews redrawn there with AI Toolkit's settings, from their
        control image scaled to about 1 MP, stand in for the previews; the advised request's choices are applied
        to them (on the tiny model; see the module docstring)."""
        chosen = self.search_set[: self.usual_n]
        if not chosen:
            return
        settings = self.usual_settings
        references, bases = [], []
        for p in chosen:
            ref = p.replace(**settings, control_image=self.usual_control(p.control_image), preview=None,
                            base_preview=None, gated=False, name=f"usual/{p.name}/{_settings_id(settings)}/aitk-preview")
            references.append(ref)
            bases.append(ref.replace(loras=(), name=ref.name + "-step0"))
        rows = self.run(references + bases)
        stand_ins = []
        for p, ref, base in zip(chosen, references, bases):
            if ref.name not in rows or base.name not in rows:
                raise ParityError(f"the usual-settings redraw of {p.name} failed")
            stand_ins.append(ref.replace(name=f"usual/{p.name}", preview=str(self.run_dir / rows[ref.name]["output_file"]),
                                         base_preview=str(self.run_dir / rows[base.name]["output_file"])))
        cases = self.cases(choice, stand_ins)
        rows = self.run(list(cases.values()))
        advice.usual = {"settings": settings, "previews": [p.name for p in chosen],
                        "advised": list(self.score([rows.get(c.name) for c in cases.values()])),
                        "per_preview": [_record(rows.get(c.name), self.twins) for c in cases.values()],
                        "method": "each preview redrawn with AI Toolkit's settings (aitk-preview) at these settings "
                                  "from its control image scaled to about 1 MP (aspect kept), and its step-0 twin "
                                  "without the LoRA, both saved as AI Toolkit saves previews, stand in for the "
                                  "previews; the advised request's choices (the preview's steps, guidance and seed, "
                                  "the size mode, ...) are applied to them and measured the same way, on the tiny "
                                  "model (whose images respond to each difference with their own magnitude)"}

    def usual_control(self, path: str) -> str:
        """The control image scaled (LANCZOS, aspect kept) to about the usual output's pixel count, as a photo is."""
        from PIL import Image

        source = Path(path)
        area = self.usual_settings["width"] * self.usual_settings["height"]
        target = self.run_dir / "usual-controls" / \
            f"{hashlib.sha256(source.read_bytes()).hexdigest()[:16]}-{area}.png"
        if not target.is_file():
            with Image.open(source) as image:
                scale = math.sqrt(area / (image.width * image.height))
                size = (max(16, round(image.width * scale)), max(16, round(image.height * scale)))
                exif = image.info.get("exif")
                resized = image.resize(size, Image.LANCZOS)
            buffer = io.BytesIO()
            resized.save(buffer, format="PNG", **({"exif": exif} if exif else {}))
            write_atomic(target, buffer.getvalue())
        return str(target)

    # --- everything -------------------------------------------------------------------------------------------
    def advise(self) -> Advice:
        started = time.perf_counter()
        advice = Advice(profile=self.profile, format=self.fmt, request_file=str(self.out), objective=self.objective,
                        previews=[p.name for p in self.previews], search_previews=[p.name for p in self.search_set])
        self.log(f"advise {self.profile} ({self.fmt}): {len(self.previews)} preview(s); searching on "
                 f"{', '.join(advice.search_previews)}")
        references = {p.name: p.replace(name=f"reference/{p.name}", gated=False) for p in self.search_set}
        ref_rows = self.run(list(references.values()))
        reference = self.score([ref_rows.get(c.name) for c in references.values()])
        self.floor = tuple(v if math.isfinite(v) else 0.0 for v in reference)
        [defaults] = self.measure([tuple(None for _ in self.fields)], self.search_set)
        self.log(f"gap (perceptual / verdict): the system's defaults {_pair(defaults.score)}; AI Toolkit's own "
                 f"settings {_pair(reference)}")
        best = self.search(advice, defaults)
        advice.advised = self.labels(best.choice)
        write_atomic(self.out, json.dumps(self.document(best.choice, self.previews), indent=1))
        verified = self.verify(advice)
        advised = self.score([verified[p.name][1] for p in self.search_set])
        advice.gap = {"defaults": list(defaults.score), "advised": list(advised),
                      "advised_all_previews": list(self.score([verified[p.name][1] for p in self.previews])),
                      "aitk_preview": list(reference), "search_estimate": list(best.score)}
        advice.per_preview = [{"preview": p.name, "advised": _record(verified[p.name][1], self.twins, verified[p.name][0]),
                               **({"defaults": _record(defaults.rows[p.name], self.twins, defaults.cases[p.name])}
                                  if p.name in defaults.rows else {})} for p in self.previews]
        if self.attribution:
            self.log("what the request cannot change, one group at a time ...")
            self.causes({p.name: verified[p.name] for p in self.search_set},
                        {p.name: (p, ref_rows.get(references[p.name].name)) for p in self.search_set}, advice,
                        advised)
        if self.usual_n:
            self.log("the real model's usual settings ...")
            self.usual(best.choice, advice)
        self.run(list(self.all_cases.values()))  # the run folder's tables hold every case of this advice
        advice.cases_computed, advice.cases_reused = len(self.computed), len(self.reused)
        advice.notes += self.notes
        advice.seconds = time.perf_counter() - started
        write_atomic(self.run_dir / f"advice-{self.profile}.json",
                     json.dumps(dataclasses.asdict(advice), indent=1, default=str))
        return advice

    def verify(self, advice: Advice) -> dict[str, tuple[Case, dict]]:
        """The written request imported back exactly as `parity import` does, and run against every preview."""
        from .importers import import_request

        inputs = self.inputs(self.previews)
        imported = self.run_dir / f"advised-{self.profile}.yaml"
        # the import (and the printed command) names this folder; a request with no inline image (Prodia's jobs
        # carry theirs as a separate part) never creates it
        self.control_dir.mkdir(parents=True, exist_ok=True)
        text, notes = import_request(self.out, self.fmt, out=imported, control_dir=self.control_dir,
                                     lora_dir=self.lora_dir, inputs=inputs)
        write_atomic(imported, text)
        self.notes += notes
        cases = [self.attach(c, p) for c, p in zip(load_plan(imported).cases, self.previews)]
        rows = self.run(cases)
        data = yaml.safe_load(text)  # the same file with each case's preview: `parity run` it to check
        for spec, p in zip(data["cases"], self.previews):
            spec["preview"], spec["base_preview"], spec["gated"] = p.preview, p.base_preview, False
        data = {"description": data.get("description"), "base": self.base, "cases": data["cases"]}
        check = self.run_dir / f"advised-{self.profile}-check.yaml"
        write_atomic(check, text.split("\n", 2)[0] + "\n# with each case's AI Toolkit preview: parity run THIS_FILE "
                     "--no-gate\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120))
        advice.check_file = str(check)
        options = [f"--control-dir {self.control_dir}"]  # where ComfyUI's inputs are, and base64 images go
        options += [f"--lora-dir {self.lora_dir}"] if self.lora_dir else []
        options += [f"--input {path}" for path in inputs]
        advice.import_command = " ".join([f"parity import {self.out} --format {self.fmt}", *options])
        return {p.name: (c, rows.get(c.name)) for c, p in zip(cases, self.previews)}


def verdict_gap(row: dict) -> float | None:
    return number(row.get("jpeg_excess")) if row.get("jpeg_excess") is not None else number(row.get("mean_abs"))


def _perceptual(row: dict, twins: bool) -> float:
    """LPIPS of the output against the preview, compressed like the preview when it is a JPEG (floor_lpips: so
    the preview's own JPEG artifacts count for no gap, as in the verdict), per the LoRA's own LPIPS effect."""
    lpips = number(row.get("floor_lpips") if row.get("floor_lpips") is not None else row.get("lpips"))
    if lpips is None or math.isnan(lpips):
        return math.inf
    if not twins:
        return lpips
    effect = number(row.get("lora_effect_lpips"))
    if effect is None or not effect > 0:
        return math.inf
    return lpips / effect


def _record(row: dict | None, twins: bool, case: Case | None = None) -> dict:
    """A preview's gaps (and the case that gave them: its name in the run folder and its knobs' key)."""
    which = {"case": case.name, "key": case.key()} if case is not None else {}
    if row is None:
        return {"status": "missing", **which}
    return {**which, "perceptual": _perceptual(row, twins), "verdict": lora_gap_fraction(row) if twins else verdict_gap(row),
            "lpips": number(row.get("lpips")), "jpeg_excess": number(row.get("jpeg_excess")),
            "mean_abs": number(row.get("mean_abs")), "output_size": [row.get("eff_width"), row.get("eff_height")]}


def _groups() -> list[tuple[str, tuple[str, ...]]]:
    """GROUPS, plus any knob field of Case no group names (each its own group)."""
    named = {n for _, names in GROUPS for n in names}
    rest = [f.name for f in dataclasses.fields(Case) if f.name not in named and f.name not in NOT_KNOBS]
    return list(GROUPS) + [(name, (name,)) for name in rest]


def _value(case: Case, name: str):
    value = getattr(case, name)
    if name == "loras":
        return tuple(f"{Path(lora.path).name}@{lora.scale:g}:{lora.mode}" for lora in value)
    return round(value, 6) if isinstance(value, float) else value


def _differs(a: Case, b: Case, names) -> bool:
    return any(_value(a, n) != _value(b, n) for n in names)


def _detail(advised: dict, references: dict, group: str, names, previews) -> dict:
    """{"effective": {column: {"request": values, "aitk": values}}, "fields": {...}} over the previews where the
    group differs (distinct values, in preview order)."""
    out = {"effective": {}, "fields": {}}
    columns = EFFECTIVE.get(group, ())
    if columns:
        mine = _distinct("x".join(_shown((advised[p.name][1] or {}).get(c)) for c in columns) for p in previews)
        theirs = _distinct("x".join(_shown((references[p.name][1] or {}).get(c)) for c in columns) for p in previews)
        if mine != theirs:
            out["effective"][" x ".join(c.removeprefix("eff_") for c in columns)] = {"request": mine, "aitk": theirs}
    for n in names:
        mine = _distinct(_value(advised[p.name][0], n) for p in previews)
        theirs = _distinct(_value(references[p.name][0], n) for p in previews)
        if mine != theirs:
            out["fields"][n] = {"request": mine, "aitk": theirs}
    return out


def _shown(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _distinct(values) -> list:
    seen = []
    for v in values:
        v = list(v) if isinstance(v, tuple) else v
        if v not in seen:
            seen.append(v)
    return seen


def _generation(case: Case) -> str:
    """A case's key without its output encoding: what decides its pixels."""
    return case.replace(output_format="png", output_quality=None).key()


def _settings_id(settings: dict) -> str:
    return "x".join(str(settings[k]) for k in ("width", "height")) + f"-{settings['steps']}s-g{settings['guidance']:g}"


def _pair(score) -> str:
    return f"{score[0]:.4g} / {score[1]:.4g}"


def summary(advice: Advice) -> str:
    """What `parity advise` prints: the advised settings, the gap before and after, its causes, the usual-settings
    estimate, the work done."""
    gap = advice.gap
    n_search, n_all = len(advice.search_previews), len(advice.previews)
    width = max((len(k) for k in advice.advised), default=0)
    lines = [f"parity advise {advice.profile}: the {advice.format} request that best redraws the previews -> "
             f"{advice.request_file}", f"objective: {advice.objective}", "advised:"]
    lines += [f"  {name.ljust(width)}  {label}" for name, label in advice.advised.items()]
    lines += [f"gap on the {n_search} search preview(s): system defaults {_pair(gap['defaults'])} -> advised "
              f"{_pair(gap['advised'])} (AI Toolkit's own settings: {_pair(gap['aitk_preview'])})",
              f"gap of the advised request on all {n_all} preview(s), imported back from the file: "
              f"{_pair(gap['advised_all_previews'])}"]
    if advice.causes:
        lines.append(f"what the request cannot change, each set back to AI Toolkit's value (on the {n_search} search "
                     "preview(s)):")
        for cause in advice.causes:
            if "error" in cause:
                lines.append(f"  {cause['group']}: not measurable alone ({cause['error']}): {_what(cause)}")
            elif "unseen" in cause:
                lines.append(f"  {cause['group']}: no cause ({cause['unseen']}): {_what(cause)}")
            else:
                change = cause["change"]
                lines.append(f"  {cause['group']}: {_pair(gap['advised'])} -> {_pair(cause['score'])} "
                             f"({change[0]:+.3g} / {change[1]:+.3g}): {_what(cause)}")
        lines.append(f"  every difference set back at once is AI Toolkit's own redraw: {_pair(gap['aitk_preview'])} "
                     "(what no group explains alone, groups do together)")
    for chosen in advice.chosen_differently:
        lines.append(f"  {chosen['group']}: the search preferred {_what(chosen)}")
    if advice.usual:
        usual = advice.usual
        settings = usual["settings"]
        lines.append(f"at the real model's usual settings ({settings['width']}x{settings['height']}, {settings['steps']} "
                     f"steps, guidance {settings['guidance']:g}), estimated on {', '.join(usual['previews'])}: "
                     f"advised {_pair(usual['advised'])}")
        lines.append(f"  how: {usual['method']}")
    notes = advice.notes
    lines += [f"note: {note}" for note in notes[:NOTES_SHOWN]]
    if len(notes) > NOTES_SHOWN:
        lines.append(f"note: ... and {len(notes) - NOTES_SHOWN} more (the advice record lists them)")
    lines.append(f"{advice.cases_computed} case(s) computed, {advice.cases_reused} reused from earlier runs, in "
                 f"{advice.seconds:.1f} s")
    lines.append(f"re-import: {advice.import_command}")
    lines.append(f"check: parity run {advice.check_file} --no-gate   (that import, each case with its preview)")
    return "\n".join(lines)


def _what(entry: dict) -> str:
    parts = [f"{k} {_short(v['request'])} (AI Toolkit: {_short(v['aitk'])})" for k, v in entry["effective"].items()]
    parts += [f"{k} {_short(v['request'])} (AI Toolkit: {_short(v['aitk'])})" for k, v in entry["fields"].items()]
    if entry.get("added_as"):
        parts.append(f"added with {entry['added_as']}")
    return "; ".join(parts)


def _short(values: list) -> str:
    text = ", ".join(str(v) for v in values)
    return text if len(text) <= 90 else text[:87] + "..."
