"""Bench harness: latency stopping rules/statistics (deterministic fake clock) and peak-RSS sampling."""

from __future__ import annotations

import math
import time

import numpy as np
import psutil
import pytest

from quantexp.bench.latency import (
    LatencyStats,
    measure_latency,
    timeit_reference,
    wall_clock_timer,
)
from quantexp.bench.memory import PeakRSSSampler, process_peak_rss_mb

MS = 1_000_000  # ns


class FakeWorld:
    """A clock plus a callable that advances it by a scripted duration per call."""

    def __init__(self, durations_ns: list[int], *, cycle: bool = True) -> None:
        self.now = 0
        self.durations = durations_ns
        self.cycle = cycle
        self.calls = 0

    def clock(self) -> int:
        return self.now

    def fn(self) -> None:
        if self.cycle:
            d = self.durations[self.calls % len(self.durations)]
        else:
            d = self.durations[self.calls]
        self.calls += 1
        self.now += d


def script(first: int, warmup: list[int], timed: list[int]) -> FakeWorld:
    return FakeWorld([first, *warmup, *timed], cycle=False)


def test_min_iters_dominates() -> None:
    w = FakeWorld([1 * MS])
    s = measure_latency(
        w.fn, batch_size=1, warmup=2, min_iters=30, min_seconds=0.01, clock=w.clock
    )
    assert s.n_iters == 30
    assert s.total_s == pytest.approx(0.030)
    assert not s.truncated
    assert w.calls == 1 + 2 + 30
    assert len(s.raw_ms) == 30


def test_min_seconds_dominates() -> None:
    w = FakeWorld([10 * MS])
    s = measure_latency(
        w.fn, batch_size=1, warmup=0, min_iters=5, min_seconds=1.0, clock=w.clock
    )
    assert s.n_iters == 100  # 100 x 10 ms reaches 1 s exactly
    assert s.total_s == pytest.approx(1.0)
    assert not s.truncated


def test_max_seconds_truncates() -> None:
    w = FakeWorld([100 * MS])
    s = measure_latency(
        w.fn,
        batch_size=1,
        warmup=0,
        min_iters=1000,
        min_seconds=1.0,
        max_seconds=2.0,
        clock=w.clock,
    )
    assert s.truncated
    assert s.n_iters == 20
    assert s.total_s == pytest.approx(2.0)


def test_reaching_minimums_on_the_max_crossing_call_is_not_truncated() -> None:
    w = FakeWorld([1000 * MS])
    s = measure_latency(
        w.fn,
        batch_size=1,
        warmup=0,
        min_iters=2,
        min_seconds=2.0,
        max_seconds=2.0,
        clock=w.clock,
    )
    assert s.n_iters == 2
    assert not s.truncated


def test_clock_that_never_advances_is_capped() -> None:
    w = FakeWorld([0])
    s = measure_latency(
        w.fn,
        batch_size=1,
        warmup=0,
        min_iters=3,
        min_seconds=1.0,
        max_iters=50,
        clock=w.clock,
    )
    assert s.truncated and s.n_iters == 50
    assert math.isinf(s.throughput_items_per_s)


def test_statistics_match_hand_computation() -> None:
    w = script(first=7 * MS, warmup=[], timed=[1 * MS, 2 * MS, 3 * MS, 4 * MS, 10 * MS])
    s = measure_latency(
        w.fn, batch_size=8, warmup=0, min_iters=5, min_seconds=0.0, clock=w.clock
    )
    assert s.raw_ms == [1.0, 2.0, 3.0, 4.0, 10.0]
    assert s.first_call_ms == 7.0
    assert s.p50_ms == pytest.approx(3.0)
    # Linear interpolation: rank 0.9*4 = 3.6 -> 4 + 0.6*(10-4); rank 3.96 -> 4 + 0.96*6.
    assert s.p90_ms == pytest.approx(7.6)
    assert s.p99_ms == pytest.approx(9.76)
    assert s.mean_ms == pytest.approx(4.0)
    # Sample stdev: squared deviations 9+4+1+0+36 = 50, / (5-1) -> sqrt(12.5).
    assert s.stdev_ms == pytest.approx(math.sqrt(12.5))
    assert s.cv_pct == pytest.approx(100 * math.sqrt(12.5) / 4.0)
    assert s.min_ms == 1.0 and s.max_ms == 10.0
    assert s.total_s == pytest.approx(0.020)
    assert s.throughput_items_per_s == pytest.approx(8 * 5 / 0.020)
    assert s.batch_size == 8
    assert s.noisy  # cv ~ 88 % > 10 %


def test_first_call_excluded_and_warmup_not_timed() -> None:
    hour = 3_600_000 * MS
    w = script(first=500 * MS, warmup=[hour, hour, hour], timed=[2 * MS] * 4)
    s = measure_latency(
        w.fn, batch_size=1, warmup=3, min_iters=4, min_seconds=0.0, clock=w.clock
    )
    assert s.first_call_ms == 500.0
    assert s.raw_ms == [2.0, 2.0, 2.0, 2.0]
    assert s.max_ms == 2.0 and s.total_s == pytest.approx(0.008)
    assert w.calls == 1 + 3 + 4
    assert not s.noisy and s.cv_pct == 0.0


