"""The summary table printed at the end of a run (rich), from results.json's dict."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.table import Table


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def summary_table(results: dict[str, Any]) -> Table:
    method = results["method"]["name"]
    comp = results["comparison"]
    table = Table(title=f"{results['model']['name']} ({results['model']['family']}): "
                        f"{method} @ {results['method']['precision']} vs fp32")
    for column in ("candidate", "runtime", "acc %", "Δ acc pts [95% CI]", "agree %",
                   "p50 ms", "p90 ms", "items/s", "MB", "bits/param", "speed-up"):
        table.add_column(column, justify="left" if column in ("candidate", "runtime") else "right")
    for label, cand in results["candidates"].items():
        lat = cand["latency"]  # empty when this host cannot run the artifact
        if label == "fp32" and method != "fp32":
            delta, agree, speed = "ref", "ref", "1.00x"
        elif "accuracy_delta" in comp:
            delta = (f"{100 * comp['accuracy_delta']:+.2f} [{100 * comp['accuracy_delta_ci_low']:+.2f},"
                     f" {100 * comp['accuracy_delta_ci_high']:+.2f}]")
            agree = _fmt(100 * comp["agreement_fp32"], ".2f")
            speed = f"{comp['speedup_p50']:.2f}x" if "speedup_p50" in comp else "-"
        else:
            delta, agree, speed = "not measured", "-", "-"
        noisy = " (noisy)" if lat.get("noisy") else ""
        acc = None if cand["accuracy"] is None else 100 * cand["accuracy"]
        table.add_row(label, cand["runtime"], _fmt(acc, ".2f"), delta, agree,
                      _fmt(lat.get("p50_ms"), ".3f") + noisy, _fmt(lat.get("p90_ms"), ".3f"),
                      _fmt(lat.get("throughput_items_per_s"), ".0f"),
                      _fmt(cand["size_bytes"] / 1e6, ".3f"), _fmt(cand["bits_per_param"], ".2f"), speed)
    return table


def print_summary(results: dict[str, Any], console: Console | None = None) -> None:
    # Off a terminal rich assumes 80 columns and would fold the table; give it room.
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    console.print(summary_table(results))
    gate = results["gate"]
    if gate["passed"] is not None:
        verdict = "passed" if gate["passed"] else "FAILED"
        console.print(f"quality gate (max drop {gate['max_accuracy_drop']} pts): {verdict} "
                      f"(drop {gate['accuracy_drop_points']:.2f} pts)")
    for metric, reason in results.get("not_measured", {}).items():
        console.print(f"{metric}: {reason}")
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in results["stages_s"].items())
    console.print(f"stages: {stages}")
    p_value = results["comparison"].get("mcnemar_p")
    console.print(f"mcnemar p = {_fmt(p_value, '.3g')} | results: "
                  f"{results.get('results_path', '-')} | mlflow run: {results.get('mlflow_run_id', '-')}")
