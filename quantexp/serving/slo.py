"""Batch size and precision under a p99 latency SLO: the controller, and the verdict of
a comparison with every static configuration.

The controller holds a service-time table (seconds per batch, per batch size and
precision: profiled with real calls before the load starts, then updated from every
batch served) and, at each interval boundary, an estimate of the offered load: the
arrival rate of the last interval (smoothed) plus the backlog, which must also drain.
For each configuration it predicts the p99 latency at that load (``predicted_p99_s``):
the time a request waits for its batch to fill (at most ``max_wait``), the batch's
service time, and a queueing term that grows as utilisation rho nears 1 (Kingman's
mean wait for batches that form every b Poisson arrivals, stretched by the ln 100 of an
exponential tail to its 99th percentile). That is a rough, pessimistic model; it only
has to rank configurations, and a backlog check makes up for its errors. Among the
configurations predicted to meet the SLO below a utilisation cap it takes the most
preferred precision (higher precision first: the SLO is the constraint, accuracy the
thing to keep), then the lowest predicted latency; when none is predicted to, the lowest predicted latency among those that keep up, or, past
every configuration's capacity, the one with the most. Between intervals
(``before_batch``) it reacts to a step in load at once, as an interval is too long to
wait for: up, arrivals implausibly many for its estimate make it read the rate again
and choose again, and a backlog the current configuration cannot clear within half
the SLO switches to one that can; down, a batch that fills implausibly slowly for the
SLO is given up for a smaller one the queue already fills.

The model leaves out what the host adds to every request (the scheduler, the garbage
collector, Python's own overhead between batches). The controller measures it: after
each interval it compares the p99 it observed with the p99 the model predicts for
that interval's configuration at the load that arrived, and keeps a smoothed slack
(never below 0) that every later prediction must fit under the SLO with.
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
    took a single 20x call as a 4.8x slower configuration).

    A configuration that has not run since the profile is read as its profiled time
    times the host's factor: the median, over the configurations observed (``MIN_SEEN``
    full batches or more), of observed over profiled. The profile gives the relative
    costs; what runs shows the host's level now. Without it the configurations that ran
    were judged at the host's current speed and the others at the profile's: at 51,000
    items/s (past every capacity) the controller took batches of 16 through the cascade
    (observed 0.5 ms while serving) over batches of 16 in int8 alone (profiled 0.56 ms,
    never run since), although the cascade is int8 plus escalations."""

    MIN_SEEN = 3

    def __init__(self, profiled_s: dict[ServeConfig, float], window: int = 31):
        if not profiled_s:
            raise ValueError("need at least one profiled configuration")
        if window <= self.MIN_SEEN:
            raise ValueError(f"window must exceed MIN_SEEN ({self.MIN_SEEN}), got {window}")
        self.profiled = dict(profiled_s)
        # the profiled time, then the full batches observed (so len - 1 of them, until full)
        self.samples = {c: collections.deque([s], maxlen=window) for c, s in profiled_s.items()}
        # kept up to date on each observation: read for every configuration at every
        # interval and before every batch (the serving loop), written once per batch
        self.seconds = dict(profiled_s)

    def _seen(self, config: ServeConfig) -> bool:
        return len(self.samples[config]) > self.MIN_SEEN

    def observe(self, config: ServeConfig, size: int, service_s: float) -> None:
        # A partial batch (timed out before it filled) says little about a full one.
        if config not in self.samples or size != config.batch_size:
            return
        self.samples[config].append(service_s)
        self.seconds[config] = float(statistics.median(self.samples[config]))
        observed = [c for c in self.profiled if self._seen(c)]
        if observed:
            host_factor = float(statistics.median(self.seconds[c] / self.profiled[c] for c in observed))
            for c in self.profiled:
                if not self._seen(c):
                    self.seconds[c] = self.profiled[c] * host_factor

    def __getitem__(self, config: ServeConfig) -> float:
        return self.seconds[config]


