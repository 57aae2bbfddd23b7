"""Reports from a synthetic run folder (rows and tiny images, no model): files, escaping, JUnit,
attribution, and `parity report` regenerating everything from the results alone."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from parity.cli import main
from parity.errors import ParityError
from parity.report import write_reports
from parity.report.attribution import ablation_deltas, attribution
from parity.report.rows import load_rows
from parity.results import PLAN, ResultsStore

ROOT = Path(__file__).resolve().parent.parent
XSS_NAME = "tiny/<script>alert(1)</script>/aitk-preview"
XSS_PROMPT = '"quotes" & <b>'


def _png(path: Path, color, size=(48, 36)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return str(path)


def row(name: str, *, lpips=0.02, ssim=0.97, preview=True, **extra) -> dict:
    """A results row as the runner writes it; metrics only when there is a preview."""
    data = {"name": name, "run_key": f"k{abs(hash(name)) % 10**8}", "status": "ok", "prompt": "make it a red cat",
            "steps": 4, "guidance": 3.5, "gated": True, "tag_profile": "aitk-preview",
            "eff_width": 48, "eff_height": 36, "time_text_encode_s": 0.2, "time_control_encode_s": 0.1,
            "time_denoise_s": 1.5, "time_decode_s": 0.3, "time_total_s": 2.2, "mem_peak_rss_mb": 400.0}
    if preview:
        data.update(ssim=ssim, lpips=lpips, psnr=30.0, mean_abs=2.0, max_abs=40.0, size_mismatch=False,
                    floor_ssim=0.99, floor_lpips=0.01, floor_psnr=40.0, floor_mean_abs=1.0, floor_max_abs=20.0,
                    preview_jpeg_quality=75, noise_mean_abs=0.6, noise_max_abs=12.0, noise_group="g128")
    data.update(extra)
    return data


def make_run(root: Path, rows: list[dict]) -> Path:
    """A run folder holding ``rows``, their images and the plan; previews live outside it, as in real runs."""
    run = root / "run"
    store = ResultsStore(run)
    planned = []
    for i, data in enumerate(rows):
        data = dict(data)
        if data["status"] == "ok":
            stem = f"case{i}"
            data["output_file"] = f"outputs/{stem}.png"
            data["control_file"] = f"controls/{stem}.png"
            _png(run / data["output_file"], (200, 40 + 20 * i, 40))
            _png(run / data["control_file"], (40, 40, 200), size=(60, 30))
            data.setdefault("preview_file", "")
            if "lpips" in data:
                preview = root / "aitk" / "samples" / f"{i}.jpg"
                preview.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (48, 36), (190, 50, 60 + 10 * i)).save(preview, quality=75)
                data["preview_file"] = str(preview)
                data["heatmap_file"] = f"diffs/{stem}.absdiff.png"
                data["ssim_map_file"] = f"diffs/{stem}.ssim.png"
                _png(run / data["heatmap_file"], (250, 220, 0))
                _png(run / data["ssim_map_file"], (0, 120, 120))
        store.append(data)
        planned.append({"name": data["name"], "preview": data.get("preview_file") or None,
                        "gated": data.get("gated", True)})
    (run / PLAN).write_text(json.dumps({"source": "cases.yaml", "cases": planned}))
    return run


def demo_rows() -> list[dict]:
    """Two previews, each with a gated baseline and two ablations; a serving profile; an error; odd names."""
    rows = []
    for group, base_lpips in (("tiny_bf16/000000000_0", 0.02), ("tiny_bf16/000000010_1", 0.04)):
        tags = {"tag_run": "tiny_bf16", "tag_step": group[-11:-2]}
        rows.append(row(f"{group}/aitk-preview", lpips=base_lpips, ssim=0.97, tag_ablation="baseline", **tags))
        rows.append(row(f"{group}/aitk-preview[guidance=2.5]", lpips=base_lpips + 0.10, ssim=0.90, gated=False,
                        tag_ablation="guidance", tag_ablation_value="2.5", tag_ablation_of=f"{group}/aitk-preview",
                        **tags))
        rows.append(row(f"{group}/aitk-preview[control_resize=lanczos]", lpips=base_lpips + 0.01, ssim=0.96,
                        gated=False, tag_ablation="control_resize", tag_ablation_value="lanczos",
                        tag_ablation_of=f"{group}/aitk-preview", **tags))
        rows.append(row(f"{group}/diffusers-default", lpips=0.3, ssim=0.6, gated=False,
                        tag_profile="diffusers-default", **tags))
    rows.append(row("tiny_bf16/000000010_2/aitk-preview", lpips=0.2, ssim=0.8, floor_lpips=0.15, floor_mean_abs=3.0,
                    floor_max_abs=60.0, tag_run="tiny_bf16"))  # a mismatch: 5x the noise floor
    rows.append(row(XSS_NAME, prompt=XSS_PROMPT, tag_run="tiny"))
    rows.append(row("no-preview", preview=False, tag_run="tiny"))
    rows.append({"name": "broken", "run_key": "kbroken", "status": "error", "gated": True, "tag_run": "tiny",
                 "error": "LoRA <b>not</b> found & gone", "prompt": XSS_PROMPT})
    return rows


@pytest.fixture()
def run_dir(tmp_path) -> Path:
    return make_run(tmp_path, demo_rows())


def test_write_reports_writes_every_file(run_dir):
    paths = write_reports(run_dir)
    for key in ("html", "markdown", "junit"):
        assert paths[key].is_file() and paths[key].parent == run_dir
    assert set(paths["charts"]) == {"attribution", "latency"}
    assert all(p.is_file() and p.read_bytes()[:4] == b"\x89PNG" for p in paths["charts"].values())
    assert paths["passed"] is False
    summary = paths["summary_text"]
    assert len(summary.splitlines()) <= 25
    assert "11 ok, 1 error" in summary and "gate ERROR" in summary and str(paths["html"]) in summary
    assert "1. guidance" in summary and "2. control_resize" in summary


def test_html_contains_grid_table_and_charts(run_dir):
    page = write_reports(run_dir)["html"].read_text()
    assert 'class="sortable"' in page and "data-sort=" in page
    assert "report_assets/attribution.png" in page and "report_assets/latency.png" in page
    for caption in ("control", "preview", "output", "abs diff", "SSIM map"):
        assert f"<figcaption>{caption}</figcaption>" in page
    # previews are copied into the run folder and referenced relatively
    assert "report_assets/previews/" in page and str(run_dir.parent / "aitk") not in page.split("<h2>Cases")[1]


def test_user_strings_are_escaped_everywhere(run_dir):
    paths = write_reports(run_dir)
    page = paths["html"].read_text()
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert XSS_PROMPT not in page and "&#34;quotes&#34; &amp; &lt;b&gt;" in page
    assert "<b>not</b>" not in page and "LoRA &lt;b&gt;not&lt;/b&gt; found &amp; gone" in page
    assert page.count("<script>") == 1  # only the page's own
    markdown = paths["markdown"].read_text()
    assert "<script>" not in markdown and "&lt;script&gt;alert\\(1\\)&lt;/script&gt;" in markdown
    assert "<b>" not in markdown
    junit = ET.parse(paths["junit"])  # parses: the XML escaped it
    assert any(case.get("name") == XSS_NAME for case in junit.iter("testcase"))


def test_junit_has_one_testcase_per_row(run_dir):
    root = ET.parse(write_reports(run_dir)["junit"]).getroot()
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors"), root.get("skipped")) == ("12", "1", "1", "6")
    cases = {case.get("name"): case for case in root.iter("testcase")}
    assert len(cases) == 12
    failed = cases["tiny_bf16/000000010_2/aitk-preview"]
    assert failed.get("classname") == "tiny_bf16"
    message = failed.find("failure").get("message")
    assert "verdict = mismatch: mean abs 3 > 1.25" in message and "exact | noise (verdicts)" in message
    assert "verdict=mismatch" in failed.find("system-out").text
    assert "found & gone" in cases["broken"].find("error").get("message")
    skipped = cases["tiny_bf16/000000000_0/aitk-preview[guidance=2.5]"].find("skipped")
    assert "ablation of guidance" in skipped.get("message") and "lpips=0.12" in skipped.get("message")
    passed = cases["tiny_bf16/000000000_0/aitk-preview"]
    assert passed.find("failure") is None and passed.find("skipped") is None
    assert cases["no-preview"].get("classname") == "tiny"


def test_markdown_has_gate_worst_cases_and_attribution(run_dir):
    text = write_reports(run_dir)["markdown"].read_text()
    assert "**gate ERROR: 4 pass, 1 fail, 1 error, 6 not gated (gated verdicts: 3 noise, 1 mismatch)**" in text
    assert "| gated cases | 0 | 3 | 1 |" in text
    worst = text.split("## Worst cases by LPIPS")[1].split("##")[0]
    assert worst.index("diffusers-default") < worst.index("000000010\\_2/aitk-preview")  # _ escaped
    attribution_table = text.split("## What drives the mismatch")[1]
    assert attribution_table.index("guidance") < attribution_table.index("control\\_resize")
    assert "## Errors" in text


def test_attribution_ranks_knobs_by_mean_abs_delta_lpips():
    rows = []
    for group, shift in (("a/p0", 0.0), ("a/p1", 0.05)):
        rows.append(row(f"{group}/v", lpips=0.1 + shift, ssim=0.9, tag_ablation="baseline"))
        of = {"tag_ablation_of": f"{group}/v"}
        rows.append(row(f"{group}/v[dtype=fp32]", lpips=0.1 + shift - 0.01, ssim=0.91,
                        tag_ablation="dtype", tag_ablation_value="fp32", **of))
        rows.append(row(f"{group}/v[snap=floor32]", lpips=0.1 + shift + 0.2, ssim=0.7,
                        tag_ablation="snap", tag_ablation_value="floor32", **of))
        rows.append(row(f"{group}/v[guidance=2.5]", lpips=0.1 + shift - 0.05 - shift, ssim=0.9,
                        tag_ablation="guidance", tag_ablation_value="2.5", **of))
    # no baseline for this preview
    rows.append(row("a/p2/v[snap=floor32]", lpips=0.9, tag_ablation="snap", tag_ablation_value="floor32",
                    tag_ablation_of="a/p2/v"))
    rows.append(row("a/p0/v[steps=8]", preview=False, tag_ablation="steps", tag_ablation_value="8",
                    tag_ablation_of="a/p0/v"))  # no metrics
    deltas = ablation_deltas(rows)
    assert {d["baseline"] for d in deltas} == {"a/p0/v", "a/p1/v"} and len(deltas) == 6
    table = attribution(deltas)
    assert [t["knob"] for t in table] == ["snap", "guidance", "dtype"]
    snap = table[0]
    assert snap["n"] == 2 and snap["mean_abs_delta_lpips"] == pytest.approx(0.2)
    assert snap["mean_delta_ssim"] == pytest.approx(-0.2) and snap["worst_value"] == "floor32"
    guidance = table[1]
    assert guidance["mean_abs_delta_lpips"] == pytest.approx(0.075)
    assert guidance["worst_delta_lpips"] == pytest.approx(-0.1)


def test_attribution_follows_the_baseline_the_plan_recorded(tmp_path):
    """A variant of its own names its baseline variant; the plan turns it into the full case name."""
    from parity.plan import load_plan

    spec = {"previews": {"runs": [str(ROOT / "tests" / "data" / "tiny-runs" / "tiny_bf16")], "train_steps": "last"},
            "variants": [{"name": "base", "ablate": {"guidance": [2.5]}},
                         {"name": "my-try", "set": {"dtype": "fp32"},
                          "tags": {"ablation": "dtype", "ablation_value": "fp32", "ablation_of": "base"}}]}
    path = tmp_path / "cases.yaml"
    path.write_text(yaml.safe_dump(spec))
    tags = {c.name: dict(c.tags) for c in load_plan(path).cases}
    assert tags["tiny_bf16/step20/p0/my-try"]["ablation_of"] == "tiny_bf16/step20/p0/base"
    assert tags["tiny_bf16/step20/p0/base[guidance=2.5]"]["ablation_of"] == "tiny_bf16/step20/p0/base"
    rows = [row("x/ref", lpips=0.1, tag_ablation="baseline"), row("x/other", lpips=0.5, tag_ablation="baseline"),
            row("x/try-fp32", lpips=0.3, tag_ablation="dtype", tag_ablation_value="fp32", tag_ablation_of="x/ref")]
    (delta,) = ablation_deltas(rows)
    assert delta["baseline"] == "x/ref" and delta["delta_lpips"] == pytest.approx(0.2)


def test_report_command_regenerates_from_results_alone(run_dir, tmp_path):
    write_reports(run_dir)
    # only results.jsonl and the run's own images remain; the AI Toolkit previews are gone
    for name in ("report.html", "summary.md", "junit.xml"):
        (run_dir / name).unlink()
    for chart in (run_dir / "report_assets").glob("*.png"):
        chart.unlink()
    for preview in (tmp_path / "aitk" / "samples").glob("*.jpg"):
        preview.unlink()
    result = CliRunner().invoke(main, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "gate ERROR" in result.output and "report.html" in result.output
    page = (run_dir / "report.html").read_text()
    assert (run_dir / "summary.md").is_file() and (run_dir / "junit.xml").is_file()
    assert (run_dir / "report_assets" / "latency.png").is_file()
    assert page.count("report_assets/previews/") >= 10  # the earlier copies still show


def test_report_command_with_thresholds_and_errors(run_dir, tmp_path):
    loose = tmp_path / "loose.yaml"
    loose.write_text("defaults: {lpips_max: 1.0, verdicts: [exact, noise, mismatch]}\n")
    result = CliRunner().invoke(main, ["report", str(run_dir), "--thresholds", str(loose)])
    assert result.exit_code == 0 and "1 fail" not in result.output and str(loose) in result.output
    missing = CliRunner().invoke(main, ["report", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "not a run folder" in missing.output


def test_rows_tolerate_kills_but_not_corruption(tmp_path):
    run = make_run(tmp_path, [row("a"), row("b")])
    results = run / "results.jsonl"
    lines = results.read_text().splitlines()
    # killed mid-append, then resumed: the next append starts a fresh line; a new fragment ends the file
    results.write_text(lines[0] + "\n" + lines[1][:30])
    ResultsStore(run).append(json.loads(lines[1]))
    with open(results, "a") as handle:
        handle.write(lines[1][:20])
    assert [r["name"] for r in load_rows(run)] == ["a", "b"]
    results.write_text(lines[0] + "\n" + "garbage\n" + lines[1] + "\n")
    with pytest.raises(ParityError, match="line 2"):
        load_rows(run)
    results.write_text(json.dumps({"no": "name"}) + "\n")
    with pytest.raises(ParityError, match="needs a name"):
        load_rows(run)


def test_charts_of_thousands_of_rows_stay_within_matplotlib_limits(tmp_path):
    """Beyond ~2,500 bars a chart would exceed matplotlib's 2^16 px: the charts show the top MAX_BARS only."""
    from parity.report import charts

    rows = [row(f"case{i}", time_total_s=1.0 + i / 1000) for i in range(3000)]
    effects = [{"knob": f"knob{i // 3}", "value": str(i % 3), "delta_lpips": 0.01, "delta_ssim": -0.01}
               for i in range(3000)]
    figures = []
    real_save = charts._save
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(charts, "_save", lambda fig, *args: figures.append(fig) or real_save(fig, *args))
        for chart in (charts.latency_chart(tmp_path, rows), charts.attribution_chart(tmp_path, effects)):
            with Image.open(tmp_path / chart) as image:
                assert image.height < 100 * (2 + charts.ROW_INCHES * charts.MAX_BARS)
    latency, attribution_figure = figures
    assert latency.axes[0].get_title() == "the 40 slowest of 3000 cases"
    labels = [label.get_text() for label in latency.axes[0].get_yticklabels()]
    assert sorted(labels) == sorted(f"case{i}" for i in range(2960, 3000))
    assert attribution_figure.get_suptitle() == "the 40 knob=value effects of the most influential knobs (of 3000)"
    first_bars = [label.get_text() for label in attribution_figure.axes[0].get_yticklabels()]
    assert first_bars[-1] == "knob0=0" and first_bars[0] == "knob13=0"  # the first 40, top to bottom


