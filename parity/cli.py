"""The `parity` command line: run cases, report on a run folder, gate CI on thresholds."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .errors import ParityError

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class ParityGroup(click.Group):
    """Turns bad input into one clear line and exit code 2; bugs keep their traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ParityError as err:
            click.secho(f"error: {err}", fg="red", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.secho("interrupted: finished cases are saved; rerun the same command to resume", err=True)
            sys.exit(130)


@click.group(cls=ParityGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kontext-parity")
def main():
    """Measure how far a FLUX.1-Kontext inference setup drifts from AI Toolkit training previews."""


SELECT_HELP = ('Only the cases whose names match EXPR: words (substrings, any case) with and / or / not and '
               'parentheses, as pytest -k: -k "step20 and not ablation".')


def select_option(command):
    return click.option("-k", "select", default=None, metavar="EXPR", help=SELECT_HELP)(command)


def plan_options(command):
    """The options that decide a plan: where the previews and the model come from."""
    for option in reversed([
        click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Run folder for outputs and results (default: reports/<case file name>). Rerunning "
                          "resumes."),
        click.option("--base", default=None, help='Base model: a diffusers folder, a model id, or "embedded" (the '
                     "demo model). Default: the case file's `base`, else embedded."),
        click.option("--previews", "previews", multiple=True, type=click.Path(exists=True, path_type=Path),
                     help="AI Toolkit run folder (or samples/ folder with --config) whose previews to reproduce; "
                          "repeatable; replaces the case file's previews.runs."),
        click.option("--config", "config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     default=None, help="AI Toolkit job config, when --previews is a bare samples/ folder."),
        click.option("--ctrl-root", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
                     help="Folder in which to find control images whose training-machine paths do not exist "
                          "here."),
        click.option("--unpaired", type=click.Choice(["error", "skip"]), default=None,
                     help="A preview whose checkpoint is gone (AI Toolkit keeps only the newest saves): stop with "
                          "an error (default) or skip it and say so."),
        click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N | mps"),
        select_option,
    ]):
        command = option(command)
    return command


def _load_plan(cases: Path, previews, config, ctrl_root, unpaired, select, *, show_notes: bool = True):
    """The plan of a case file with the CLI's options, narrowed to the -k selection."""
    from .plan import load_plan
    from .select import compile_selection

    plan = load_plan(cases, previews=[str(p) for p in previews] or None, config=str(config) if config else None,
                     ctrl_root=str(ctrl_root) if ctrl_root else None, unpaired=unpaired)
    if show_notes:
        for note in plan.notes:
            click.echo(f"note: {note}", err=True)
    if select:
        pick = compile_selection(select)
        plan.cases = [case for case in plan.cases if pick(case.name)]
        if not plan.cases:
            raise ParityError(f"-k {select!r} matches none of the {cases} cases", source=cases)
    return plan


@main.command()
@click.argument("cases", type=click.Path(path_type=Path))
@plan_options
@click.option("--offload", type=click.Choice(["none", "model", "sequential"]), default="none", show_default=True,
              help="CPU offload for GPUs with too little memory (diffusers model / sequential offload).")
@click.option("--lpips-net", type=click.Choice(["alex", "vgg"]), default="alex", show_default=True,
              help="LPIPS backbone.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for quantized weights kept between runs, so a 12B base is quantized once (default: "
                   "cache/ in the run folder; name one folder to share it between run folders).")
@click.option("--no-metrics", is_flag=True, help="Only generate; skip comparisons with previews.")
@click.option("--serial-metrics", is_flag=True,
              help="Compare each case with its preview before the next case starts, so CPU timings and memory "
                   "are clean (default: the comparison overlaps the next generation; rows say so in "
                   "`metrics_overlapped`).")
@click.option("--no-report", is_flag=True, help="Do not write the HTML/Markdown/JUnit reports at the end.")
@click.option("--thresholds", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Gate thresholds YAML (default: the shipped parity/thresholds/default.yaml).")
@click.option("--no-gate", is_flag=True, help="Exploration: exit 0 whatever the verdicts (errors still exit 2).")
@click.option("--noise-floor", "noise_floor", type=click.IntRange(min=0), default=1, show_default=True,
              help="Noise-floor estimators rerun per gated case (or floor group): 0 disables the floor, so "
                   "only exact reproductions (within one rounding step) pass; more estimators, a safer floor.")
@click.option("--noise-scope", type=click.Choice(["group", "case"]), default="group", show_default=True,
              help="group: one floor per output size, steps, dtype, quantization, LoRA mode and preview "
                   "encoding (cheap on hundreds of previews); case: a floor per gated case.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch CPU threads (default: torch's choice; 1 is fastest on a busy 2-core machine).")
@click.option("--no-progress", is_flag=True, help="No progress bar (CI logs).")
def run(cases, out, base, previews, config, ctrl_root, unpaired, device, select, offload, lpips_net, cache_dir,
        no_metrics,
        serial_metrics, no_report, thresholds, no_gate, noise_floor, noise_scope, threads, no_progress):
    """Run the cases of CASES (a YAML case file), write images, a results table and reports, and gate.

    Exit 0: every gated case passes; 1: a gated case is a mismatch or breaks a bound; 2: errors (bad
    input, a case that raised, nothing checked). With -k, the run folder's plan becomes the selection."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    from .distributed import current_world, settle
    from .gate import load_thresholds
    from .runner import Runner

    limits = load_thresholds(thresholds)  # a bad thresholds file fails before an hour of generation
    world = current_world()
    plan = _load_plan(cases, previews, config, ctrl_root, unpaired, select, show_notes=world.is_main)
    out = out or Path("reports") / cases.stem
    runner = Runner(out, base=base or plan.base, device=world.device(device), offload=offload, lpips_net=lpips_net,
                    progress=not no_progress and world.is_main, metrics=not no_metrics, shard=world.shard,
                    serial_metrics=serial_metrics, noise_floor=noise_floor, noise_scope=noise_scope,
                    noise_k_for=limits.noise_k, cache_dir=cache_dir)
    where = f" (process {world.rank + 1} of {world.size})" if world.size > 1 else ""
    click.echo(f"{len(plan.cases)} cases from {cases} -> {out}{where}", err=True)
    failure = None
    try:
        summary = runner.run(plan)
        floor = (f"; noise floor: {summary.noise_reruns} rerun(s), {summary.noise_seconds:.1f} s"
                 if summary.noise_reruns else "")
        reused = f" ({summary.reused} the same image as another case, drawn once)" if summary.reused else ""
        click.echo(f"computed {summary.computed}{reused}, resumed {summary.resumed} in {summary.seconds:.1f} s"
                   f"{floor}{where}", err=True)
        if summary.crashed:  # the others ran; the gate below reports them as errors
            failure_lines = "; ".join(summary.crashed[:3]) + (" ..." if len(summary.crashed) > 3 else "")
            click.secho(f"error: {len(summary.crashed)} case(s) raised: {failure_lines}", fg="red", err=True)
    except Exception as err:  # re-raised below, once every process has settled
        failure = err
    failures = settle(world, failure, lambda: runner.store.merge(limits.noise_k)) if world.size > 1 else []
    if failure is not None:
        raise failure
    if not world.is_main:
        return
    if failures:
        raise ParityError(failures[0] + (f" (and {len(failures) - 1} more process(es) failed)"
                                         if len(failures) > 1 else ""))
    click.echo(f"results: {out / 'results.csv'}")
    if no_report:
        from .gate import check as check_rows
        from .report.rows import load_rows
        from .results import planned_cases

        gate = check_rows(load_rows(out), limits, planned_cases(out))
        click.echo(gate.headline())
    else:
        from .report import write_reports

        reports = write_reports(out, thresholds)
        click.echo(reports["summary_text"])
        gate = reports["gate"]
    generation_only = not any(case.preview for case in plan.cases)
    if no_metrics:
        click.echo("note: --no-metrics: nothing was compared, so the gate does not decide the exit code", err=True)
    elif generation_only:
        click.echo("note: no case has a preview: generation only, nothing to verify", err=True)
    elif no_gate:
        click.echo("note: --no-gate: the exit code ignores the verdicts", err=True)
    _exit_for(gate, gate_verdicts=not (no_gate or no_metrics or generation_only))


@main.command("plan")
@click.argument("cases", type=click.Path(path_type=Path))
@plan_options
@click.option("--calibrate", is_flag=True,
              help="Without timings in the run folder, run one real case per pipeline variant into it first "
                   "(a later run resumes them) so the estimate has something to scale.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads for --calibrate.")
def plan_command(cases, out, base, previews, config, ctrl_root, unpaired, device, select, calibrate, threads):
    """List what `parity run CASES` would do: every expanded case, whether it is computed, the same image as
    another case (drawn once) or already done, and the estimated time of each stage. Loads no model."""
    from .dryrun import COMPUTE, RESUMED, dry_run, summary
    from .engine import Engine

    plan = _load_plan(cases, previews, config, ctrl_root, unpaired, select)
    out = out or Path("reports") / cases.stem
    engine = Engine(base or plan.base, device=device)
    planned, timed = dry_run(plan.cases, out, engine)
    if calibrate and any(p.status == COMPUTE and not p.seconds for p in planned):
        if threads:
            import torch

            torch.set_num_threads(threads)
        from .plan import Plan
        from .runner import Runner

        first = {}
        for item in planned:
            if item.status == COMPUTE:
                first.setdefault(item.case.pipeline_variant(), item.case)
        click.echo(f"calibrating: {len(first)} case(s) into {out}", err=True)
        Runner(out, engine=engine, progress=False, metrics=False).run(Plan(plan.source, list(first.values())))
        planned, timed = dry_run(plan.cases, out, engine)
    width = max(len(p.case.name) for p in planned)
    click.echo(f"{'case':{width}}  {'est. s':>7}  status")
    for item in planned:
        status = f"{item.status} {item.same_as}" if item.same_as else item.status
        total = "" if item.status == RESUMED or item.total is None else f"{item.total:.2f}"
        click.echo(f"{item.case.name:{width}}  {total:>7}  {status}")
    for line in summary(planned, timed):
        click.echo(line)


def _exit_for(gate, *, gate_verdicts: bool = True) -> None:
    """Exit 2 on errors or when nothing was checked, 1 when a gated case fails, else 0."""
    from .gate import EXIT_ERROR, EXIT_PASS

    code = gate.exit_code
    if not gate_verdicts:
        code = EXIT_ERROR if gate.count("error") else EXIT_PASS
    elif code == EXIT_ERROR and not gate.count("error"):
        click.secho("error: no gated case was checked against a preview: nothing was verified "
                    "(mark cases gated, give them previews, or pass --no-gate)", fg="red", err=True)
    sys.exit(code)


@main.command()
def knobs():
    """List every knob family and its alternatives."""
    from .knobs import families, family_doc

    for family, table in families().items():
        click.echo(f"{family}: {family_doc(family)}")
        for name, fn in table.items():
            doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
            click.echo(f"  {name:<12} {doc}")


@main.command()
def profiles():
    """List the serving profiles and the sources their values come from."""
    from .profiles import available, load_profile

    for name in available():
        profile = load_profile(name)
        click.echo(f"{profile.name}: {profile.description.strip()}")
        click.echo(f"  source: {' '.join(profile.source.split())}")


THRESHOLDS_HELP = "Gate thresholds YAML (default: the shipped parity/thresholds/default.yaml)."


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--thresholds", type=click.Path(dir_okay=False, path_type=Path), default=None, help=THRESHOLDS_HELP)
@select_option
def report(run_dir, thresholds, select):
    """Regenerate report.html, summary.md and junit.xml of RUN_DIR from its results alone."""
    from .report import write_reports

    click.echo(write_reports(run_dir, thresholds, select=select)["summary_text"])


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--thresholds", type=click.Path(dir_okay=False, path_type=Path), default=None, help=THRESHOLDS_HELP)
@select_option
def check(run_dir, thresholds, select):
    """Gate RUN_DIR. Exit 0: every gated case passes; 1: a gated case is a mismatch or breaks a bound;
    2: errors (a case that did not run or has no row, nothing checked, unreadable results or thresholds)."""
    from .format import violation_table
    from .gate import check as check_rows
    from .gate import load_thresholds
    from .report.rows import load_rows
    from .results import planned_cases, selected

    limits = load_thresholds(thresholds)
    rows, planned = selected(load_rows(run_dir), planned_cases(run_dir), select)
    result = check_rows(rows, limits, planned)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    if result.violations:
        click.echo(violation_table(result.violations))
    click.echo(f"{result.headline()} (thresholds: {limits.source})")
    _exit_for(result)


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--margin", type=click.FloatRange(min=0), default=0.1, show_default=True,
              help="Headroom beyond the worst value seen, as a fraction of its distance from a perfect score "
                   "(0.1: an LPIPS of 0.02 allows 0.022).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Thresholds file to write (default: print it).")
def calibrate(run_dir, margin, out):
    """Write a thresholds file from RUN_DIR, a run judged good: per profile and per case group, the
    worst value of each metric plus a margin, and the verdicts seen. Gate later runs with it
    (`parity check RUN --thresholds FILE`) to catch any drift from this one."""
    from .calibrate import calibrate as make_thresholds
    from .gate import load_thresholds

    text = make_thresholds(run_dir, margin)
    if out is None:
        click.echo(text, nl=False)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    load_thresholds(out)  # what was written must read back
    click.echo(f"thresholds -> {out}", err=True)


from .importers import FORMATS as REQUEST_FORMATS  # noqa: E402 (cheap: converters load on demand)


@main.command("import")
@click.argument("request", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", required=True, type=click.Choice(list(REQUEST_FORMATS)),
              help="The API the request body was sent to (prodia: a Prodia Kontext [dev] job), or comfyui for a "
                   "ComfyUI workflow (API or UI format JSON, or a PNG ComfyUI saved). A JSON array of bodies (as "
                   "`parity advise` writes) imports every body.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Case file to write (default: print it; paths in it are then absolute).")
@click.option("--control-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder with local copies of the files the request links by http(s) URL (control images, "
                   "LoRAs), matched by file name; base64 images are decoded into it (default: beside --out). "
                   "For a ComfyUI workflow: the folder of its LoadImage images (ComfyUI/input).")
@click.option("--lora-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder in which LoRAs named by a relative path are found (ComfyUI/models/loras).")
@click.option("--base", default=None,
              help="Base model written into the case file: a diffusers folder or a model id (for a ComfyUI "
                   "workflow, the model its UNETLoader file holds).")
@click.option("--input", "inputs", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The image a body does not carry (a Prodia job's multipart `input` part); repeat it for a JSON "
                   "array of jobs, one per job in order, or give one for all.")
def import_request(request, fmt, out, control_dir, lora_dir, base, inputs):
    """Turn REQUEST (a JSON body sent to a serving API, or a ComfyUI workflow) into a case file of that
    system's profile."""
    from .importers import import_request as convert
    from .plan import load_plan

    text, notes = convert(request, fmt, out=out, control_dir=control_dir, lora_dir=lora_dir, base=base,
                          inputs=inputs)
    for note in notes:
        click.echo(f"note: {note}", err=True)
    if out is None:
        click.echo(text, nl=False)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    plan = load_plan(out)  # the file must expand: an importer bug fails here, not at `parity run`
    click.echo(f"{len(plan.cases)} case(s) -> {out}", err=True)


DEMO_RUNS = Path(__file__).resolve().parent / "data" / "demo-runs"


def _train_steps(value: str):
    """last | first | comma-separated training steps."""
    if value in ("last", "first"):
        return value
    try:
        steps = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        steps = []
    if not steps:
        raise click.BadParameter(f'"{value}" is neither last, first nor training steps such as 10,20')
    return steps


@main.command()
@click.option("--profile", "profile", required=True,
              help="The serving system: fal, oxen, lumenfall, prodia-dev, aitk-inference or comfyui "
                   "(`parity profiles` lists them).")
@click.option("--previews", "previews", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="AI Toolkit run folder whose previews to match; repeatable (default: the demo runs "
                   "parity/data/demo-runs/*).")
@click.option("--train-steps", default="last", show_default=True,
              help="Which previews of each run: last, first, or training steps such as 10,20.")
@click.option("--config", "config", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="AI Toolkit job config, when --previews is a bare samples/ folder.")
@click.option("--ctrl-root", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder in which to find control images whose training-machine paths do not exist here.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The request file to write, in the system's own format: a JSON array of request bodies (one per "
                   "preview) or, for comfyui, one API-format workflow with a branch per preview, its images and "
                   "LoRAs in OUT-files/ (default: RUN_DIR/<profile>.json).")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("reports/advise"),
              show_default=True, help="Run folder of every case the advice measures; rerunning resumes, and "
                                      "profiles advised into one folder share AI Toolkit's own redraws.")
@click.option("--base", default=None, help="Base model the previews were drawn with (default: embedded for the demo "
                                           "runs, black-forest-labs/FLUX.1-Kontext-dev with --previews).")
@click.option("--search-previews", type=click.IntRange(min=1), default=2, show_default=True,
              help="How many previews the search measures each choice on (taken from the runs in turn); the advised "
                   "request is then checked on every preview.")
@click.option("--usual-previews", type=click.IntRange(min=0), default=1, show_default=True,
              help="Previews redrawn at the real model's usual settings (1024x1024, 20 steps, guidance 4) to "
                   "estimate the gap there; 0 skips the estimate.")
@click.option("--fields", default=None,
              help="Comma-separated request fields to search (default: all the system exposes); the others keep "
                   "the preview's value or the system's default.")
@click.option("--no-attribution", is_flag=True,
              help="Skip measuring which fixed behaviours of the system cause the remaining gap.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N | mps")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch CPU threads (default: torch's choice; 1 is fastest on a busy 2-core machine).")
def advise(profile, previews, train_steps, config, ctrl_root, out, run_dir, base, search_previews, usual_previews,
           fields, no_attribution, device, threads):
    """Search the request fields PROFILE's system exposes for the request that best redraws the previews, write
    it in the system's format, and say what gap remains, which fixed behaviours cause it, and what it would be
    at the real model's usual settings."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    from .advise import Advisor, select_previews

    runs = [str(p) for p in previews] or [str(p) for p in sorted(DEMO_RUNS.iterdir()) if p.is_dir()]
    base = base or ("black-forest-labs/FLUX.1-Kontext-dev" if previews else "embedded")
    chosen = select_previews(runs, _train_steps(train_steps), config=str(config) if config else None,
                             ctrl_root=str(ctrl_root) if ctrl_root else None)
    names = [f.strip() for f in fields.split(",") if f.strip()] if fields else None
    advisor = Advisor(profile, chosen, out=out or run_dir / f"{profile}.json", run_dir=run_dir, base=base,
                      device=device, search_previews=search_previews, usual_previews=usual_previews,
                      attribution=not no_attribution, fields=names, log=lambda text: click.echo(text, err=True))
    from .advise import summary

    click.echo(summary(advisor.advise()))


if __name__ == "__main__":
    main()