def predicted_p99_s(config: ServeConfig, service_s: float, load: float, max_wait_s: float) -> tuple[float, float]:
    """(predicted p99 latency in seconds, utilisation) of ``config`` at ``load`` items/s.

    Three parts, added (a pessimistic bound: they overlap in part):
    - filling: the first request of a batch waits for b - 1 more Poisson arrivals, an
      Erlang(b - 1) time, taken at its 99th percentile, or ``max_wait`` when shorter;
    - service: one batch's time;
    - queueing for the worker: Kingman's G/G/1 mean wait, s * rho / (1 - rho) *
      (ca^2 + cs^2) / 2, stretched by ln 100 to a 99th percentile. Batches form every b
      arrivals, so their interarrival times vary as an Erlang(b)'s (ca^2 = 1 / b), and the
      service time is taken as constant (cs^2 = 0; what the host adds is the learned slack).
      With b = 1 this is the M/D/1 wait. Counting each request as its own arrival instead
      (ca^2 = 1 for every batch size, the model before) predicted 21.7 ms for batches of 16
      at 6,000 items/s (rho 0.78) where 5.9-7.9 ms were measured; this predicts 7.4 ms.
    """
    b = config.batch_size
    if b == 1:
        fill = 0.0
    elif load <= 0:
        fill = max_wait_s
    else:
        from scipy.special import gammaincinv  # a ufunc; scipy is already loaded for the step tests

        fill = min(max_wait_s, float(gammaincinv(b - 1, 0.99)) / load)
    # A batch holds what arrives while the previous one is served and the next one waits
    # (at most b): at light load batches time out part-full and give less capacity.
    per_batch = b if load <= 0 else max(1.0, min(b, load * (max_wait_s + service_s)))
    rho = load * service_s / per_batch
    if rho >= 1.0:
        return math.inf, rho
    queueing = _P99_TAIL * service_s * rho / (1.0 - rho) * (1.0 / per_batch) / 2.0
    return fill + service_s + queueing, rho


