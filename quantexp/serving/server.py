"""A dynamic-batching server loop over a real runtime, with per-interval monitoring.

One worker (the process's model call) serves one queue: it starts a batch when
``batch_size`` requests wait, or when the oldest has waited ``max_wait_s``; the
precision and batch size come from a policy that is asked again at every interval
boundary with that interval's figures (arrivals, completions, p50/p99 latency,
queue length, throughput). Requests arrive on the wall clock from a precomputed
Poisson schedule (``loadgen``); a request still unserved when the phase ends counts
with the time it has waited so far (a lower bound), so a configuration that falls
behind cannot look fast by leaving its slow requests out. Python's cycle collector is
paused while a phase is served (``bench.collector``: one full collection in a run's
process took up to 326 ms, the p99 of whichever configuration it fell on).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from quantexp.bench.collector import collector_paused


@dataclass(frozen=True)
class ServeConfig:
    """What the server runs with: requests per batch and the model precision."""

    batch_size: int
    precision: str

    @property
    def label(self) -> str:
        return f"b{self.batch_size}_{self.precision}"


class Policy(Protocol):
    """Asked at every interval boundary (``decide``) and before every batch
    (``before_batch``, with the queue length, how long its oldest request has waited, and
    the arrivals of the interval so far in its elapsed seconds: a reaction faster than
    an interval)."""

    def decide(self, interval: "IntervalStats | None") -> ServeConfig: ...
    def before_batch(self, queue_len: int, oldest_wait_s: float, arrived: int, elapsed_s: float) -> ServeConfig: ...
    def observe_batch(self, config: ServeConfig, size: int, service_s: float) -> None: ...


class StaticPolicy:
    """One configuration throughout (the baselines a controller is compared with)."""

    def __init__(self, config: ServeConfig):
        self.config = config

    def decide(self, interval: "IntervalStats | None") -> ServeConfig:
        return self.config

    def before_batch(self, queue_len: int, oldest_wait_s: float, arrived: int, elapsed_s: float) -> ServeConfig:
        return self.config

    def observe_batch(self, config: ServeConfig, size: int, service_s: float) -> None:
        pass


def percentile_ms(values_s: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values_s, q) * 1e3) if len(values_s) else None


@dataclass(frozen=True)
class IntervalStats:
    index: int
    start_s: float
    end_s: float
    config: ServeConfig  # in force at the end of the interval
    arrivals: int
    completed: int
    p50_ms: float | None
    p99_ms: float | None
    queue_len: int  # waiting at the end of the interval
    mean_batch: float | None

    @property
    def throughput(self) -> float:
        return self.completed / max(self.end_s - self.start_s, 1e-9)

    @property
    def arrival_rate(self) -> float:
        return self.arrivals / max(self.end_s - self.start_s, 1e-9)

    def metrics(self) -> dict[str, float]:
        """Step metrics of the interval (absent values left out)."""
        out = {"p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "queue_len": self.queue_len,
               "throughput": self.throughput, "arrival_rate": self.arrival_rate,
               "batch_size": self.config.batch_size, "mean_batch": self.mean_batch}
        return {k: float(v) for k, v in out.items() if v is not None}


@dataclass
class PhaseResult:
    rate: float
    latencies_s: np.ndarray  # per request; unserved ones: waited until the phase ended
    completed: np.ndarray  # bool per request
    end_s: float
    intervals: list[IntervalStats] = field(default_factory=list)
    served_by: dict[str, int] = field(default_factory=dict)  # precision -> requests

    @property
    def n_requests(self) -> int:
        return len(self.latencies_s)

    @property
    def p50_ms(self) -> float | None:
        return percentile_ms(self.latencies_s, 50)

    @property
    def p99_ms(self) -> float | None:
        return percentile_ms(self.latencies_s, 99)

    @property
    def throughput(self) -> float:
        return int(self.completed.sum()) / max(self.end_s, 1e-9)

    def meets(self, slo_ms: float) -> bool:
        return bool(self.completed.all()) and self.p99_ms is not None and self.p99_ms <= slo_ms

    def summary(self) -> dict[str, float | None]:
        return {"rate": self.rate, "requests": float(self.n_requests),
                "completed": float(self.completed.sum()), "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
                "throughput": self.throughput, "duration_s": self.end_s}


@collector_paused()
def serve(arrivals_s: np.ndarray, infer: Callable[[np.ndarray, str], object], policy: Policy, *,
          max_wait_s: float, interval_s: float, drain_s: float, rate: float = 0.0,
          clock: Callable[[], float] = time.perf_counter,
          sleep: Callable[[float], None] = time.sleep) -> PhaseResult:
    """Serve every request of ``arrivals_s`` (seconds from the start, increasing) with ``infer(request
    ids, precision)``; stop when all are served or ``drain_s`` after the last arrival."""
    n = len(arrivals_s)
    latency = np.full(n, np.nan)
    done_at = np.full(n, np.nan)
    deadline = (float(arrivals_s[-1]) if n else 0.0) + drain_s
    queue: deque[int] = deque()
    batches: list[tuple[float, int]] = []  # (end time, size) of the current interval
    intervals: list[IntervalStats] = []
    served_by: dict[str, int] = {}
    config = policy.decide(None)
    nxt, start_interval, first_of_interval = 0, 0.0, 0
    t0 = clock()

    def close_interval(end: float) -> None:
        nonlocal config, start_interval, batches, first_of_interval
        in_window = (done_at >= start_interval) & (done_at < end)
        lat = latency[in_window]
        end_index = int(np.searchsorted(arrivals_s, end))  # arrivals (sorted) before ``end``
        arrived = end_index - first_of_interval
        sizes = [size for _, size in batches]
        stats = IntervalStats(len(intervals), start_interval, end, config, arrived, int(in_window.sum()),
                              percentile_ms(lat, 50), percentile_ms(lat, 99), len(queue),
                              float(np.mean(sizes)) if sizes else None)
        intervals.append(stats)
        config = policy.decide(stats)
        start_interval, batches, first_of_interval = end, [], end_index

    while True:
        now = clock() - t0
        while nxt < n and arrivals_s[nxt] <= now:
            queue.append(nxt)
            nxt += 1
        while now >= start_interval + interval_s:
            close_interval(start_interval + interval_s)
        if (nxt >= n and not queue) or now >= deadline:
            break
        boundary = start_interval + interval_s
        if not queue:
            sleep(max(0.0, min(arrivals_s[nxt], boundary) - now))
            continue
        config = policy.before_batch(len(queue), now - arrivals_s[queue[0]], nxt - first_of_interval,
                                     now - start_interval)
        if len(queue) < config.batch_size and nxt < n:
            fire_at = arrivals_s[queue[0]] + max_wait_s
            if now < fire_at:
                sleep(max(0.0, min(fire_at, arrivals_s[nxt], boundary) - now))
                continue
        ids = np.array([queue.popleft() for _ in range(min(config.batch_size, len(queue)))])
        started = clock()
        infer(ids, config.precision)
        ended = clock()
        end = ended - t0
        latency[ids] = end - arrivals_s[ids]
        done_at[ids] = end
        batches.append((end, len(ids)))
        served_by[config.precision] = served_by.get(config.precision, 0) + len(ids)
        policy.observe_batch(config, len(ids), ended - started)
    end = clock() - t0
    if end > start_interval:
        close_interval(end)
    completed = ~np.isnan(done_at)
    waited = np.where(completed, latency, np.maximum(end - arrivals_s, 0.0))
    last = float(np.nanmax(done_at)) if completed.any() else end
    return PhaseResult(rate, waited, completed, last, intervals, served_by)


__all__ = ["IntervalStats", "PhaseResult", "Policy", "ServeConfig", "StaticPolicy", "percentile_ms", "serve"]
