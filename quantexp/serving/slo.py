"""Batch size and precision under a p99 latency SLO: the controller, and the verdict of
a comparison with every static configuration.

The controller holds a service-time table (seconds per batch, per batch size and
precision: profiled with real calls before the load starts, then updated from every
batch served) and, at each interval boundary, an estimate of the offered load: the
arrival rate of the last interval (smoothed) plus the backlog, which must also drain.
For each configuration it predicts the p99 latency at that load: the time a request
waits for its batch to fill (at most ``max_wait``), the batch's service time, and a
queueing term that grows as utilisation rho nears 1: ln 100 * rho / (2 (1 - rho))
service times, the M/D/1 mean wait (service times that do not vary) stretched by the
ln 100 of an exponential tail to its 99th percentile. That is a rough, pessimistic
model; it only has to rank configurations, and a backlog check makes up for its
errors. Among the configurations predicted to meet the SLO below a utilisation cap
it takes the most preferred precision (higher precision first: the SLO is the
constraint, accuracy the thing to keep), then the lowest predicted latency; when
none is predicted to, the one with the most capacity. Between intervals, a backlog
the current configuration cannot clear within half the SLO (a step in load)
switches at once (``before_batch``): an interval is too long to wait for.
"""

from __future__ import annotations

import collections
import math
import statistics
from dataclasses import dataclass

from quantexp.serving.server import IntervalStats, PhaseResult, ServeConfig

_P99_TAIL = math.log(100.0)


class ServiceTimes:
    """Seconds per batch for each configuration: the median of the profiled time and the
    last ``window`` full batches observed. A median, not a running mean: one slow call (a
    page fault, the garbage collector) must not make a configuration look several times
    slower for the intervals after it (a running mean weighting the newest batch 0.2
    took a single 20x call as a 4.8x slower configuration)."""

    def __init__(self, profiled_s: dict[ServeConfig, float], window: int = 31):
        if not profiled_s:
            raise ValueError("need at least one profiled configuration")
        self.samples = {c: collections.deque([s], maxlen=window) for c, s in profiled_s.items()}
        # kept up to date on each observation: read for every configuration at every
        # interval and before every batch (the serving loop), written once per batch
        self.seconds = dict(profiled_s)

    def observe(self, config: ServeConfig, size: int, service_s: float) -> None:
        # A partial batch (timed out before it filled) says little about a full one.
        if config in self.samples and size == config.batch_size:
            self.samples[config].append(service_s)
            self.seconds[config] = float(statistics.median(self.samples[config]))

    def __getitem__(self, config: ServeConfig) -> float:
        return self.seconds[config]


def predicted_p99_s(config: ServeConfig, service_s: float, load: float, max_wait_s: float) -> tuple[float, float]:
    """(predicted p99 latency in seconds, utilisation) of ``config`` at ``load`` items/s."""
    b = config.batch_size
    fill = 0.0 if b == 1 else (min(max_wait_s, (b - 1) / load) if load > 0 else max_wait_s)
    # A batch holds what arrives while the previous one is served and the next one waits
    # (at most b): at light load batches time out part-full and give less capacity.
    per_batch = b if load <= 0 else max(1.0, min(b, load * (max_wait_s + service_s)))
    rho = load * service_s / per_batch
    if rho >= 1.0:
        return math.inf, rho
    return fill + service_s * (1.0 + _P99_TAIL * rho / (2.0 * (1.0 - rho))), rho


