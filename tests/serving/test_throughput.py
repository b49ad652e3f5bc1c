"""Throughput over interleaved passes, on a fake clock (exact figures)."""

from __future__ import annotations

import pytest

from quantexp.serving.throughput import time_passes


def test_throughput_passes_interleave_and_compare_with_the_reference():
    clock = [0]

    def side(cost_ns):
        def call(i):
            clock[0] += cost_ns * (1 + i % 2)  # odd batches cost twice as much
        return call

    out = time_passes({"ref": side(2_000_000), "fast": side(1_000_000)}, n_batches=4, items=64,
                      reference="ref", min_rounds=3, clock=lambda: clock[0], warmup=0)
    assert out["fast"]["throughput_ratio"] == pytest.approx(2.0)
    assert out["fast"]["throughput_ratio_ci_low"] == pytest.approx(2.0)
    assert out["ref"]["items_per_s"] == pytest.approx(64 / 0.012) and out["ref"]["passes"] == 3
    assert out["fast"]["p50_ms"] == pytest.approx(1.5) and out["fast"]["p99_ms"] == pytest.approx(2.0, rel=0.02)
    # a time limit stops it, but never before two passes (a CI needs them)
    limited = time_passes({"ref": side(2_000_000)}, n_batches=4, items=64, reference="ref", min_rounds=5,
                          max_seconds=0.001, clock=lambda: clock[0], warmup=0)
    assert limited["ref"]["passes"] == 2
