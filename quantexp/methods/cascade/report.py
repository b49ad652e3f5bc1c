"""What only a cascade has, measured on the loaded artifact after the pipeline's own
evaluation and timing: the share of test items escalated (by confidence, by the
router), the low-precision model alone (accuracy, agreement with fp32), accuracy
intervals, and throughput over passes of real test batches for fp32 alone, the
low-precision model alone and the cascade as a whole (both models loaded).
"""

from __future__ import annotations

from typing import Any

import torch

from quantexp.analysis.accuracy import wilson_interval
from quantexp.methods.cascade.method import decide_all
from quantexp.serving.throughput import time_passes

# Passes over at most this many bench batches of test items (MiniLM at batch 16: ~0.3 s
# a batch on a quiet 2-core host, so ~10 s a pass per side).
MAX_TIMING_BATCHES = 32


def measure_cascade(module, bundle, reference, preds: dict[str, Any], exp) -> dict[str, Any]:
    """Facts for results.json's method section (the pipeline logs the numbers among them
    as ``method.*`` MLflow metrics) and the throughput table."""
    test = bundle.test
    labels = test.labels.numpy()
    parts = decide_all(module, test.inputs, exp.eval.batch_size)
    cascade_pred, low_pred = parts["logits"].argmax(axis=1), parts["low_logits"].argmax(axis=1)
    n = len(labels)
    facts: dict[str, Any] = {
        "test.escalated_share": float(parts["escalated"].mean()),
        "test.routed_share": float(parts["routed"].mean()),
        "test.escalated_by_confidence_share": float((parts["escalated"] & ~parts["routed"]).mean()),
        "test.mean_confidence": float(parts["confidence"].mean()),
    }
    for name, pred in (("cascade", cascade_pred), ("low", low_pred)):
        correct = int((pred == labels).sum())
        low, high = wilson_interval(correct, n, exp.eval.confidence)
        facts.update({f"{name}.accuracy": correct / n, f"{name}.accuracy_ci_low": low,
                      f"{name}.accuracy_ci_high": high})
    fp32_pred = preds.get("fp32")
    if fp32_pred is not None:
        facts["low.agreement_fp32"] = float((low_pred == fp32_pred).mean())
        facts["cascade.agreement_fp32"] = float((cascade_pred == fp32_pred).mean())
    # The pipeline's timing batch is the first bench.batch_size test items: how many of
    # them escalate decides what its cascade latency means.
    facts["timing_batch.escalated"] = int(parts["escalated"][:exp.bench.batch_size].sum())

    timing = _time_over_test(module, bundle, reference, exp)
    for label, row in timing.items():
        facts.update({f"passes.{label}.{k}": v for k, v in row.items()})
    rows = [{"model": label, **row} for label, row in timing.items()]
    return {**facts, "tables": {"cascade_throughput": rows}}


def _time_over_test(module, bundle, reference, exp) -> dict[str, dict[str, float]]:
    batch = exp.bench.batch_size
    inputs = bundle.test.inputs
    n_batches = min(MAX_TIMING_BATCHES, (len(bundle.test) + batch - 1) // batch)
    batches = [tuple(x[i * batch:(i + 1) * batch] for x in inputs) for i in range(n_batches)]
    items = sum(int(b[0].shape[0]) for b in batches)
    fp32 = reference.runtime if reference is not None and reference.runtime is not None else bundle.model

    def side(fn):
        def call(i: int):
            with torch.inference_mode():
                return fn(*batches[i])
        return call

    b = exp.bench
    return time_passes({"fp32": side(fp32), "low": side(module.low), "cascade": side(module)}, n_batches, items,
                       "fp32", min_rounds=max(2, min(b.min_rounds, 5)), min_seconds=b.min_seconds,
                       max_seconds=b.max_seconds, warmup=min(b.warmup, n_batches), n_boot=exp.eval.bootstrap,
                       confidence=exp.eval.confidence, seed=exp.seed)


__all__ = ["MAX_TIMING_BATCHES", "measure_cascade"]
