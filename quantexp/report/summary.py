"""The summary table printed at the end of a run (rich), from typed ``Results``."""

from __future__ import annotations

import io
import sys
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

from quantexp.bench.interleaved import describe_speedup
from quantexp.results import Comparison, Results


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _typed(results: Results | Mapping[str, Any]) -> Results:
    return results if isinstance(results, Results) else Results.from_dict(results)


def summary_table(results: Results | Mapping[str, Any]) -> Table:
    r = _typed(results)
    method, comp = r.label, r.comparison
    table = Table(title=f"{r.model['name']} ({r.model['family']}): {method} @ {r.method['precision']} vs fp32")
    for column in ("candidate", "runtime", "acc %", "Δ acc pts [95% CI]", "agree %",
                   "p50 ms", "p90 ms", "items/s", "MB", "bits/param", "speed-up"):
        table.add_column(column, justify="left" if column in ("candidate", "runtime") else "right")
    for label, cand in r.candidates.items():
        lat = cand.latency  # None when this host cannot run the artifact
        if label == "fp32" and method != "fp32":
            delta, agree, speed = "ref", "ref", "1.00x"
        elif comp.accuracy_delta is not None:
            delta = (f"{100 * comp.accuracy_delta:+.2f} [{100 * comp.accuracy_delta_ci_low:+.2f},"
                     f" {100 * comp.accuracy_delta_ci_high:+.2f}]")
            agree = _fmt(100 * comp.agreement_fp32, ".2f")
            speed = speedup_text(comp)
        else:
            delta, agree, speed = "not measured", "-", "-"
        noisy = " (noisy)" if lat is not None and lat.noisy else ""
        acc = None if cand.accuracy is None else 100 * cand.accuracy
        table.add_row(label, cand.runtime, _fmt(acc, ".2f"), delta, agree,
                      _fmt(lat and lat.p50_ms, ".3f") + noisy, _fmt(lat and lat.p90_ms, ".3f"),
                      _fmt(lat and lat.throughput_items_per_s, ".0f"),
                      _fmt(cand.size_bytes / 1e6, ".3f"), _fmt(cand.bits_per_param, ".2f"), speed)
    return table


def speedup_text(comp: Comparison) -> str:
    """The speed-up with its CI, or "no significant difference (...)"; "-" if not timed."""
    if comp.speedup_p50 is None:
        return "-"
    return describe_speedup(comp.speedup_p50, comp.speedup_ci_low, comp.speedup_ci_high,
                            comp.speedup_verdict, comp.speedup_noisy)


def gate_text(gate) -> str:
    """'passed (drop 0.20 pts, 95% CI [-0.10, 0.50])'; FAILED / inconclusive likewise."""
    verdict = gate.verdict or {None: "inconclusive", True: "passed", False: "failed"}[gate.passed]
    ci = ("" if gate.accuracy_drop_ci_low is None
          else f", CI [{gate.accuracy_drop_ci_low:.2f}, {gate.accuracy_drop_ci_high:.2f}]")
    return f"{'FAILED' if verdict == 'failed' else verdict} (drop {gate.accuracy_drop_points:.2f} pts{ci})"


def deployment_lines(deployment: Mapping[str, Any] | None) -> list[str]:
    """'deployment edge_1core (1 core, 1 thread, 512 MB cap by RLIMIT_AS): ptq_static does not fit: ...'"""
    if not deployment:
        return []
    p = deployment["profile"]
    lines = []
    for label, d in deployment["candidates"].items():
        limits = d.get("limits") or {}
        cap = f", {p['memory_mb']} MB cap by {limits.get('memory_mechanism')}" if p.get("memory_mb") else ""
        lat = d.get("latency") or {}
        figures = (f" (peak {d['peak_rss_mb']:.0f} MB" if d.get("peak_rss_mb") is not None else " (") + \
                  (f", p50 {lat['p50_ms']:.3g} ms, p99 {lat['p99_ms']:.3g} ms" if lat else "") + ")"
        lines.append(f"deployment {p['name']} ({len(limits.get('cpus', []))} core(s), {limits.get('threads')} "
                     f"thread(s){cap}): {label} {d['verdict']['summary']}{figures if d.get('status') == 'ok' else ''}")
    return lines


def summary_text(results: Results | Mapping[str, Any]) -> str:
    """The summary as plain text (the MLflow run's description shows it)."""
    console = Console(record=True, width=170, file=io.StringIO())
    print_summary(results, console)
    return console.export_text()


def timing_text(interleaved: Mapping[str, Any]) -> str:
    """How the speed-up was timed and what its CI spans: "346 rounds of 3 call(s) each in
    5 processes (1.21x, 1.19x, ...), 95% CI over rounds and processes"."""
    i = interleaved
    text = f"{i['rounds']} rounds of {i['calls_per_round']} call(s) each"
    processes = i.get("processes", 1)  # results written before bench.processes: one
    if processes > 1:
        levels = ", ".join(f"{ratio:.2f}x" for ratio in i["process_ratios"])
        return f"{text} in {processes} processes ({levels}), {100 * i['confidence']:.0f}% CI over rounds and processes"
    spans = "rounds and stretches of rounds" if i.get("drift_ci") else "rounds"
    return f"{text} in one process, {100 * i['confidence']:.0f}% CI over {spans}"


def print_summary(results: Results | Mapping[str, Any], console: Console | None = None) -> None:
    r = _typed(results)
    # Off a terminal rich assumes 80 columns and would fold the table; give it room.
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    console.print(summary_table(r))
    gate = r.gate
    if gate.max_accuracy_drop is not None:
        console.print(f"quality gate (max drop {gate.max_accuracy_drop} pts): {gate_text(gate)}")
    if r.interleaved is not None:
        console.print(f"speed-up vs fp32: {speedup_text(r.comparison)} - fp32 and {r.label} timed "
                      f"interleaved, {timing_text(r.interleaved)}", markup=False)
        if r.interleaved.get("processes_note"):
            console.print(r.interleaved["processes_note"], markup=False)
    for metric, reason in r.not_measured.items():
        console.print(f"{metric}: {reason}")
    for line in deployment_lines(r.deployment):
        console.print(line, markup=False)
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in r.stages_s.items())
    console.print(f"stages: {stages}")
    console.print(f"mcnemar p = {_fmt(r.comparison.mcnemar_p, '.3g')} | results: "
                  f"{r.results_path or '-'} | mlflow run: {r.mlflow_run_id or '-'}")
