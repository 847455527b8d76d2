"""Self-contained HTML reports, opened in a real headless Chromium.

The experiment is a real embedded run of the shipped demo dataset against the offline
toy model; the online and comparison reports are built by hand in the shape their
producers return. Chromium renders each page offline (`--dump-dom` gives the DOM after
the page's script ran, `--screenshot` a PNG); the assertions read that DOM.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from scheduler import enqueue_offline_run, experiment_report, wait_for_experiment
from scheduler.reports.experiment import load_items
from scheduler.reports.html import (
    render_compare_html,
    render_experiment_html,
    render_online_html,
    write_html,
)

XSS = "<script>alert(1)</script>"
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?\s*"""
                      r"""(?:https?:)?//|@import""", re.IGNORECASE)
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}
REPORT_PNG = Path("/tmp/evalq-report.png")


class Dom(HTMLParser):
    """Every element of a page: its tag, attributes and the "tag#id" of its ancestors."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str], list[str]]] = []
        self._open: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        self.elements.append((tag, found, list(self._open)))
        if tag not in VOID:
            self._open.append(f"{tag}#{found['id']}" if "id" in found else tag)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i].split("#")[0] == tag:
                del self._open[i:]
                return

    def find(self, tag: str, cls: str | None = None, inside: str | None = None,
             **attrs: str) -> list[dict[str, str]]:
        """Elements like the CSS selector `inside tag.cls[attr=value]`."""
        return [a for t, a, up in self.elements
                if t == tag and (cls is None or cls in a.get("class", "").split())
                and (inside is None or any(inside in u for u in up))
                and all(a.get(k.replace("_", "-")) == v for k, v in attrs.items())]

    def inside(self, tag: str, container: str, cls: str | None = None) -> int:
        """How many `tag` elements (of class cls) lie inside an element whose "tag#id"
        contains `container`."""
        return len(self.find(tag, cls, inside=container))


def browse(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Chromium, headless and offline-minded, on a file:// page."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed: apt-get install chromium")
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
               "--window-size=1280,2000", *args, page.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def assert_offline(html: str) -> None:
    assert not EXTERNAL.search(html), EXTERNAL.search(html)
    assert "default-src 'none'" in html  # the CSP forbids any request anyway


def test_experiment_page_in_chromium(embedded_env, tmp_path: Path):
    exp_id = enqueue_offline_run(dataset="demo", model="evalq/toy",
                                 scorers=["exact_match", "contains"], prompt="{question}")
    summary = wait_for_experiment(exp_id, timeout=120)
    assert summary["counts"]["done"] == 21
    report = experiment_report(exp_id, by="category")
    _, _, rows = load_items(exp_id)
    html = render_experiment_html(report, rows)
    assert_offline(html)
    page = tmp_path / "report.html"
    write_html(page, html)
    write_html(page, html)  # over an existing file
    assert sorted(p.name for p in tmp_path.iterdir() if "report" in p.name) == ["report.html"]

    png = tmp_path / "report.png"
    browse(page, tmp_path / "profile", f"--screenshot={png}")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 20_000  # a blank 1280x2000 page is ~10 KB
    shutil.copyfile(png, REPORT_PNG)

    text = browse(page, tmp_path / "profile", "--dump-dom").stdout
    dom = Dom(text)
    n_categories = len(report["by"]["groups"])
    with_ci = sum(1 for g in report["by"]["groups"].values()
                  if g["scorers"]["contains"]["ci_low"] is not None)
    assert n_categories == 5 and with_ci == 4
    for label in ("exact_match", "contains"):
        assert len(dom.find("svg", "histogram", data_scorer=label)) == 1
        assert len(dom.find("svg", "categories", data_scorer=label, data_field="category")) == 1
    assert dom.inside("rect", "svg", "bar") == 2 * 2 + 2 * n_categories  # 0 and 1 bins
    assert dom.inside("g", "svg", "errorbar") == 2 * with_ci
    body_rows = [a for t, a, up in dom.elements
                 if t == "tr" and "table#items" in up and "tbody" in up]
    assert len(body_rows) == 21
    failing = sum(1 for r in rows if any(not s["passed"] for s in r.scores.values()))
    assert 0 < failing < 21
    assert sum(a["data-failed"] == "1" for a in body_rows) == failing
    assert len(dom.find("input", id="filter")) == 1 and len(dom.find("input", id="failed")) == 1
    assert len(dom.find("script")) == 1
    assert "21 of 21 rows" in text  # the filter script ran (allowed by the CSP hash)


def test_untrusted_text_is_escaped_and_long_text_folded(embedded_env, tmp_path: Path):
    exp_id = enqueue_offline_run(dataset="demo", model="evalq/toy", scorers=["exact_match"],
                                 prompt="{question}")
    wait_for_experiment(exp_id, timeout=120)
    report = experiment_report(exp_id, by="category")
    _, _, rows = load_items(exp_id)
    report["name"] = f"x{XSS}"
    rows[0] = rows[0].model_copy(update={
        "key": '"><img src=x onerror=alert(1)>', "output": XSS, "expected": "long " * 100,
        "scores": {"exact_match": {**rows[0].scores["exact_match"], "explanation": XSS}}})
    html = render_experiment_html(report, rows)
    assert XSS not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<details><summary>long long" in html
    page = tmp_path / "evil.html"
    write_html(page, html)
    dom = Dom(browse(page, tmp_path / "profile", "--dump-dom").stdout)
    assert len(dom.find("script")) == 1 and not dom.find("img")
    assert len(dom.find("details")) == 1


def online_fixture() -> dict[str, Any]:
    """12 hourly windows: helpfulness drifts down in the last two; toxicity has a gap
    (window 5 missing) and a window where nothing could be scored."""
    t0 = datetime(2026, 1, 5, tzinfo=UTC)
    windows = []
    for i in range(12):
        start = t0 + timedelta(hours=i)
        mean = 0.82 if i < 10 else 0.55
        scorers: dict[str, Any] = {"helpfulness": {
            "n": 40, "n_unscored": 1, "mean": mean, "low": mean - 0.06, "high": mean + 0.06,
            "pass_rate": mean, "drift": i >= 10}}
        if i != 5:
            tox = {"n": 0, "n_unscored": 3, "mean": None, "low": None, "high": None,
                   "pass_rate": None, "drift": False} if i == 8 else {
                "n": 40, "n_unscored": 0, "mean": 0.1 + 0.01 * i, "low": 0.05 + 0.01 * i,
                "high": 0.15 + 0.01 * i, "pass_rate": 0.95, "drift": False}
            scorers["toxicity"] = tox
        windows.append({"start": start.isoformat(),
                        "end": (start + timedelta(hours=1)).isoformat(), "scorers": scorers})
    return {"evaluator": "support-bot", "window_s": 3600, "since": t0.isoformat(),
            "until": (t0 + timedelta(hours=12)).isoformat(),
            "baseline": {"retired_scorer": {"mean": 0.5, "low": 0.4, "high": 0.6, "n": 3,
                                             "source": "experiment:1"},
                         "helpfulness": {"mean": 0.8, "low": 0.78, "high": 0.83, "n": 500,
                                         "source": "experiment:1"}},
            "windows": windows}


def test_online_page_in_chromium(tmp_path: Path):
    report = online_fixture()
    html = render_online_html(report)
    assert_offline(html)
    page = tmp_path / "online.html"
    write_html(page, html)
    dom = Dom(browse(page, tmp_path / "profile", "--dump-dom").stdout)
    assert len(dom.find("svg", "timeline", data_scorer="helpfulness")) == 1
    assert len(dom.find("svg", "timeline", data_scorer="toxicity")) == 1
    # one band for helpfulness; toxicity's is cut by the missing and the unscored window
    assert dom.inside("polygon", "svg", "band") == 1 + 3
    assert dom.inside("polyline", "svg", "mean") == 1 + 3
    assert dom.inside("circle", "svg", "drift") == 2
    assert dom.inside("circle", "svg", "point") == 12 + 10
    assert dom.inside("line", "svg", "baseline") == 1
    windows_rows = [a for t, a, up in dom.elements
                    if t == "tr" and "table#windows" in up and "tbody" in up]
    assert len(windows_rows) == 12 + 11
    empty = render_online_html({"evaluator": "e", "window_s": 60, "windows": []})
    assert "No scored runs" in empty


def comparison_fixture() -> dict[str, Any]:
    """The shape of scheduler.reports.compare.compare_experiments, trimmed."""
    flip = {"key": "geo-3", "input": {"question": "Capital of Australia?"},
            "expected": "Canberra", "baseline_output": "Canberra", "candidate_output": XSS,
            "baseline_value": 1.0, "candidate_value": 0.0,
            "baseline_explanation": "output equals 'Canberra'",
            "candidate_explanation": f"output {XSS} != expected 'Canberra'"}
    cost = {"target": 0.01, "judge": 0.0, "total": 0.01, "mean_per_item": 0.0005,
            "n_results": 21}
    return {
        "baseline": {"id": 1, "name": "base", "model": "m1", "dataset": "demo",
                     "dataset_version": "abc"},
        "candidate": {"id": 2, "name": "cand", "model": "m2", "dataset": "demo",
                      "dataset_version": "abc"},
        "same_dataset_version": True, "items_compared": 21,
        "n_only_in_baseline": 0, "n_only_in_candidate": 2,
        "scorers": {
            "exact_match": {"baseline_mean": 0.67, "candidate_mean": 0.52, "diff": -0.15,
                            "ci_low": -0.27, "ci_high": -0.03, "verdict": "regressed",
                            "n_pairs": 21, "n_pass_to_fail": 3, "pass_to_fail": [flip],
                            "n_fail_to_pass": 0, "fail_to_pass": []},
            "contains": {"baseline_mean": 0.71, "candidate_mean": 0.76, "diff": 0.05,
                         "ci_low": -0.06, "ci_high": 0.16, "verdict": "no significant change",
                         "n_pairs": 21, "pass_to_fail": [],
                         "fail_to_pass": [{**flip, "key": "sci-2"}]},
            "judge": {"n_pairs": 0, "diff": None, "verdict": "no scored pairs"},
        },
        "scorers_only_in_candidate": ["new_scorer"],
        "cost": {"baseline": cost, "candidate": {**cost, "total": 0.02},
                 "diff": {"total": 0.01, "mean_per_item": 0.0005}},
        "latency_ms": {"baseline": {"p50": 600.0, "p95": 700.0},
                       "candidate": {"p50": 420.0, "p95": None}, "diff": {"p50": -180.0}},
        "pairwise": None,
    }


def test_compare_page_in_chromium(tmp_path: Path):
    html = render_compare_html(comparison_fixture())
    assert_offline(html)
    assert XSS not in html
    page = tmp_path / "compare.html"
    write_html(page, html)
    dom = Dom(browse(page, tmp_path / "profile", "--dump-dom").stdout)
    assert len(dom.find("svg", "diffs")) == 1
    for label in ("exact_match", "contains", "judge"):
        assert len(dom.find("g", "diff", data_scorer=label)) == 1
    # a dot per scorer with pairs: regressed in orange, no significant change in grey
    assert sorted(a["fill"] for a in dom.find("circle", inside="svg")) == ["#94a3b8", "#c2410c"]
    assert len(dom.find("table", "flips", data_scorer="exact_match",
                        data_kind="pass_to_fail")) == 1
    assert len(dom.find("table", "flips", data_scorer="contains", data_kind="fail_to_pass")) == 1
    assert "(1 of 3)" in html and "new_scorer" in html and "2 items only in the candidate" in html
    assert "Flipped items" in render_compare_html({})  # tolerant of a shape still moving