def poisson_cdf(k: int, mean: float) -> float:
    """P(N <= k) for N ~ Poisson(mean): scipy.special's ``pdtr``, a ufunc (~1 us a call;
    ``scipy.stats.poisson.cdf`` costs ~45 us, too much before every batch of a server
    whose budget is a few milliseconds); 0 for k < 0, where ``pdtr`` gives nan."""
    from scipy.special import pdtr

    return 0.0 if k < 0 else float(pdtr(k, mean))


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
        self.slack_s = 0.0  # measured p99 beyond the model's, smoothed (seconds, >= 0)
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
        if self.rate is None or interval.arrivals >= self.MIN_COUNT:
            self.rate = rate  # Poisson noise of 10 % or less: this interval's own rate
        else:  # a few arrivals say little: smoothed
            self.rate = self.smoothing * rate + (1 - self.smoothing) * self.rate
        # The backlog has to drain within the next interval as well.
        return max(self.rate, rate) + interval.queue_len / max(interval.end_s - interval.start_s, 1e-9)

    # A step in load is believed when a count of arrivals is this unlikely at the
    # estimated rate: that many or more in the interval so far (up), that few or fewer
    # behind the oldest waiting request (down).
    STEP_P = 1e-3
    # An interval's p99 says something only with this many completions (the top 1 % is
    # then at least one request), and its arrival rate is then within ~10 % (Poisson).
    MIN_COUNT = 100

    def learn_slack(self, interval: IntervalStats) -> None:
        """What the interval's measured p99 shows beyond the model's prediction for its
        configuration at the load that arrived (a step in load or a backlog switch
        within the interval makes that a rough figure; the smoothing absorbs it)."""
        if interval.p99_ms is None or interval.completed < self.MIN_COUNT:
            return
        c = interval.config
        predicted, _ = predicted_p99_s(c, self.times[c], interval.arrival_rate, self.max_wait_s)
        if not math.isfinite(predicted):
            return  # an overloaded interval: its queue, not the host, set its p99
        excess = max(interval.p99_ms / 1e3 - predicted, 0.0)
        self.slack_s = self.smoothing * excess + (1 - self.smoothing) * self.slack_s

    def choose(self, load: float) -> ServeConfig:
        feasible, keeping_up = [], []
        for c in self.configs:
            p99, rho = predicted_p99_s(c, self.times[c], load, self.max_wait_s)
            if p99 + self.slack_s <= self.slo_s and rho <= self.max_utilisation:
                feasible.append((self.preference(c), p99, c.batch_size, c))
            if rho < 1.0:
                keeping_up.append((p99, self.preference(c), c.batch_size, c))
        if feasible:
            return min(feasible, key=lambda f: f[:3])[3]
        if keeping_up:  # nothing meets it: come closest (the most capacity would add batch waits)
            return min(keeping_up, key=lambda f: f[:3])[3]
        # Past every configuration's capacity: the most (items per second of service), to drain.
        return max(self.configs, key=lambda c: (c.batch_size / self.times[c], -c.batch_size))

    def before_batch(self, queue_len: int, oldest_wait_s: float = 0.0, arrived: int = 0,
                     elapsed_s: float = 0.0) -> ServeConfig:
        """A step in load between two intervals, met at once.

        Up: more requests arrived in the interval so far than the load estimate makes
        plausible (a Poisson count that high has odds below ``STEP_P``): the rate they
        show becomes the estimate, and the configuration is chosen again for it. (A
        phase of 3,000 items/s after one of 1,000 was served half by the slower phase's
        choice, until its first interval ended.)

        A backlog the interval's choice cannot clear within half the SLO (what the step
        up left, or a stall) switches to a configuration that can, the preferred
        precision first, or to the one that clears it fastest (a batch larger than the
        queue counting the wait for it to fill); once the interval's
        choice can clear what waits, it runs again. (Staying in the backlog's larger
        batch to the end of the interval made every request after the backlog wait for
        that batch to fill: at a 3 ms SLO and 1,000 items/s, a p99 of 7 ms where batch 1
        alone kept 2.6 ms.)

        Down: a batch still not full when its oldest request, served now, would already
        be past half the SLO, and fewer requests came after it than the interval's load
        estimate makes plausible (a Poisson count that low has odds below ``STEP_P``:
        that load has gone), is given up for the largest batch of the same precision
        that the queue already fills. (After a phase of 12,000 items/s, a phase of 1,000
        measured a p99 of 5.8-6.1 ms under a 3 ms SLO: about ``max_wait``, a large
        batch waiting to fill.)"""
        def drain(c: ServeConfig) -> float:
            return math.ceil(queue_len / c.batch_size) * self.times[c]

        def drain_from_now(c: ServeConfig) -> float:
            # A batch larger than the queue starts only once it fills or its oldest request
            # has waited max_wait: a configuration switched to for a backlog counts that
            # wait too. (Without it a backlog of 9 at 1,000 items/s switched to batches of
            # 16 "to drain faster", which then sat waiting for 7 more requests: interval
            # p99s of 6-12 ms under a 3 ms SLO where batch 1 alone kept 2-3 ms.) The
            # interval's own choice is judged by ``drain``: its filling is what it was
            # chosen with.
            if queue_len >= c.batch_size:
                return drain(c)
            arrivals = (c.batch_size - queue_len) / self.rate if self.rate else math.inf
            return min(max(self.max_wait_s - oldest_wait_s, 0.0), arrivals) + drain(c)

        budget = 0.5 * self.slo_s
        expected = (self.rate or 0.0) * elapsed_s
        # (the cheap test first: most batches never ask for the odds)
        if (self.rate and elapsed_s > 0 and arrived > 1.5 * expected + 5.0
                and 1.0 - poisson_cdf(arrived - 1, expected) < self.STEP_P):
            self.rate = arrived / elapsed_s
            self.chosen = self.current = self.choose(self.rate)
        if drain(self.chosen) <= budget:
            self.current = self.chosen
        elif drain(self.current) > budget:
            from_now = {c: drain_from_now(c) for c in self.configs}
            ok = [c for c in self.configs if from_now[c] <= budget]
            self.current = (min(ok, key=lambda c: (self.preference(c), from_now[c]))
                            if ok else min(self.configs, key=from_now.__getitem__))
        c = self.current
        if (queue_len < c.batch_size and oldest_wait_s + self.times[c] > budget and self.rate
                and poisson_cdf(queue_len - 1, self.rate * oldest_wait_s) < self.STEP_P):
            # the same precision (what the load was thought to need), in the largest batch
            # the queue fills now
            filled = [f for f in self.configs if f.precision == c.precision and f.batch_size <= max(queue_len, 1)]
            if filled:  # and it stays the choice until the next interval decides again
                self.chosen = self.current = max(filled, key=lambda f: f.batch_size)
        return self.current

    def decide(self, interval: IntervalStats | None) -> ServeConfig:
        if interval is not None:
            self.learn_slack(interval)
            self.chosen = self.current = self.choose(self.load(interval))
        return self.current