def test_case_warnings_are_shown_escaped(tmp_path):
    warning = 'control image: mode RGBA <with> "transparent" pixels'
    run = make_run(tmp_path, [row("a", warnings=[warning]), row("b")])
    page = write_reports(run)["html"].read_text()
    assert '<ul class="warnings"><li>control image: mode RGBA &lt;with&gt; &#34;transparent&#34; pixels</li></ul>' in page
    assert page.count('<ul class="warnings">') == 1


def test_a_results_row_cannot_pull_outside_files_into_the_report(tmp_path):
    """A results file from someone else names a secret as its preview: it is not copied into report_assets."""
    secret = tmp_path / "home" / "secret.png"
    secret.parent.mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(secret)
    text_secret = tmp_path / "home" / "id_rsa"
    text_secret.write_text("PRIVATE KEY")
    run = make_run(tmp_path, [row("a"), row("b"), row("c")])
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    rows[1]["preview_file"], rows[2]["preview_file"] = str(secret), str(text_secret)
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_reports(run)
    copies = list((run / "report_assets" / "previews").iterdir())
    assert len(copies) == 1  # the genuine preview of "a", from the plan's preview folder
    assert all(c.read_bytes() not in (secret.read_bytes(), b"PRIVATE KEY") for c in copies)


def test_csv_cells_never_start_a_formula(tmp_path):
    import pandas as pd

    run = make_run(tmp_path, [row("=HYPERLINK(\"http://x\")", prompt="+cmd|' /C calc'!A0"), row("b", prompt="-2+3")])
    ResultsStore(run).write_tables()
    frame = pd.read_csv(run / "results.csv")
    assert list(frame["name"])[0].startswith("'=") and all(p.startswith("'") for p in frame["prompt"])
    assert json.loads((run / "results.json").read_text())[0]["name"].startswith("=")  # JSON keeps the text


def test_markdown_cells_escape_everything_markdown_means():
    from parity.report.markdown import cell

    assert cell("**bold** [link](http://x) @user #12 `code` a|b ~x~ <img>") == \
        "\\*\\*bold\\*\\* \\[link\\]\\(http\\://x\\) \\@user \\#12 \\`code\\` a\\|b \\~x\\~ &lt;img&gt;"
    assert cell(0.25) == "0.25" and cell("line\nbreak") == "line break"


def test_the_ablation_shows_as_pictures_per_knob(run_dir):
    page = write_reports(run_dir)["html"].read_text()
    gallery = page.split("The ablation, as pictures")[1].split("<h2>")[0]
    assert 'data-knob="guidance"' in gallery and 'data-knob="control_resize"' in gallery
    assert gallery.index('data-knob="guidance"') < gallery.index('data-knob="control_resize"')  # ranked
    guidance = gallery.split('data-knob="guidance"')[1].split("</table>")[0]
    assert guidance.count("<tr>") == 3  # header + one line per preview
    assert guidance.count("report_assets/previews/") == 2 and guidance.count("outputs/") == 4
    assert "<th>2.5</th>" in guidance
