"""The cycle collector is off inside every timing loop and back on after it
(quantexp/bench/collector.py: why)."""

from __future__ import annotations

import gc

import pytest

from quantexp.bench.collector import collector_paused
from quantexp.bench.interleaved import time_rounds
from quantexp.bench.latency import measure_latency
from quantexp.serving.throughput import time_passes


def recording():
    seen = []
    return seen, lambda *args: seen.append(gc.isenabled())


def test_each_timing_loop_runs_its_calls_with_the_collector_off():
    assert gc.isenabled()
    seen, call = recording()
    measure_latency(call, batch_size=1, warmup=1, min_iters=3, min_seconds=0.0, max_seconds=1.0)
    time_rounds(call, call, warmup=1, min_rounds=2, min_iters=2, min_seconds=0.0, max_seconds=1.0)
    time_passes({"a": call, "b": call}, n_batches=2, items=2, reference="a", min_rounds=2)
    assert len(seen) > 10 and not any(seen)
    assert gc.isenabled()


def test_the_collector_comes_back_after_an_exception_and_stays_off_if_it_was():
    @collector_paused()
    def failing():
        assert not gc.isenabled()
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        failing()
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
