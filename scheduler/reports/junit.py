"""An experiment as JUnit XML, for CI systems that show test reports.

One testsuite named after the experiment; one testcase per (item, repeat) and scorer,
named "<item key>[<repeat>] <scorer label>": a failed score is a <failure>, a score that
could not be computed an <error>, an item whose target failed an <error> per scorer, and
an item without a result yet is <skipped/>.
"""

from __future__ import annotations

import os
import re
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from models.tables import ResultStatus
from scheduler.reports.experiment import ItemRow

MESSAGE_CAP = 1000  # characters of a message attribute; the element text has it all
NO_SCORER = "target"  # the testcase label when the experiment has no scorer
_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _clean(text: Any) -> str:
    """`text` as a string XML 1.0 can hold (control characters dropped)."""
    return _INVALID_XML.sub("", "" if text is None else str(text))


def _seconds(row: ItemRow) -> float:
    return (row.latency_ms or 0.0) / 1000.0


def _outcome(case: ET.Element, row: ItemRow, label: str) -> str:
    """Add the child saying how this testcase ended; return "passed", "failure", "error"
    or "skipped"."""
    if row.status is None:
        ET.SubElement(case, "skipped", message="no result yet (the item is pending)")
        return "skipped"
    if row.status == ResultStatus.ERROR:
        message = f"{row.error_type or 'error'}: {row.error or 'the target failed'}"
        error = ET.SubElement(case, "error", message=_clean(message)[:MESSAGE_CAP],
                              type=_clean(row.error_type or "TargetError"))
        error.text = _clean(message)
        return "error"
    if label == NO_SCORER:
        return "passed"
    score = row.scores.get(label)
    if score is None or score.get("value") is None:
        why = (score or {}).get("error") or "no score was written for this item"
        error = ET.SubElement(case, "error", message=_clean(f"not scored: {why}")[:MESSAGE_CAP],
                              type="Unscored")
        error.text = _clean(f"{label} could not score this output: {why}")
        return "error"
    if score.get("passed"):
        return "passed"
    explanation = score.get("explanation") or ""
    failure = ET.SubElement(case, "failure", message=_clean(explanation)[:MESSAGE_CAP],
                            type="ScoreFailed")
    failure.text = _clean(f"value: {score['value']}\nexplanation: {explanation}\n"
                          f"output: {row.output}")
    return "failure"


def build_junit(report: dict[str, Any], rows: list[ItemRow]) -> ET.ElementTree:
    """The JUnit document of an experiment (report: experiment_report's dict)."""
    name = str(report.get("name") or f"experiment-{report.get('experiment_id')}")
    labels = sorted(set(report.get("scorers") or {}) | {k for r in rows for k in r.scores})
    labels = labels or [NO_SCORER]
    root = ET.Element("testsuites", name=_clean(f"evalq {name}"))
    suite = ET.SubElement(root, "testsuite", name=_clean(name))
    props = ET.SubElement(suite, "properties")
    for key in ("experiment_id", "model", "status"):
        ET.SubElement(props, "property", name=key, value=_clean(report.get(key)))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    plural = {"failure": "failures", "error": "errors", "skipped": "skipped"}
    for row in sorted(rows, key=lambda r: (r.position, r.repeat)):
        for label in labels:
            case = ET.SubElement(suite, "testcase", classname=_clean(f"evalq.{name}"),
                                 name=_clean(f"{row.key}[{row.repeat}] {label}"),
                                 time=f"{_seconds(row):.3f}")
            outcome = _outcome(case, row, label)
            counts["tests"] += 1
            if outcome in plural:
                counts[plural[outcome]] += 1
    wall = report.get("wall_time_s")
    total = wall if wall is not None else sum(_seconds(r) for r in rows)
    for element in (root, suite):
        element.attrib.update({k: str(v) for k, v in counts.items()})
        element.set("time", f"{total:.3f}")
    ET.indent(root)
    return ET.ElementTree(root)


def write_junit(report: dict[str, Any], rows: list[ItemRow], path: str | os.PathLike[str]
                ) -> None:
    """Write the JUnit XML of an experiment to `path`, atomically (a temporary file in
    the same directory, then os.replace): a reader never sees half a file."""
    target = Path(path)
    tree = build_junit(report, rows)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a report is for others to read
        with os.fdopen(fd, "wb") as f:
            tree.write(f, encoding="utf-8", xml_declaration=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
