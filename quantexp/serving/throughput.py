"""Throughput over real inputs: every side makes full passes over the same batches,
passes interleaved (A B C, then B C A, ...), and each side's throughput is compared
with the reference's as a ratio of total times with a bootstrap CI over passes.

Why not the pipeline's fixed timing batch alone: a cascade's cost depends on what is
in the batch (how many items escalate), so one batch repeated says little about its
throughput. Per-call latencies over the passes still give p50/p99 per batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from quantexp.bench.collector import collector_paused


@collector_paused()
def time_passes(sides: dict[str, Callable[[int], object]], n_batches: int, items: int, reference: str, *,
                min_rounds: int = 3, min_seconds: float = 0.0, max_seconds: float = 60.0, warmup: int = 1,
                n_boot: int = 2000, confidence: float = 0.95, seed: int = 0,
                clock: Callable[[], int] = time.perf_counter_ns) -> dict[str, dict[str, float]]:
    """``sides[label](i)`` runs batch ``i`` (0 <= i < n_batches; ``items`` items in all).
    Returns per side: p50/p99 ms per batch, items/s, passes, and (for the others) the
    throughput ratio vs ``reference`` with its CI (> 1: faster than the reference)."""
    if reference not in sides or n_batches < 1 or min_rounds < 1:
        raise ValueError("need the reference among the sides, n_batches >= 1 and min_rounds >= 1")
    labels = list(sides)
    for label in labels:
        for i in range(min(warmup, n_batches)):
            sides[label](i)
    calls: dict[str, list[list[float]]] = {label: [] for label in labels}
    spent = dict.fromkeys(labels, 0.0)
    rounds = 0
    while True:
        shift = rounds % len(labels)
        for label in labels[shift:] + labels[:shift]:
            row = []
            for i in range(n_batches):
                t0 = clock()
                sides[label](i)
                row.append((clock() - t0) / 1e6)
            calls[label].append(row)
            spent[label] += sum(row) / 1e3
        rounds += 1
        if rounds >= min_rounds and min(spent.values()) >= min_seconds:
            break
        if rounds >= 2 and max(spent.values()) >= max_seconds:  # a CI needs two passes
            break
    totals = {label: np.asarray(calls[label]).sum(axis=1) for label in labels}  # ms per pass
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, rounds, size=(n_boot, rounds))
    alpha = (1.0 - confidence) / 2.0
    out: dict[str, dict[str, float]] = {}
    for label in labels:
        per_call = np.asarray(calls[label]).ravel()
        row = {"p50_ms": float(np.percentile(per_call, 50)), "p99_ms": float(np.percentile(per_call, 99)),
               "mean_ms": float(per_call.mean()), "items_per_s": items * rounds / (totals[label].sum() / 1e3),
               "passes": float(rounds)}
        if label != reference:
            ref = totals[reference]
            row["throughput_ratio"] = float(ref.sum() / totals[label].sum())
            boot = ref[idx].sum(axis=1) / totals[label][idx].sum(axis=1)
            low, high = np.quantile(boot, [alpha, 1.0 - alpha])
            row["throughput_ratio_ci_low"], row["throughput_ratio_ci_high"] = float(low), float(high)
        out[label] = row
    return out


__all__ = ["time_passes"]
