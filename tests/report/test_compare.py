"""The cross-run report on real runs (in-process, tiny): rows, CIs, Pareto fronts, the
files, a Core ML run on Linux shown as "not measured" (never zero, off the fronts), and
the refusals - no runs, runs on different test sets - as one line and exit code 2."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest

import quantexp
from quantexp.report.compare import NOT_MEASURED, ReportError, comparison_rows, to_markdown
from quantexp.report.html import to_html

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model=cnn", "model.n_train=300", "model.epochs=1", "+debug=tiny", "method.calibration.size=32",
        "tracking.enabled=false", "bench.processes=1"]  # in-process runs: tests/run_api.py says why


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    out = {}
    for label, overrides in {"dynamic": ["method=ptq_dynamic"], "static": ["method=ptq_static"],
                             "ane": ["method=fp32", "hardware=ane"]}.items():
        out[label] = quantexp.run(None, None, *overrides, *TINY, f"cache_dir={tmp / 'cache'}",
                                  output_dir=tmp / "runs" / label)
    return tmp, out


def test_rows_carry_cis_and_the_fronts(runs):
    _, r = runs
    rows = comparison_rows([r["dynamic"], r["static"]])
    for row in rows:
        assert row.accuracy_ci_low_pct <= row.accuracy_pct <= row.accuracy_ci_high_pct
        assert row.drop_ci_low_pts <= row.drop_pts <= row.drop_ci_high_pts
        assert row.p50_ms > 0 and row.size_mb > 0 and row.exporter == "none" and row.hardware == "cpu"
    assert any(row.front_latency for row in rows) and any(row.front_size for row in rows)
    smaller = min(rows, key=lambda row: row.size_mb)
    assert smaller.front_size or smaller.drop_pts > max(row.drop_pts for row in rows if row is not smaller)


def test_the_accuracy_interval_is_scipys_wilson_interval(runs):
    from scipy.stats import binomtest

    row = comparison_rows([runs[1]["dynamic"]])[0]
    ci = binomtest(round(row.accuracy_pct * row.n_items / 100), row.n_items).proportion_ci(method="wilson")
    assert (row.accuracy_ci_low_pct, row.accuracy_ci_high_pct) == pytest.approx((100 * ci.low, 100 * ci.high))


def test_a_run_that_could_not_be_timed_is_not_measured_never_zero(runs):
    _, r = runs
    rows = comparison_rows([r["dynamic"], r["ane"]])
    ane = next(row for row in rows if row.hardware == "ane")
    assert ane.p50_ms is None and ane.accuracy_pct is None and not ane.front_latency and not ane.front_size
    assert "not measured on this host" in ane.not_measured
    assert NOT_MEASURED in to_markdown(rows) and "not measured on this host" in to_html(rows, "t")


def test_runs_on_different_test_sets_are_refused(runs):
    _, r = runs
    other = copy.deepcopy(r["static"])
    other.comparison.n_items = 500.0  # the same model evaluated on another test set
    with pytest.raises(ReportError, match="different test sets"):
        comparison_rows([r["dynamic"], other])
    with pytest.raises(ReportError, match="no runs"):
        comparison_rows([])


def test_per_layer_charts_come_from_the_runs_tables(runs):
    from quantexp.report.layers import layer_figure, layer_series

    _, r = runs
    charts = layer_series([r["dynamic"], r["static"], r["ane"]])
    (sqnr,) = [series for title, series in charts.items() if title.startswith("layer SQNR")]
    labels = [label for label, _, _ in sqnr]
    assert len(labels) == 2 and any("ptq_static" in label for label in labels)  # the fp32 ANE run has no table
    static = next(s for s in sqnr if "ptq_static" in s[0])
    table = r["static"].tables["layer_error"]
    assert static[1] == [row["layer"] for row in table] and static[2] == [row["sqnr_db"] for row in table]
    assert layer_figure([r["ane"]]) is None  # nothing to draw: no per-layer section


def test_the_best_candidate_is_the_fastest_within_the_allowed_drop(runs):
    from quantexp.report.compare import best_row

    _, r = runs
    rows = comparison_rows([r["dynamic"], r["static"], r["ane"]])
    best = best_row(rows, max_drop_pts=100.0)
    assert best.p50_ms == min(row.p50_ms for row in rows if row.p50_ms is not None and row.method != "fp32")
    # nothing within a drop of -100 points: the one that loses least
    assert best_row(rows, max_drop_pts=-100.0).drop_pts == min(row.drop_pts for row in rows
                                                               if row.drop_pts is not None and row.method != "fp32")


def test_a_job_without_results_yet_is_listed_as_running(runs, tmp_path):
    import shutil

    from quantexp.report.build import read_folder

    tmp, _ = runs
    shutil.copytree(tmp / "runs", tmp_path / "sweep")
    (tmp_path / "sweep" / "3_cnn_qat" / ".hydra").mkdir(parents=True)  # a job that has started
    running: list[str] = []
    results = read_folder(tmp_path / "sweep", running)
    assert len(results) == 3 and len(running) == 1 and "3_cnn_qat" in running[0]
    html = to_html(comparison_rows(results), "t", running=running)
    assert "Still running" in html and "3_cnn_qat" in html


def _report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "quantexp", "report", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False)


def test_the_command_on_a_folder_and_its_refusals(runs, tmp_path):
    tmp, _ = runs
    done = _report(str(tmp / "runs"), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ptq_static" in done.stdout and (tmp_path / "out" / "report.html").is_file()
    for args, message in [((str(tmp_path / "empty"),), "is not a folder"),
                          ((str(tmp_path),), "no runs to report"),
                          (("--experiment", "x", "--tracking-uri", f"sqlite:///{tmp_path}/none.db"), "no MLflow store"),
                          ((str(tmp), "--runs", "abc"), "not both")]:
        proc = _report(*args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], (args, proc.stderr[-1500:])


def _chromium() -> str | None:
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_the_html_report_in_a_real_browser(runs, tmp_path):
    """Headless Chromium (Debian's, driven by Playwright) opens report.html offline: no
    console errors, every placed run drawn on both charts, the front drawn; the
    screenshot is kept in test-artifacts/."""
    from playwright.sync_api import sync_playwright

    from quantexp.report.build import write_report

    rows, files = write_report([runs[1]["dynamic"], runs[1]["static"], runs[1]["ane"]], tmp_path, "browser test")
    placed = sum(row.p50_ms is not None and row.drop_pts is not None for row in rows)
    assert files["report.html"].stat().st_size < 5_000_000
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.route("http*://**", lambda route: route.abort())  # offline: any fetch would fail loudly
        page.goto(files["report.html"].as_uri())
        page.wait_for_selector("body[data-charts=drawn]", timeout=60_000)
        points = page.evaluate("document.querySelectorAll('#charts .scatterlayer .trace .point').length")
        fronts = page.evaluate("[...document.querySelectorAll('#charts .legendtext')].map(e => e.textContent)")
        layer_lines = page.evaluate("document.querySelectorAll('#layers .scatterlayer .trace').length")
        page.fill("#filter", "ptq_static")
        visible = page.evaluate("[...document.querySelectorAll('#runs tbody tr')].filter(r => r.style.display !== 'none').length")
        artifacts = Path(os.environ.get("QUANTEXP_TEST_ARTIFACTS", ROOT / "test-artifacts"))
        artifacts.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(artifacts / "report.png"), full_page=True)
        browser.close()
    assert errors == []
    assert points == 2 * placed  # one marker per placed run on each chart (the ANE run is not placed)
    assert "Pareto front" in fronts and visible == 1
    assert layer_lines == 2  # per-layer SQNR of the two quantized runs
