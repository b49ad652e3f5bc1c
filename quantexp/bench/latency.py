"""Latency measurement harness: cold first call, warm-up, adaptive timed loop, statistics.

Owns how inference latency is measured and summarised for every runtime. Each call is
timed on its own so the raw distribution is kept (percentiles, noise detection), and the
clock is injectable so the stopping rules can be tested deterministically.
"""

from __future__ import annotations

import statistics
import time
import timeit
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from quantexp.bench.collector import collector_paused

NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency distribution of one measured callable (all times in ms unless named _s)."""

    raw_ms: list[float] = field(repr=False)
    n_iters: int
    total_s: float
    first_call_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    stdev_ms: float
    cv_pct: float
    min_ms: float
    max_ms: float
    throughput_items_per_s: float
    batch_size: int
    noisy: bool
    truncated: bool

    def summary(self, prefix: str = "") -> dict[str, float]:
        """Scalar metrics without the raw samples, ready to log (booleans as 0.0/1.0)."""
        out: dict[str, float] = {}
        for key, value in asdict(self).items():
            if key == "raw_ms":
                continue
            out[f"{prefix}{key}"] = float(value)
        return out

    def to_dict(self) -> dict[str, object]:
        """Everything, including the raw per-call samples (for artifacts, not metrics)."""
        d = asdict(self)
        d["raw_ms"] = list(self.raw_ms)
        return d


def stats_from_samples(
    raw_ms: list[float],
    *,
    first_call_ms: float,
    total_ns: int,
    batch_size: int,
    noisy_cv_pct: float,
    truncated: bool,
) -> LatencyStats:
    arr = np.asarray(raw_ms, dtype=np.float64)
    n = len(raw_ms)
    mean = float(arr.mean())
    # Sample standard deviation (n-1): the timed calls are a sample of the process.
    stdev = statistics.stdev(raw_ms) if n > 1 else 0.0
    cv = 100.0 * stdev / mean if mean > 0 else 0.0
    p50, p90, p99 = (
        float(v) for v in np.percentile(arr, [50, 90, 99], method="linear")
    )
    total_s = total_ns / NS_PER_S
    throughput = batch_size * n / total_s if total_s > 0 else float("inf")
    return LatencyStats(
        raw_ms=list(raw_ms),
        n_iters=n,
        total_s=total_s,
        first_call_ms=first_call_ms,
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        mean_ms=mean,
        stdev_ms=stdev,
        cv_pct=cv,
        min_ms=float(arr.min()),
        max_ms=float(arr.max()),
        throughput_items_per_s=throughput,
        batch_size=batch_size,
        noisy=cv > noisy_cv_pct,
        truncated=truncated,
    )


#: Times one call of a callable and returns its duration in nanoseconds.
CallTimer = Callable[[Callable[[], object]], int]


def wall_clock_timer(clock: Callable[[], int] = time.perf_counter_ns) -> CallTimer:
    """Host wall-clock time of one call (right for synchronous runtimes: CPU torch,
    ONNX Runtime, LiteRT, and MPS, whose runtime synchronises before returning)."""

    def time_call(fn: Callable[[], object]) -> int:
        t0 = clock()
        fn()
        return clock() - t0

    return time_call


def cuda_event_timer() -> CallTimer:
    """GPU time of one call, bracketed by CUDA events on the current stream.

    CUDA kernels run asynchronously: a host clock read right after the call measures
    only the kernel launches. So the device is synchronised first (work queued earlier
    is not charged to this call), events are recorded around the call, and the end
    event is waited for before reading ``elapsed_time``. Host->device input copies made
    inside the call are on the stream and are counted, as a user's call would pay them.
    """
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def time_call(fn: Callable[[], object]) -> int:
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return round(start.elapsed_time(end) * NS_PER_MS)  # elapsed_time is in ms

    return time_call


@collector_paused()
def measure_latency(
    fn: Callable[[], object],
    *,
    batch_size: int,
    warmup: int = 5,
    min_iters: int = 30,
    min_seconds: float = 2.0,
    max_seconds: float = 60.0,
    noisy_cv_pct: float = 10.0,
    clock: Callable[[], int] = time.perf_counter_ns,
    max_iters: int = 10_000_000,
    time_call: CallTimer | None = None,
) -> LatencyStats:
    """Time ``fn`` (one call = one batch of ``batch_size`` items).

    Order: one cold call timed alone (``first_call_ms``, never part of the stats), then
    ``warmup`` untimed calls, then timed calls until both ``min_iters`` calls and
    ``min_seconds`` of summed call time are reached. If ``max_seconds`` of summed call time
    (or ``max_iters`` calls, a guard against a clock that does not advance) pass first, the
    loop stops with ``truncated=True``. ``total_s`` and throughput use the summed per-call
    time, so the harness's own loop overhead is not charged to the model.

    ``time_call`` times one call (default: ``wall_clock_timer(clock)``); an asynchronous
    device passes its own, e.g. ``cuda_event_timer()``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if min_iters < 1:
        raise ValueError(f"min_iters must be >= 1, got {min_iters}")
    if min_seconds < 0 or max_seconds <= 0:
        raise ValueError(
            f"need min_seconds >= 0 and max_seconds > 0, got {min_seconds}, {max_seconds}"
        )
    if max_seconds < min_seconds:
        raise ValueError(
            f"max_seconds ({max_seconds}) < min_seconds ({min_seconds}): every run would truncate"
        )
    if max_iters < min_iters:
        raise ValueError(f"max_iters ({max_iters}) < min_iters ({min_iters})")

    time_call = time_call or wall_clock_timer(clock)
    first_call_ms = time_call(fn) / NS_PER_MS

    for _ in range(warmup):
        fn()

    min_ns = min_seconds * NS_PER_S
    max_ns = max_seconds * NS_PER_S
    raw_ns: list[int] = []
    total_ns = 0
    truncated = False
    while True:
        dt = time_call(fn)
        raw_ns.append(dt)
        total_ns += dt
        n = len(raw_ns)
        # Completion is checked first: reaching both minimums on the same call that crosses
        # max_seconds is a complete measurement, not a truncated one.
        if n >= min_iters and total_ns >= min_ns:
            break
        if total_ns >= max_ns or n >= max_iters:
            truncated = True
            break

    return stats_from_samples(
        [d / NS_PER_MS for d in raw_ns],
        first_call_ms=first_call_ms,
        total_ns=total_ns,
        batch_size=batch_size,
        noisy_cv_pct=noisy_cv_pct,
        truncated=truncated,
    )


def timeit_reference(fn: Callable[[], object], number: int, repeat: int) -> float:
    """Median per-call time in ms from the stdlib ``timeit`` (an independent cross-check).

    Note ``timeit`` disables the garbage collector while timing; ``measure_latency`` does not.
    """
    if number < 1 or repeat < 1:
        raise ValueError(f"number and repeat must be >= 1, got {number}, {repeat}")
    totals_s = timeit.Timer(fn).repeat(repeat=repeat, number=number)
    return float(statistics.median(t / number * 1e3 for t in totals_s))