def test_noise_threshold() -> None:
    w = FakeWorld([10 * MS, 12 * MS])  # sample cv = 100*sqrt(10/9)/11 ~ 9.6 %
    s = measure_latency(
        w.fn, batch_size=1, warmup=0, min_iters=10, min_seconds=0.0, clock=w.clock
    )
    assert s.cv_pct == pytest.approx(100 * math.sqrt(10 / 9) / 11) and not s.noisy
    s2 = measure_latency(
        w.fn,
        batch_size=1,
        warmup=0,
        min_iters=10,
        min_seconds=0.0,
        noisy_cv_pct=5.0,
        clock=w.clock,
    )
    assert s2.noisy


def test_summary_and_to_dict() -> None:
    w = FakeWorld([1 * MS, 3 * MS])
    s = measure_latency(
        w.fn, batch_size=4, warmup=1, min_iters=4, min_seconds=0.0, clock=w.clock
    )
    summ = s.summary(prefix="lat_")
    assert "lat_raw_ms" not in summ
    assert summ["lat_p50_ms"] == s.p50_ms
    assert summ["lat_noisy"] in (0.0, 1.0) and summ["lat_truncated"] == 0.0
    assert all(isinstance(v, float) for v in summ.values())
    d = s.to_dict()
    assert d["raw_ms"] == s.raw_ms and len(d["raw_ms"]) == s.n_iters
    assert LatencyStats(**d) == s


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 0},
        {"batch_size": 1, "min_iters": 0},
        {"batch_size": 1, "warmup": -1},
        {"batch_size": 1, "min_seconds": 5.0, "max_seconds": 1.0},
    ],
)
def test_invalid_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        measure_latency(lambda: None, **kwargs)


def test_real_clock_measures_at_least_the_sleep() -> None:
    # time.sleep sleeps at least the requested time, so every sample is a lower-bounded fact.
    s = measure_latency(
        lambda: time.sleep(0.001), batch_size=2, warmup=1, min_iters=5, min_seconds=0.01
    )
    assert s.n_iters >= 5 and s.total_s >= 0.01
    assert min(s.raw_ms) >= 1.0
    assert s.total_s == pytest.approx(sum(s.raw_ms) / 1e3)
    assert timeit_reference(lambda: time.sleep(0.001), number=3, repeat=3) >= 1.0


# --- memory -------------------------------------------------------------------------------

_200MB_FLOAT64 = 200 * 1024 * 1024 // 8


def test_peak_rss_sees_an_array_alive_at_exit() -> None:
    with PeakRSSSampler() as s:
        a = np.ones(_200MB_FLOAT64)  # np.ones writes every page, so RSS really grows
    assert a[-1] == 1.0
    assert s.peak_delta_mb >= 150
    assert s.peak_mb == pytest.approx(s.baseline_mb + s.peak_delta_mb)
    # The kernel's lifetime peak can't be below what was sampled.
    assert process_peak_rss_mb() >= s.peak_mb - 1
    del a


def test_peak_rss_catches_a_transient_peak_on_the_thread() -> None:
    with PeakRSSSampler(interval_s=0.002) as s:
        a = np.ones(_200MB_FLOAT64)
        time.sleep(0.1)
        del a  # freed before exit: only the sampling thread can have seen it
        after_free_mb = psutil.Process().memory_info().rss / 2**20
    assert s.n_samples > 2
    assert s.peak_delta_mb >= 150
    assert s.peak_mb > after_free_mb + 100


def test_peak_rss_short_block_has_values() -> None:
    with PeakRSSSampler(interval_s=10.0) as s:
        pass
    assert s.n_samples == 2  # entry + exit
    assert s.baseline_mb > 0 and s.peak_mb >= s.baseline_mb and s.peak_delta_mb >= 0
    assert set(s.summary("mem_")) == {
        "mem_baseline_mb",
        "mem_peak_mb",
        "mem_peak_delta_mb",
    }


def test_process_peak_rss_is_at_least_current_rss() -> None:
    assert process_peak_rss_mb() >= psutil.Process().memory_info().rss / 2**20 - 1


def test_time_call_replaces_the_host_clock() -> None:
    """A device timer (CUDA events on a GPU) decides every sample, the cold call included;
    the host clock is not read at all."""
    device_ns = iter([7 * MS, 1 * MS, 2 * MS, 3 * MS, 4 * MS])  # cold call, then 4 timed
    calls: list[int] = []

    def fn() -> None:
        calls.append(1)

    def time_call(f) -> int:
        f()
        return next(device_ns)

    def broken_clock() -> int:
        raise AssertionError("the host clock must not be read when time_call is given")

    s = measure_latency(fn, batch_size=2, warmup=1, min_iters=4, min_seconds=0,
                        clock=broken_clock, time_call=time_call)
    # warm-up calls are not timed: the iterator holds exactly cold + 4 timed values
    assert s.first_call_ms == 7.0
    assert s.raw_ms == [1.0, 2.0, 3.0, 4.0]
    assert s.p50_ms == 2.5
    assert len(calls) == 1 + 1 + 4


def test_wall_clock_timer_reads_the_clock_around_the_call() -> None:
    w = FakeWorld([5 * MS])
    assert wall_clock_timer(w.clock)(w.fn) == 5 * MS
