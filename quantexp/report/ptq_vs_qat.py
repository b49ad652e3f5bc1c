"""PTQ vs QAT side by side: the same model at the same precision through
ptq_static, qat and qat_finetune (accuracy with its confidence interval, the
paired accuracy delta vs fp32 with its bootstrap CI, latency, size), built from
the results.json files of a sweep such as

    python run.py -m method=ptq_static,qat,qat_finetune precision=int8,w4a8

and logged as one MLflow artifact (``ptq_vs_qat.csv``) on the sweep's parent run
by the sweep callback. Also a command: ``python -m quantexp.report.ptq_vs_qat <sweep dir>``.

Each QAT method is also compared with ptq_static PAIRED, over the same test items:
both runs' per-item predictions (``predictions.npz`` beside results.json) give
the accuracy delta vs PTQ with a paired bootstrap CI
(``analysis/accuracy.paired_bootstrap_delta``) and an exact McNemar p-value, and
the share of PTQ's loss vs fp32 that the method recovers. A per-run interval
cannot say this: two overlapping Wilson intervals may still differ significantly
when the models err on mostly the same items.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from quantexp.analysis.accuracy import mcnemar_exact, paired_bootstrap_delta, wilson_interval
from quantexp.files import atomic_write_csv

METHODS = ("ptq_static", "qat", "qat_finetune")
ARTIFACT = "ptq_vs_qat.csv"
# Paired columns (None for ptq_static itself and for runs without saved predictions).
PAIRED_KEYS = ("delta_vs_ptq", "delta_vs_ptq_ci_low", "delta_vs_ptq_ci_high", "mcnemar_vs_ptq_p",
               "gap_recovered")


PREDICTIONS = "predictions.npz"  # written by quantexp.pipeline beside results.json


def load_results(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every ``*/results.json`` of a sweep; each dict gets ``_dir``, its run directory."""
    results = []
    for path in sorted(Path(sweep_dir).glob("*/results.json")):
        r = json.loads(path.read_text())
        r["_dir"] = str(path.parent)
        results.append(r)
    return results


def load_predictions(result: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """The run's ``predictions.npz`` (labels, ids, one array per candidate), or None."""
    path = result.get("predictions_path")
    if not path and result.get("_dir"):
        path = str(Path(result["_dir"]) / PREDICTIONS)
    if not path or not Path(path).is_file():
        return None
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def paired_vs_ptq(result: dict[str, Any], ptq: dict[str, Any], *, n_boot: int = 2000,
                  confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """The method of ``result`` against ptq_static on the same test items: accuracy delta
    (method - PTQ) with a paired bootstrap CI, McNemar's exact p, and the share of PTQ's
    loss vs fp32 recovered, (acc - acc_ptq) / (acc_fp32 - acc_ptq). Empty when either
    run has no saved predictions; refuses runs that did not see the same items."""
    mine, theirs = load_predictions(result), load_predictions(ptq)
    name = result["method"]["name"]
    if mine is None or theirs is None or name not in mine or "ptq_static" not in theirs:
        return {}
    for key in ("labels", "ids"):
        if not np.array_equal(mine[key], theirs[key]):
            raise ValueError(f"{name} and ptq_static were evaluated on different test items ({key} differ): "
                             "a paired comparison needs the same items in the same order")
    labels = mine["labels"]
    correct, correct_ptq = mine[name] == labels, theirs["ptq_static"] == labels
    ci = paired_bootstrap_delta(correct, correct_ptq, n_boot=n_boot, confidence=confidence, seed=seed)
    mc = mcnemar_exact(correct, correct_ptq)
    row: dict[str, Any] = {"delta_vs_ptq": ci.delta, "delta_vs_ptq_ci_low": ci.low,
                           "delta_vs_ptq_ci_high": ci.high, "mcnemar_vs_ptq_p": mc.p_value,
                           "gap_recovered": None}
    fp32 = theirs.get("fp32")
    if fp32 is not None:
        gap = float((fp32 == labels).mean() - correct_ptq.mean())
        # None when PTQ lost nothing vs fp32 (no gap to recover); read it with the CI above.
        row["gap_recovered"] = ci.delta / gap if gap > 0 else None
    return row


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
        ptq = by_method["ptq_static"]
        ptq_acc = ptq["comparison"].get("accuracy")
        ev = ptq.get("config", {}).get("eval", {})
        boot = {"n_boot": int(ev.get("bootstrap", 2000)), "confidence": float(ev.get("confidence", 0.95)),
                "seed": int(ptq.get("config", {}).get("seed", 0))}
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
                **dict.fromkeys(PAIRED_KEYS),
                **(paired_vs_ptq(r, ptq, **boot) if name != "ptq_static" else {}),
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
    return atomic_write_csv(Path(sweep_dir) / ARTIFACT, rows)


def log_comparison(client, run_id: str, sweep_dir: Path) -> Path | None:
    """Write the comparison and log it as one artifact of ``run_id`` (the sweep's parent)."""
    path = write_comparison(sweep_dir)
    if path is not None:
        from quantexp.tracking.store import retry_locked

        retry_locked(client.log_artifact, run_id, str(path))
    return path


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m quantexp.report.ptq_vs_qat <sweep dir>", file=sys.stderr)
        return 2
    rows = comparison_rows(load_results(Path(argv[0])))
    if not rows:
        print("no (model, precision) with ptq_static and a QAT method in this sweep", file=sys.stderr)
        return 1
    for r in rows:
        acc = "n/a" if r["accuracy"] is None else (
            f"{100 * r['accuracy']:.2f} [{100 * r['accuracy_ci_low']:.2f}, {100 * r['accuracy_ci_high']:.2f}]")
        if r["delta_vs_ptq"] is not None:  # paired, over the same items
            rec = (f"{100 * r['delta_vs_ptq']:+.2f} [{100 * r['delta_vs_ptq_ci_low']:+.2f}, "
                   f"{100 * r['delta_vs_ptq_ci_high']:+.2f}] pts")
            if r["gap_recovered"] is not None:
                rec += f", {100 * r['gap_recovered']:.0f}% of PTQ's loss"
        else:
            rec = "" if r["recovered_vs_ptq_points"] is None else f"{r['recovered_vs_ptq_points']:+.2f} pts"
        print(f"{r['model']:8} {r['precision']:11} {r['method']:13} acc {acc:24} vs PTQ {rec:40}  "
              f"p50 {r['latency_p50_ms'] or float('nan'):.3f} ms  {r['size_bytes'] / 1e3:.1f} kB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
