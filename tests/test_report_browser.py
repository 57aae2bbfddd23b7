"""report.html in a real browser: every image loads, the page renders, the table sorts.

Headless Chromium is driven through its command line only (--dump-dom, --screenshot), so no
browser-automation package is needed. The page itself writes how many of its images loaded
into #images-loaded on the load event; --dump-dom prints the DOM after that event.
Skipped only when no Chromium binary exists (`apt-get install chromium`).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from test_report import demo_rows, make_run

from parity.report import write_reports

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars")


def _chromium() -> str:
    found = next((path for name in CANDIDATES if (path := shutil.which(name))), None)
    if found is None and Path("/usr/bin/chromium").is_file():
        found = "/usr/bin/chromium"
    if found is None:
        pytest.skip("no Chromium binary (chromium, chromium-browser or google-chrome) on PATH")
    return found


def _browse(tmp_path: Path, *args: str) -> str:
    command = [_chromium(), *FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture()
def report(tmp_path) -> Path:
    run = make_run(tmp_path, demo_rows())
    return write_reports(run)["html"]


def test_every_image_loads_and_page_renders(report, tmp_path):
    dom = _browse(tmp_path, "--dump-dom", report.as_uri())
    counter = re.search(r'id="images-loaded" data-loaded="(\d+)" data-total="(\d+)"', dom)
    assert counter, "the page's load handler did not run"
    loaded, total = map(int, counter.groups())
    expected = report.read_text().count("<img ")
    # charts; compared cases: 5 in the grid + preview and output in the flip view; the case without a preview;
    # the ablation gallery: 2 knobs x 2 previews x (preview, baseline, the knob's value)
    assert total == expected == 2 + 10 * (5 + 2) + 2 + 2 * 2 * 3
    assert loaded == total
    shot = tmp_path / "report.png"
    _browse(tmp_path, f"--screenshot={shot}", "--window-size=1400,2000", report.as_uri())
    image = Image.open(shot).convert("L")
    assert image.size == (1400, 2000)
    low, high = image.getextrema()
    assert high - low > 100  # not a blank page


def test_summary_table_sorts_by_a_metric_column(report, tmp_path):
    """A harness page clicks the LPIPS header inside an iframe and writes the row order out."""
    harness = report.parent / "sort-harness.html"
    harness.write_text("""<!doctype html><iframe id="f" src="report.html"></iframe><pre id="out"></pre><script>
document.getElementById("f").addEventListener("load", function () {
  var doc = this.contentDocument, orders = [];
  var head = [].filter.call(doc.querySelectorAll("#summary th"), function (th) { return th.textContent === "LPIPS"; })[0];
  for (var i = 0; i < 2; i++) {
    head.click();
    var rows = doc.querySelectorAll("#summary tbody tr");
    orders.push([].map.call(rows, function (r) { return r.cells[0].textContent; }));
  }
  document.getElementById("out").textContent = JSON.stringify(orders);
});</script>""")
    dom = _browse(tmp_path, "--allow-file-access-from-files", "--dump-dom", harness.as_uri())
    match = re.search(r'<pre id="out">(.*?)</pre>', dom, re.S)
    assert match and match.group(1), "the harness could not reach the report"
    ascending, descending = json.loads(match.group(1).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))
    lpips = {r["name"]: r["lpips"] for r in demo_rows() if "lpips" in r}
    assert ascending[-2:] == descending[-2:] == ["no-preview", "broken"]  # no value: last either way
    assert [lpips[n] for n in ascending[:-2]] == sorted(lpips.values())
    assert [lpips[n] for n in descending[:-2]] == sorted(lpips.values(), reverse=True)


def test_a_case_card_flips_between_output_and_preview(report, tmp_path):
    """Moving the slider uncovers more or less of the output laid over the preview, in place."""
    harness = report.parent / "flip-harness.html"
    harness.write_text("""<!doctype html><iframe id="f" src="report.html"></iframe><pre id="out"></pre><script>
document.getElementById("f").addEventListener("load", function () {
  var box = this.contentDocument.querySelector(".flip-box"), slider = box.querySelector("input"), seen = [];
  [0, 30, 100].forEach(function (v) {
    slider.value = v;
    slider.dispatchEvent(new Event("input"));
    seen.push([box.querySelector("img.over").style.clipPath, box.querySelector(".handle").style.left]);
  });
  document.getElementById("out").textContent = JSON.stringify(seen);
});</script>""")
    dom = _browse(tmp_path, "--allow-file-access-from-files", "--dump-dom", harness.as_uri())
    match = re.search(r'<pre id="out">(.*?)</pre>', dom, re.S)
    assert match and match.group(1), "the harness could not reach the report"
    seen = json.loads(match.group(1))
    assert [left for _, left in seen] == ["0%", "30%", "100%"]
    assert seen[0][0] == "inset(0px 100% 0px 0px)" and seen[2][0] == "inset(0px 0% 0px 0px)"
