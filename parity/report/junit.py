"""junit.xml: one testcase per case, so CI test dashboards show which reproduction broke.

classname is the case's tag_run (else its profile); a gate violation is a <failure> naming
metric, value and threshold (a verdict the gate does not allow names the verdict and its reason);
a case that did not run, or has no row at all, is an <error>. Cases with gated false
(ablations and serving setups expected to differ) are <skipped> with their metrics in the
message: the gate did not judge them, and "skipped" says exactly that, where "passed" would
claim a check that never happened.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from ..files import metric_value
from ..gate import GateCase
from ..format import fmt
from .data import ReportData

SHOWN = ("ssim", "lpips", "psnr", "floor_ssim", "floor_lpips", "floor_psnr", "noise_mean_abs", "noise_max_abs",
         "lora_effect_mean_abs", "lora_gap_fraction", "time_total_s")
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _text(value) -> str:
    """XML 1.0 cannot hold most control characters, even escaped; an error message might."""
    return _NOT_XML.sub("?", str(value))


def _metrics(case: GateCase) -> str:
    verdict = f"verdict={case.verdict.verdict} ({case.verdict.reason})" if case.verdict else ""
    return ", ".join(filter(None, [verdict, *(f"{m}={fmt(v)}" for m in SHOWN
                                             if (v := metric_value(case.row, m)) is not None)]))


def _testcase(verdict: GateCase) -> ET.Element:
    row = verdict.row
    case = ET.Element("testcase", classname=_text(row.get("tag_run") or row.get("tag_profile") or "parity"),
                      name=_text(row["name"]), time=f"{metric_value(row, 'time_total_s') or 0.0:.3f}")
    if verdict.status == "error":
        error = ET.SubElement(case, "error", message=_text(verdict.violations[0].value), type="CaseError")
        error.text = _text(row.get("error") or "")
    elif verdict.status == "fail":
        failure = ET.SubElement(case, "failure", message=_text("; ".join(v.message() for v in verdict.violations)),
                                type="ThresholdViolation")
        failure.text = _text("\n".join(v.message() for v in verdict.violations))
    elif verdict.status == "ungated":
        what = f"ablation of {row['tag_ablation']}" if row.get("tag_ablation") else "gated: false"
        ET.SubElement(case, "skipped", message=_text("; ".join(filter(None, [f"not gated ({what})",
                                                                              _metrics(verdict)]))))
    if verdict.status != "ungated":
        ET.SubElement(case, "system-out").text = _text(_metrics(verdict))
    return case


def render(data: ReportData) -> bytes:
    gate = data.gate
    counts = {"tests": str(len(gate.cases)), "failures": str(gate.count("fail")),
              "errors": str(gate.count("error")), "skipped": str(gate.count("ungated"))}
    total = sum(metric_value(v.row, "time_total_s") or 0.0 for v in gate.cases)
    suites = ET.Element("testsuites", name="kontext-parity", time=f"{total:.3f}", **counts)
    suite = ET.SubElement(suites, "testsuite", name=_text(data.run_dir.resolve().name), time=f"{total:.3f}",
                          timestamp=data.generated.isoformat(timespec="seconds"), **counts)
    properties = ET.SubElement(suite, "properties")
    ET.SubElement(properties, "property", name="thresholds", value=_text(gate.source))
    suite.extend(_testcase(v) for v in gate.cases)
    ET.indent(suites)
    return ET.tostring(suites, encoding="utf-8", xml_declaration=True)