class SloController:
    """Picks a ``ServeConfig`` per interval to meet ``slo_s`` (p99) at the offered load."""

    def __init__(self, configs: list[ServeConfig], times: ServiceTimes, slo_s: float, max_wait_s: float,
                 precision_order: list[str], max_utilisation: float = 0.8, smoothing: float = 0.5):
        if not configs:
            raise ValueError("need at least one configuration")
        self.configs = list(configs)
        self.times = times
        self.slo_s = slo_s
        self.max_wait_s = max_wait_s
        self.rank = {p: i for i, p in enumerate(precision_order)}
        self.max_utilisation = max_utilisation
        self.smoothing = smoothing
        self.rate: float | None = None
        # ``chosen``: the interval's choice for its offered load; ``current``: what runs now,
        # which a backlog may have switched away from ``chosen`` until it is cleared
        self.chosen = self.current = min(self.configs, key=lambda c: (self.preference(c), c.batch_size))

    def preference(self, config: ServeConfig) -> int:
        """0 for the most preferred precision; precisions not ranked come last."""
        return self.rank.get(config.precision, len(self.rank))

    def observe_batch(self, config: ServeConfig, size: int, service_s: float) -> None:
        self.times.observe(config, size, service_s)

    def load(self, interval: IntervalStats) -> float:
        rate = interval.arrival_rate
        self.rate = rate if self.rate is None else self.smoothing * rate + (1 - self.smoothing) * self.rate
        # The backlog has to drain within the next interval as well.
        return max(self.rate, rate) + interval.queue_len / max(interval.end_s - interval.start_s, 1e-9)

    def choose(self, load: float) -> ServeConfig:
        feasible = []
        for c in self.configs:
            p99, rho = predicted_p99_s(c, self.times[c], load, self.max_wait_s)
            if p99 <= self.slo_s and rho <= self.max_utilisation:
                feasible.append((self.preference(c), p99, c.batch_size, c))
        if feasible:
            return min(feasible, key=lambda f: f[:3])[3]
        # Nothing meets it: the most capacity (items per second of service), to drain.
        return max(self.configs, key=lambda c: (c.batch_size / self.times[c], -c.batch_size))

    def before_batch(self, queue_len: int) -> ServeConfig:
        """A backlog the interval's choice cannot clear within half the SLO (a step in
        load between two intervals, or a stall) switches at once to a configuration
        that can, the preferred precision first, or to the one that clears it fastest;
        once the interval's choice can clear what waits, it runs again. (Staying in the
        backlog's larger batch to the end of the interval made every request after the
        backlog wait for that batch to fill: at a 3 ms SLO and 1,000 items/s, a p99 of
        7 ms where batch 1 alone kept 2.6 ms.)"""
        def drain(c: ServeConfig) -> float:
            return math.ceil(queue_len / c.batch_size) * self.times[c]

        budget = 0.5 * self.slo_s
        if drain(self.chosen) <= budget:
            self.current = self.chosen
        elif drain(self.current) > budget:
            ok = [c for c in self.configs if drain(c) <= budget]
            self.current = (min(ok, key=lambda c: (self.preference(c), drain(c)))
                            if ok else min(self.configs, key=drain))
        return self.current

    def decide(self, interval: IntervalStats | None) -> ServeConfig:
        if interval is not None:
            self.chosen = self.current = self.choose(self.load(interval))
        return self.current


@dataclass(frozen=True)
class Verdict:
    """Which runs met the SLO and the highest rate each sustained."""

    slo_ms: float
    best_rate: dict[str, float | None]  # run label -> highest offered rate that met the SLO
    best_throughput: dict[str, float | None]  # ... and the throughput measured there
    best_static: str | None
    controller_matches: bool | None  # None: no controller run
    closest: str | None  # when no run met the SLO: the one with the lowest p99 at the first rate

    def describe(self) -> str:
        if all(rate is None for rate in self.best_rate.values()):
            return f"no configuration meets p99 <= {self.slo_ms:g} ms at any offered rate; closest: {self.closest}"
        static = (f"best static {self.best_static}: {self.best_rate[self.best_static]:g} items/s"
                  if self.best_static else "no static configuration meets it")
        if self.controller_matches is None:
            return static
        ctrl = self.best_rate.get("controller")
        return f"{static}; controller: {'no rate' if ctrl is None else f'{ctrl:g} items/s'}"


def verdict(runs: dict[str, list[PhaseResult]], slo_ms: float) -> Verdict:
    """``runs``: label -> its phases (same rates, same schedules, in order)."""
    best_rate: dict[str, float | None] = {}
    best_tput: dict[str, float | None] = {}
    for label, results in runs.items():
        met = [r for r in results if r.meets(slo_ms)]
        top = max(met, key=lambda r: r.rate) if met else None
        best_rate[label] = top.rate if top else None
        best_tput[label] = top.throughput if top else None
    statics = {k: v for k, v in best_rate.items() if k != "controller" and v is not None}
    best_static = max(statics, key=lambda k: (statics[k], best_tput[k])) if statics else None
    matches = None
    if "controller" in runs:
        ctrl = best_rate["controller"]
        matches = (ctrl is not None and (best_static is None or ctrl >= best_rate[best_static]))
    closest = None
    if all(rate is None for rate in best_rate.values()):
        first = {k: v[0] for k, v in runs.items() if v and v[0].p99_ms is not None}
        if first:
            label = min(first, key=lambda k: first[k].p99_ms)
            closest = f"{label} at {first[label].rate:g} items/s: p99 {first[label].p99_ms:.1f} ms"
    return Verdict(slo_ms, best_rate, best_tput, best_static, matches, closest)


__all__ = ["ServiceTimes", "SloController", "Verdict", "predicted_p99_s", "verdict"]