@dataclass(frozen=True)
class RepeatedPhase:
    """One run (a static configuration or the controller) at one rate, served ``len(results)``
    times on the same arrivals. It meets the SLO when every request of every serving was
    served and the median serving's p99 is within it: on a shared host one stall in one
    serving (a 30 ms pause puts ~90 requests of a 3,000 items/s phase over a 3 ms SLO)
    must not decide which configuration is best."""

    results: tuple[PhaseResult, ...]

    @property
    def rate(self) -> float:
        return self.results[0].rate

    def _median(self, values: list[float | None]) -> float | None:
        return None if any(v is None for v in values) else float(statistics.median(values))

    @property
    def p50_ms(self) -> float | None:
        return self._median([r.p50_ms for r in self.results])

    @property
    def p99_ms(self) -> float | None:
        return self._median([r.p99_ms for r in self.results])

    @property
    def throughput(self) -> float:
        return float(statistics.median(r.throughput for r in self.results))

    @property
    def served_by(self) -> dict[str, int]:
        return dict(sum((collections.Counter(r.served_by) for r in self.results), collections.Counter()))

    def meets(self, slo_ms: float) -> bool:
        p99 = self.p99_ms
        return all(bool(r.completed.all()) for r in self.results) and p99 is not None and p99 <= slo_ms

    def summary(self) -> dict[str, float | str | None]:
        """The medians over the servings, each serving's p99 alongside ("2.31/2.4/9.8")."""
        first = self.results[0].summary()
        return {**first, "completed": float(min(r.completed.sum() for r in self.results)),
                "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "throughput": self.throughput,
                "duration_s": float(statistics.median(r.end_s for r in self.results)),
                "repeats": float(len(self.results)),
                "p99_ms_each": "/".join("-" if r.p99_ms is None else f"{r.p99_ms:.3g}" for r in self.results)}


@dataclass(frozen=True)
class Verdict:
    """Which runs met the SLO and the highest rate each sustained."""

    slo_ms: float
    best_rate: dict[str, float | None]  # run label -> highest offered rate that met the SLO
    best_throughput: dict[str, float | None]  # ... and the throughput measured there
    best_static: str | None
    # None: no controller run, or no run met the SLO at any rate (nothing to match)
    controller_matches: bool | None
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


def verdict(runs: dict[str, list[PhaseResult]] | dict[str, list[RepeatedPhase]], slo_ms: float) -> Verdict:
    """``runs``: label -> its phases (same rates, same schedules, in order), each served
    once (``PhaseResult``) or several times (``RepeatedPhase``)."""
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
    ctrl = best_rate.get("controller")
    if "controller" in runs and (ctrl is not None or best_static is not None):
        matches = ctrl is not None and (best_static is None or ctrl >= best_rate[best_static])
    closest = None
    if all(rate is None for rate in best_rate.values()):
        first = {k: v[0] for k, v in runs.items() if v and v[0].p99_ms is not None}
        if first:
            label = min(first, key=lambda k: first[k].p99_ms)
            closest = f"{label} at {first[label].rate:g} items/s: p99 {first[label].p99_ms:.1f} ms"
    return Verdict(slo_ms, best_rate, best_tput, best_static, matches, closest)


__all__ = ["RepeatedPhase", "ServiceTimes", "SloController", "Verdict", "poisson_cdf", "predicted_p99_s", "verdict"]
