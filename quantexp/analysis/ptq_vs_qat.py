"""PTQ vs QAT side by side: the same model at the same precision through
ptq_static, qat and qat_finetune (accuracy with its confidence interval, the
paired accuracy delta vs fp32 with its bootstrap CI, latency, size), built from
the results.json files of a sweep such as

    python run.py -m method=ptq_static,qat,qat_finetune precision=int8,w4a8

and logged as one MLflow artifact (``ptq_vs_qat.csv``) on the sweep's parent run
by the sweep callback. Also a command: ``python -m quantexp.analysis.ptq_vs_qat <sweep dir>``.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

METHODS = ("ptq_static", "qat", "qat_finetune")
ARTIFACT = "ptq_vs_qat.csv"


def wilson_interval(correct: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% by default)."""
    if n <= 0:
        return float("nan"), float("nan")
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def load_results(sweep_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(Path(sweep_dir).glob("*/results.json"))]


def comparison_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, precision, method) among ptq_static / qat / qat_finetune, for
    every (model, precision) that has ptq_static and at least one QAT method; each row
    says how many accuracy points it recovers over ptq_static."""
    groups: dict[tuple[str, str], dict[str, dict]] = {}
    for r in results:
        name = r["method"]["name"]
        if name in METHODS:
            groups.setdefault((r["model"]["name"], r["method"]["precision"]), {})[name] = r
    rows = []
    for (model, precision), by_method in sorted(groups.items()):
        if "ptq_static" not in by_method or len(by_method) < 2:
            continue
        ptq_acc = by_method["ptq_static"]["comparison"].get("accuracy")
        for name in METHODS:
            r = by_method.get(name)
            if r is None:
                continue
            comp, cand = r["comparison"], r["candidates"][name]
            acc, n = comp.get("accuracy"), int(comp.get("n_items", 0))
            low, high = wilson_interval(acc * n, n) if acc is not None else (None, None)
            rows.append({
                "model": model, "precision": precision, "method": name,
                "accuracy": acc, "accuracy_ci_low": low, "accuracy_ci_high": high,
                "accuracy_fp32": comp.get("accuracy_fp32"),
                "delta_vs_fp32": comp.get("accuracy_delta"),
                "delta_vs_fp32_ci_low": comp.get("accuracy_delta_ci_low"),
                "delta_vs_fp32_ci_high": comp.get("accuracy_delta_ci_high"),
                "recovered_vs_ptq_points": (None if acc is None or ptq_acc is None
                                            else 100.0 * (acc - ptq_acc)),
                "latency_p50_ms": cand["latency"].get("p50_ms"),
                "size_bytes": cand["size_bytes"], "bits_per_param": cand["bits_per_param"],
                "quantize_time_s": r["method"].get("quantize_time_s"),
                "fake_vs_converted_top1_agreement": r["method"].get("fake_vs_converted_top1_agreement"),
                "n_items": n, "results": r.get("results_path", ""),
            })
    return rows


def write_comparison(sweep_dir: Path) -> Path | None:
    """Write ``<sweep_dir>/ptq_vs_qat.csv``; None when the sweep has nothing to compare."""
    rows = comparison_rows(load_results(sweep_dir))
    if not rows:
        return None
    path = Path(sweep_dir) / ARTIFACT
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def log_comparison(client, run_id: str, sweep_dir: Path) -> Path | None:
    """Write the comparison and log it as one artifact of ``run_id`` (the sweep's parent)."""
    path = write_comparison(sweep_dir)
    if path is not None:
        from quantexp.tracking.store import retry_locked

        retry_locked(client.log_artifact, run_id, str(path))
    return path


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m quantexp.analysis.ptq_vs_qat <sweep dir>", file=sys.stderr)
        return 2
    rows = comparison_rows(load_results(Path(argv[0])))
    if not rows:
        print("no (model, precision) with ptq_static and a QAT method in this sweep", file=sys.stderr)
        return 1
    for r in rows:
        acc = "n/a" if r["accuracy"] is None else (
            f"{100 * r['accuracy']:.2f} [{100 * r['accuracy_ci_low']:.2f}, {100 * r['accuracy_ci_high']:.2f}]")
        rec = "" if r["recovered_vs_ptq_points"] is None else f"{r['recovered_vs_ptq_points']:+.2f}"
        print(f"{r['model']:8} {r['precision']:6} {r['method']:13} acc {acc:24} vs PTQ {rec:>7} pts  "
              f"p50 {r['latency_p50_ms'] or float('nan'):.3f} ms  {r['size_bytes'] / 1e3:.1f} kB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
