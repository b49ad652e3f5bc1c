"""Interleaved A/B timing: a reference and a candidate timed in alternating rounds in
one process, and the speed-up with a confidence interval over rounds and stretches.

Why interleave: timing fp32 for two seconds and then int8 for two seconds puts any
drift of the machine between the two phases (a neighbour's job, frequency scaling,
a cache flushed by the evaluation in between) into the ratio; five sequential reruns
of one experiment gave 0.94x..1.49x. Alternating short blocks (A B, then B A, ...)
exposes both sides to the same drift, so it cancels in the ratio, and the spread
between rounds becomes measurable: the confidence interval comes from resampling
whole rounds (a round keeps its A block and its B block together), so the drift
within a round stays paired.

The estimate is the ratio of medians of every timed call (reference p50 / candidate
p50: > 1 means the candidate is faster), so it equals the two latency rows the
report prints. The CI is a percentile bootstrap over rounds: resample R rounds with
replacement, pool their calls, take the ratio of the pooled medians. A CI that
contains 1.0 is "no significant difference"; one whose half-width exceeds
``noisy_pct`` of the ratio is flagged noisy.

Rounds are not independent on a shared VM: the speed-up itself (not only both
sides' speed, which interleaving cancels) wanders over seconds - a 20 s trace of the
default CNN pair on a 2-core EPYC moved between 1.05x and 1.43x in stretches of ~20
rounds, same objects, same process - so a bootstrap over single rounds is
overconfident (its CI contained the median of 37 windows of such traces in 13). The
reported CI is therefore the union of the round bootstrap and a batch-means interval
(the standard remedy for autocorrelated series in simulation output analysis): the
rounds, in the order they were timed, cut into ``drift_stretches`` contiguous
stretches, one log speed-up per stretch, a Student-t interval around the pooled one.
A stretch spans wander the round bootstrap misses, and with few of them the t
quantile keeps the interval honest (27 of those 37 windows). What it cannot see is a
level that a process holds from start to end (a later trace: three processes at
1.10x, 1.12x and 1.17x, steady each; 12 of 38 windows). ``drift_stretches=0`` reports
the round bootstrap alone; ``benchmarks/speedup_drift.py`` redoes the traces.

Hence sessions: ``time_rounds`` times one process's rounds and returns them raw, and
``speedup_of`` pools the sessions of several processes (``bench.processes``; the
others are forks, ``bench/forks.py``): the ratio of the pooled medians, and, in place
of the stretches, one batch per process - the t interval then spans the levels the
processes held (10 reruns of the default experiment, 5 processes each: 9 of 10
intervals held the median of all reruns, against 5-6 of 10 in one process).
``measure_interleaved`` is the one-process case, for callers that time two modules
they hold (the mixed method's int8 check, the kernel table).

The anchors read: pyperf (calibrated loops, many independent values, stdev reported
next to the mean) and ``torch.utils.benchmark`` (``blocked_autorange``: blocks of
calls timed together, the median as the statistic). ``benchmarks/latency_fidelity.py``
checks this harness against ``blocked_autorange`` on the same module.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from quantexp.bench.collector import collector_paused
from quantexp.bench.latency import NS_PER_MS, NS_PER_S, CallTimer, LatencyStats, stats_from_samples, wall_clock_timer

FASTER, SLOWER, SAME = "faster", "slower", "no significant difference"


@dataclass(frozen=True)
class Speedup:
    """Reference time / candidate time (> 1: the candidate is faster), with its CI."""

    ratio: float
    ci_low: float
    ci_high: float
    confidence: float
    rounds: int
    calls_per_round: int
    verdict: str  # FASTER, SLOWER or SAME (the CI contains 1.0)
    noisy: bool  # the CI's half-width is more than noisy_pct of the ratio
    # The two intervals whose union is [ci_low, ci_high]: the bootstrap over rounds and
    # the batch-means interval over contiguous stretches of rounds (None when disabled).
    rounds_ci: tuple[float, float]
    drift_ci: tuple[float, float] | None
    # How many processes the rounds were timed in (bench.processes; the batch-means
    # interval is then over processes) and each process's own ratio of medians.
    processes: int
    process_ratios: list[float]
    # Per-round medians in ms, in the order they were timed (raw values kept so that a
    # reader can redo the statistics); the per-call samples are in each LatencyStats.
    reference_round_ms: list[float] = field(repr=False)
    candidate_round_ms: list[float] = field(repr=False)

    @property
    def significant(self) -> bool:
        return self.verdict != SAME

    def describe(self) -> str:
        """'1.42x [1.30, 1.55]', or 'no significant difference (1.03x [0.95, 1.10])';
        ', noisy' when the interval is wide."""
        return describe_speedup(self.ratio, self.ci_low, self.ci_high, self.verdict, self.noisy)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def describe_speedup(ratio: float, ci_low: float | None, ci_high: float | None,
                     verdict: str | None, noisy: bool | float | None) -> str:
    """The one wording of a speed-up everywhere it is printed (summary, report, benchmarks)."""
    if ci_low is None or ci_high is None or verdict is None:  # timed without a partner
        return f"{ratio:.2f}x (no CI)"
    text = f"{ratio:.2f}x [{ci_low:.2f}, {ci_high:.2f}]"
    if verdict == SAME:
        text = f"no significant difference ({text})"
    return text + (", noisy" if noisy else "")


def bootstrap_ratio_ci(reference: np.ndarray, candidate: np.ndarray, *, n_boot: int = 2000,
                       confidence: float = 0.95, seed: int = 0, block: int = 1 << 21) -> tuple[float, float]:
    """Percentile CI of median(reference) / median(candidate), resampling rounds.

    ``reference`` and ``candidate`` are (rounds, calls_per_round) arrays of call times;
    a resample draws round indices with replacement and takes both sides' calls of
    those rounds, so the pairing within a round is kept.

    A resample is never built: each side's calls are sorted once, and a resample's
    median is found by counting, down the sorted calls, how many of them it holds (a
    call occurs as often as its round was drawn). The numbers are those of gathering
    every resample and taking ``np.median`` (checked in the tests), 3-10x faster on the
    thousands of rounds a micro-benchmark of a fast layer collects. The resamples are
    taken ``block`` (elements of the working arrays) at a time to bound the memory.
    """
    _check_pair(reference, candidate)
    rounds, calls = reference.shape
    idx = np.random.default_rng(seed).integers(0, rounds, size=(n_boot, rounds), dtype=np.int32)
    sides = [_SortedCalls(reference), _SortedCalls(candidate)]
    ratios = np.empty(n_boot)
    step = max(1, block // (rounds * calls))
    for start in range(0, n_boot, step):
        drawn = idx[start:start + step]
        k = len(drawn)
        # draws[r, j]: how many times resample start + j drew round r
        draws = np.bincount((drawn * k + np.arange(k, dtype=np.int32)[:, None]).ravel(), minlength=rounds * k)
        draws = draws.reshape(rounds, k).astype(np.int32)
        ratios[start:start + k] = sides[0].medians(draws) / sides[1].medians(draws)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(ratios, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _check_pair(reference: np.ndarray, candidate: np.ndarray) -> None:
    if reference.shape != candidate.shape or reference.ndim != 2:
        raise ValueError(f"need two (rounds, calls) arrays of one shape, got {reference.shape}, "
                         f"{candidate.shape}")


class _SortedCalls:
    """One side's calls sorted once, with the round each came from."""

    def __init__(self, values: np.ndarray) -> None:
        rounds, calls = values.shape
        flat = values.ravel()
        order = np.argsort(flat, kind="stable")
        self.values, self.round_of = flat[order], order // calls
        total = rounds * calls  # calls in every resample (it draws `rounds` rounds)
        self.middle = ((total - 1) // 2, total // 2)  # np.median averages these ranks (one when odd)

    def medians(self, draws: np.ndarray) -> np.ndarray:
        """The median of each resample in ``draws`` (rounds, resamples)."""
        held = draws[self.round_of]  # (sorted calls, resamples): copies of each call held
        np.add.accumulate(held, axis=0, out=held)  # calls held at or below each sorted call
        # the value of rank k is the first sorted call with more than k calls at or below it
        low, high = ((held <= rank).sum(axis=0) for rank in self.middle)
        return (self.values[low] + self.values[high]) / 2


def batch_means_ratio_ci(reference: np.ndarray, candidate: np.ndarray, *, stretches: int = 4,
                         confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the speed-up from contiguous stretches of rounds.

    ``reference`` and ``candidate`` are (rounds, calls_per_round) arrays in the order the
    rounds were timed. The rounds are cut into ``stretches`` contiguous parts (fewer if
    there are fewer rounds), each part gives one log speed-up (log of the ratio of its
    two medians), and the interval is the overall log speed-up +- t * their standard
    error: batch means, which stays valid when neighbouring rounds are correlated as
    long as the stretches are not (much) correlated with each other.
    """
    _check_pair(reference, candidate)
    parts = min(stretches, len(reference))
    if parts < 2:
        raise ValueError(f"need at least 2 stretches of at least one round, got {stretches} over "
                         f"{len(reference)} rounds")
    logs = np.log([np.median(a) / np.median(b)
                   for a, b in zip(np.array_split(reference, parts), np.array_split(candidate, parts))])
    return log_t_interval(math.log(np.median(reference) / np.median(candidate)), logs, confidence)


def log_t_interval(centre: float, logs: np.ndarray, confidence: float) -> tuple[float, float]:
    """exp(centre +- t * standard error of ``logs``): the Student-t interval of a speed-up
    from independent batches (stretches of rounds, or processes), each one log speed-up."""
    from scipy.stats import t as student_t  # scipy is slow to import (seconds); only needed here

    n = len(logs)
    if n < 2:
        raise ValueError(f"need at least 2 batches, got {n}")
    half = float(student_t.ppf(0.5 + confidence / 2.0, n - 1) * np.std(logs, ddof=1) / math.sqrt(n))
    return math.exp(centre - half), math.exp(centre + half)


def verdict_of(ci_low: float, ci_high: float) -> str:
    if ci_low > 1.0:
        return FASTER
    if ci_high < 1.0:
        return SLOWER
    return SAME


@dataclass(frozen=True)
class RoundTimes:
    """One process's interleaved timing, raw: every timed call's nanoseconds, per round
    and side, in the order the rounds ran. Plain data, so that a timing done in another
    process (``bench.forks``) comes back as it is and is pooled with this one's."""

    reference_ns: list[list[int]]  # rounds x calls_per_round
    candidate_ns: list[list[int]]
    first_call_ms: tuple[float, float]  # each side's cold first call
    total_ns: tuple[int, int]  # each side's summed call time
    truncated: bool  # max_seconds stopped the rounds before min_rounds / min_seconds


@collector_paused()
def time_rounds(
    reference: Callable[[], object],
    candidate: Callable[[], object],
    *,
    warmup: int = 5,
    min_rounds: int = 10,
    min_iters: int = 30,
    min_seconds: float = 2.0,
    max_seconds: float = 60.0,
    reference_timer: CallTimer | None = None,
    candidate_timer: CallTimer | None = None,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> RoundTimes:
    """Time ``reference`` and ``candidate`` (one call = one batch) in alternating rounds.

    Order: each side's cold first call timed alone, then ``warmup`` untimed calls of
    each, then rounds of ``calls_per_round = ceil(min_iters / min_rounds)`` timed calls
    per side, the order of the two blocks swapped every round (AB, BA, AB, ...) so that
    neither side always runs right after the other. Rounds continue until there are
    ``min_rounds`` of them and each side has summed ``min_seconds`` of call time; if a
    side passes ``max_seconds`` first, both stop with ``truncated=True``.
    """
    if min_rounds < 2:
        raise ValueError(f"min_rounds must be >= 2 (a CI needs rounds to resample), got {min_rounds}")
    if warmup < 0 or min_iters < 1:
        raise ValueError(f"need warmup >= 0, min_iters >= 1; got {warmup}, {min_iters}")
    if min_seconds < 0 or max_seconds <= 0 or max_seconds < min_seconds:
        raise ValueError(f"need 0 <= min_seconds <= max_seconds, max_seconds > 0; got {min_seconds}, "
                         f"{max_seconds}")
    timers = (reference_timer or wall_clock_timer(clock), candidate_timer or wall_clock_timer(clock))
    fns = (reference, candidate)
    first_ms = tuple(timers[i](fns[i]) / NS_PER_MS for i in (0, 1))
    for _ in range(warmup):
        reference()
        candidate()

    per_round = max(1, math.ceil(min_iters / min_rounds))
    calls: tuple[list[list[int]], list[list[int]]] = ([], [])
    total_ns = [0, 0]
    min_ns, max_ns = min_seconds * NS_PER_S, max_seconds * NS_PER_S
    truncated = False
    while True:
        order = (0, 1) if len(calls[0]) % 2 == 0 else (1, 0)
        for side in order:
            block = [int(timers[side](fns[side])) for _ in range(per_round)]
            calls[side].append(block)
            total_ns[side] += sum(block)
        if len(calls[0]) >= min_rounds and min(total_ns) >= min_ns:
            break
        if max(total_ns) >= max_ns:
            truncated = True
            break
    return RoundTimes(calls[0], calls[1], first_ms, (total_ns[0], total_ns[1]), truncated)


def speedup_of(
    sessions: list[RoundTimes],
    *,
    batch_size: int,
    candidate_batch_size: int | None = None,
    noisy_cv_pct: float = 10.0,
    noisy_pct: float = 10.0,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    drift_stretches: int = 4,
) -> tuple[LatencyStats, LatencyStats, Speedup]:
    """Each side's ``LatencyStats`` (every timed call of every session) and the ``Speedup``.

    The ratio is that of the pooled medians; its CI is the union of the round
    bootstrap (over all sessions' rounds) and a batch-means interval: over
    ``drift_stretches`` stretches of the one session's rounds, or, with several
    sessions (timed in as many processes), one batch per process, so that a level a
    process holds from start to end is in the interval (module docstring: why).
    ``drift_stretches=0`` with one session: the round bootstrap alone.
    """
    if not sessions:
        raise ValueError("need at least one timing session")
    _check_statistics(batch_size, drift_stretches)
    per_round = {len(s.reference_ns[0]) for s in sessions}
    if len(per_round) != 1:
        raise ValueError(f"sessions timed with different calls per round: {sorted(per_round)}")
    arrays = [(np.asarray(s.reference_ns, dtype=np.float64) / NS_PER_MS,
               np.asarray(s.candidate_ns, dtype=np.float64) / NS_PER_MS) for s in sessions]
    ref_ms = np.concatenate([a for a, _ in arrays])
    cand_ms = np.concatenate([b for _, b in arrays])
    truncated = any(s.truncated for s in sessions)
    batches = (batch_size, candidate_batch_size or batch_size)
    stats = tuple(
        stats_from_samples(arr.ravel().tolist(), first_call_ms=sessions[0].first_call_ms[i],
                            total_ns=sum(s.total_ns[i] for s in sessions), batch_size=batches[i],
                            noisy_cv_pct=noisy_cv_pct, truncated=truncated)
        for i, arr in enumerate((ref_ms, cand_ms)))
    # Per item, so that a candidate timed at another batch size still compares.
    ratio = (stats[0].p50_ms / batches[0]) / (stats[1].p50_ms / batches[1])
    per_item = (ref_ms / batches[0], cand_ms / batches[1])
    rounds_ci = bootstrap_ratio_ci(*per_item, n_boot=n_boot, confidence=confidence, seed=seed)
    process_ratios = [float((np.median(a) / batches[0]) / (np.median(b) / batches[1])) for a, b in arrays]
    if len(sessions) > 1:
        drift_ci = log_t_interval(math.log(ratio), np.log(process_ratios), confidence)
    elif drift_stretches:
        drift_ci = batch_means_ratio_ci(*per_item, stretches=drift_stretches, confidence=confidence)
    else:
        drift_ci = None
    low, high = rounds_ci if drift_ci is None else (min(rounds_ci[0], drift_ci[0]), max(rounds_ci[1], drift_ci[1]))
    speedup = Speedup(
        ratio=ratio, ci_low=low, ci_high=high, confidence=confidence, rounds=len(ref_ms),
        calls_per_round=per_round.pop(), verdict=verdict_of(low, high),
        noisy=(high - low) / 2.0 > noisy_pct / 100.0 * ratio, rounds_ci=rounds_ci, drift_ci=drift_ci,
        processes=len(sessions), process_ratios=process_ratios,
        reference_round_ms=np.median(ref_ms, axis=1).tolist(),
        candidate_round_ms=np.median(cand_ms, axis=1).tolist())
    return stats[0], stats[1], speedup


def _check_statistics(batch_size: int, drift_stretches: int) -> None:
    if drift_stretches == 1 or drift_stretches < 0:
        raise ValueError(f"drift_stretches must be 0 (off) or >= 2, got {drift_stretches}")
    if batch_size < 1:
        raise ValueError(f"need batch_size >= 1, got {batch_size}")


def measure_interleaved(
    reference: Callable[[], object],
    candidate: Callable[[], object],
    *,
    batch_size: int,
    warmup: int = 5,
    min_rounds: int = 10,
    min_iters: int = 30,
    min_seconds: float = 2.0,
    max_seconds: float = 60.0,
    noisy_cv_pct: float = 10.0,
    noisy_pct: float = 10.0,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    reference_timer: CallTimer | None = None,
    candidate_timer: CallTimer | None = None,
    clock: Callable[[], int] = time.perf_counter_ns,
    candidate_batch_size: int | None = None,
    drift_stretches: int = 4,
) -> tuple[LatencyStats, LatencyStats, Speedup]:
    """``time_rounds`` in this process, then ``speedup_of`` that one session: each
    side's ``LatencyStats`` and the ``Speedup`` (its CI: the round bootstrap and,
    unless ``drift_stretches`` is 0, batch means over that many stretches of rounds)."""
    _check_statistics(batch_size, drift_stretches)  # before the timing, not after it
    session = time_rounds(reference, candidate, warmup=warmup, min_rounds=min_rounds, min_iters=min_iters,
                          min_seconds=min_seconds, max_seconds=max_seconds, reference_timer=reference_timer,
                          candidate_timer=candidate_timer, clock=clock)
    return speedup_of([session], batch_size=batch_size, candidate_batch_size=candidate_batch_size,
                      noisy_cv_pct=noisy_cv_pct, noisy_pct=noisy_pct, n_boot=n_boot, confidence=confidence,
                      seed=seed, drift_stretches=drift_stretches)


__all__ = ["FASTER", "SAME", "SLOWER", "RoundTimes", "Speedup", "batch_means_ratio_ci", "bootstrap_ratio_ci",
           "describe_speedup", "log_t_interval", "measure_interleaved", "speedup_of", "time_rounds",
           "verdict_of"]
