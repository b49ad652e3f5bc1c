"""Interleaved A/B timing: the alternation, the stopping rules, the bootstrap CI over
rounds and the verdicts, on a deterministic fake clock (and once on real modules)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quantexp.bench.interleaved import (
    FASTER,
    SAME,
    SLOWER,
    RoundTimes,
    batch_means_ratio_ci,
    bootstrap_ratio_ci,
    describe_speedup,
    measure_interleaved,
    speedup_of,
    time_rounds,
    verdict_of,
)
from quantexp.bench.latency import measure_latency

MS = 1_000_000  # ns


class Machine:
    """A fake clock shared by two callables; each call advances it by its base cost times
    the machine's current slowness, ``drift(now)`` (1.0 = nominal speed)."""

    def __init__(self, drift=lambda now: 1.0, noise: float = 0.0, seed: int = 0) -> None:
        self.now = 0
        self.drift = drift
        self.noise = noise
        self.rng = np.random.default_rng(seed)
        self.log: list[str] = []

    def clock(self) -> int:
        return self.now

    def callable(self, name: str, base_ns: int):
        def call() -> None:
            jitter = 1.0 + (self.rng.normal(0.0, self.noise) if self.noise else 0.0)
            self.now += max(1, int(base_ns * self.drift(self.now) * jitter))
            self.log.append(name)
        return call


def test_rounds_alternate_their_order_and_respect_min_rounds() -> None:
    m = Machine()
    ref, cand, speedup = measure_interleaved(m.callable("A", 2 * MS), m.callable("B", 1 * MS), batch_size=1,
                                             warmup=1, min_rounds=4, min_iters=8, min_seconds=0, clock=m.clock)
    # cold call of each, one warm-up of each, then blocks of ceil(8/4) = 2 calls: AB, BA, AB, BA
    assert "".join(m.log) == "AB" + "AB" + "AABB" + "BBAA" + "AABB" + "BBAA"
    assert speedup.rounds == 4 and speedup.calls_per_round == 2
    assert ref.n_iters == cand.n_iters == 8
    assert ref.p50_ms == pytest.approx(2.0) and cand.p50_ms == pytest.approx(1.0)
    assert speedup.ratio == pytest.approx(2.0) == ref.p50_ms / cand.p50_ms
    assert speedup.ci_low == pytest.approx(2.0) and speedup.ci_high == pytest.approx(2.0)
    assert speedup.verdict == FASTER and not speedup.noisy
    assert speedup.reference_round_ms == pytest.approx([2.0] * 4)


def test_rounds_continue_until_each_side_has_min_seconds() -> None:
    m = Machine()
    ref, cand, speedup = measure_interleaved(m.callable("A", 10 * MS), m.callable("B", 5 * MS), batch_size=1,
                                             warmup=0, min_rounds=2, min_iters=2, min_seconds=0.1, clock=m.clock)
    # the faster side needs 20 calls of 5 ms: 20 rounds of one call each
    assert cand.n_iters == 20 and ref.n_iters == 20 and speedup.rounds == 20
    assert not ref.truncated and cand.total_s == pytest.approx(0.1)


def test_max_seconds_truncates_both_sides() -> None:
    m = Machine()
    ref, cand, speedup = measure_interleaved(m.callable("A", 100 * MS), m.callable("B", 1 * MS), batch_size=1,
                                             warmup=0, min_rounds=50, min_iters=50, min_seconds=0,
                                             max_seconds=1.0, clock=m.clock)
    assert ref.truncated and cand.truncated and speedup.rounds == 10  # 10 x 100 ms = the 1 s cap


def test_drift_cancels_when_interleaved_but_not_when_sequential() -> None:
    # The machine slows down steadily (x1 -> x3 over the measurement): timing the
    # reference first and the candidate after gives a biased ratio; interleaving does not.
    def drift(now: int) -> float:
        return 1.0 + now / (1.0 * 1e9)

    m = Machine(drift)
    ref_fn, cand_fn = m.callable("A", 4 * MS), m.callable("B", 2 * MS)  # true speed-up 2.0
    _, _, interleaved = measure_interleaved(ref_fn, cand_fn, batch_size=1, warmup=0, min_rounds=100,
                                            min_iters=200, min_seconds=0, clock=m.clock)
    assert interleaved.ci_low <= 2.0 <= interleaved.ci_high
    assert interleaved.ratio == pytest.approx(2.0, rel=0.02)

    m = Machine(drift)
    ref_fn, cand_fn = m.callable("A", 4 * MS), m.callable("B", 2 * MS)
    ref = measure_latency(ref_fn, batch_size=1, warmup=0, min_iters=200, min_seconds=0, clock=m.clock)
    cand = measure_latency(cand_fn, batch_size=1, warmup=0, min_iters=200, min_seconds=0, clock=m.clock)
    assert ref.p50_ms / cand.p50_ms < 1.6  # the sequential ratio is off by more than 20 %


@pytest.mark.parametrize("ref_ms, cand_ms, verdict", [(1.0, 1.0, SAME), (1.0, 2.0, SLOWER), (3.0, 1.0, FASTER)])
def test_verdicts_on_noisy_calls(ref_ms: float, cand_ms: float, verdict: str) -> None:
    m = Machine(noise=0.2, seed=3)
    _, _, speedup = measure_interleaved(m.callable("A", int(ref_ms * MS)), m.callable("B", int(cand_ms * MS)),
                                        batch_size=1, warmup=0, min_rounds=30, min_iters=90, min_seconds=0,
                                        clock=m.clock)
    assert speedup.verdict == verdict
    assert speedup.ci_low <= ref_ms / cand_ms <= speedup.ci_high


def test_a_wide_interval_is_flagged_noisy() -> None:
    m = Machine(noise=0.6, seed=1)
    _, _, speedup = measure_interleaved(m.callable("A", MS), m.callable("B", MS), batch_size=1, warmup=0,
                                        min_rounds=3, min_iters=3, min_seconds=0, noisy_pct=5.0, clock=m.clock)
    assert speedup.noisy and (speedup.ci_high - speedup.ci_low) / 2 > 0.05 * speedup.ratio


def test_speedup_is_per_item_when_batch_sizes_differ() -> None:
    m = Machine()
    _, _, speedup = measure_interleaved(m.callable("A", 2 * MS), m.callable("B", 8 * MS), batch_size=1,
                                        candidate_batch_size=8, warmup=0, min_rounds=2, min_iters=2,
                                        min_seconds=0, clock=m.clock)
    assert speedup.ratio == pytest.approx(2.0)  # 2 ms/item vs 1 ms/item


def test_bootstrap_keeps_rounds_paired() -> None:
    # Round r costs r ms on both sides (drift between rounds): the per-round ratio is
    # always 2, so every resample of whole rounds gives exactly 2.
    ref = np.array([[2.0 * r] * 3 for r in range(1, 11)])
    cand = ref / 2.0
    assert bootstrap_ratio_ci(ref, cand, n_boot=500) == pytest.approx((2.0, 2.0))
    with pytest.raises(ValueError, match="one shape"):
        bootstrap_ratio_ci(ref, cand[:5])


@pytest.mark.parametrize("shape", [(2, 1), (7, 3), (10, 4), (301, 1), (1200, 2)])
def test_bootstrap_equals_the_medians_of_the_gathered_resamples(shape) -> None:
    # The CI counts each resample's calls instead of building it: the ratios must be
    # exactly those of gathering every resample and taking np.median (odd and even
    # pooled counts, ties included).
    rng = np.random.default_rng(sum(shape))
    ref, cand = rng.lognormal(size=shape), rng.lognormal(size=shape)
    ref[-1] = ref[0]  # a tie
    rounds, n_boot = shape[0], 300
    idx = np.random.default_rng(5).integers(0, rounds, size=(n_boot, rounds))
    ratios = (np.median(ref[idx].reshape(n_boot, -1), axis=1)
              / np.median(cand[idx].reshape(n_boot, -1), axis=1))
    expected = tuple(float(q) for q in np.quantile(ratios, [0.025, 0.975]))
    assert bootstrap_ratio_ci(ref, cand, n_boot=n_boot, seed=5) == expected


def test_bootstrap_in_blocks_equals_one_block() -> None:
    rng = np.random.default_rng(2)
    ref, cand = rng.lognormal(size=(50, 3)), rng.lognormal(size=(50, 3))
    whole = bootstrap_ratio_ci(ref, cand, n_boot=101)
    assert bootstrap_ratio_ci(ref, cand, n_boot=101, block=1) == whole  # one resample per block
    assert bootstrap_ratio_ci(ref, cand, n_boot=101, block=150 * 7) == whole  # 7 per block, a short last


def test_batch_means_interval_by_hand() -> None:
    # Four rounds, one stretch each: speed-ups 1.1, 1.1, 1.4, 1.4. log ratios 0.09531 x2 and
    # 0.33647 x2: sd (n-1) 0.13924, standard error 0.06962, t(3, 0.975) = 3.18245, half-width
    # 0.22156 around the pooled log ratio ln(1 / median(1/1.1, 1/1.1, 1/1.4, 1/1.4)) = 0.20864.
    ref = np.ones((4, 1))
    cand = np.array([[1 / 1.1], [1 / 1.1], [1 / 1.4], [1 / 1.4]])
    low, high = batch_means_ratio_ci(ref, cand, stretches=4)
    assert (low, high) == pytest.approx((0.98716, 1.53755), rel=1e-4)
    # more stretches asked than rounds: one stretch per round, the same interval
    assert batch_means_ratio_ci(ref, cand, stretches=9) == (low, high)
    # two stretches of two rounds: the same spread of log ratios, but t(1) = 12.7: wider
    assert batch_means_ratio_ci(ref, cand, stretches=2)[1] > high
    with pytest.raises(ValueError, match="2 stretches"):
        batch_means_ratio_ci(ref[:1], cand[:1])


def test_a_speedup_that_wanders_during_the_timing_widens_the_interval() -> None:
    # The speed-up itself drifts from 1.1x to 1.4x over the timing (as it wanders on a
    # shared VM): the bootstrap over single rounds sees a steady mixture and holds neither
    # the first nor the last quarter's speed-up; the batch-means part spans both.
    m = Machine(noise=0.01, seed=4)
    calls = {"n": 0}

    def candidate() -> None:
        ratio = 1.1 + 0.3 * min(calls["n"], 119) / 119  # 40 rounds x 3 calls
        calls["n"] += 1
        m.now += int(MS / ratio * (1.0 + m.rng.normal(0.0, 0.01)))

    _, _, speedup = measure_interleaved(m.callable("A", MS), candidate, batch_size=1, warmup=0, min_rounds=40,
                                        min_iters=120, min_seconds=0, clock=m.clock)
    per_round = np.array(speedup.reference_round_ms) / np.array(speedup.candidate_round_ms)
    first, last = np.median(per_round[:10]), np.median(per_round[-10:])
    assert first < 1.16 and last > 1.34
    rounds_low, rounds_high = speedup.rounds_ci
    assert first < rounds_low and rounds_high < last
    assert speedup.ci_low <= first and last <= speedup.ci_high
    assert (speedup.ci_low, speedup.ci_high) == (min(rounds_low, speedup.drift_ci[0]),
                                                 max(rounds_high, speedup.drift_ci[1]))
    m, calls["n"] = Machine(noise=0.01, seed=4), 0
    _, _, alone = measure_interleaved(m.callable("A", MS), candidate, batch_size=1, warmup=0, min_rounds=40,
                                      min_iters=120, min_seconds=0, clock=m.clock, drift_stretches=0)
    assert alone.drift_ci is None and (alone.ci_low, alone.ci_high) == alone.rounds_ci == speedup.rounds_ci


def test_sessions_from_several_processes_pool_and_their_levels_set_the_interval() -> None:
    # Three processes, each steady at its own level (1.1x, 1.2x, 1.4x; no noise inside
    # one): every single-process interval is a point, the pooled one must span the levels.
    sessions = []
    for level in (1.1, 1.2, 1.4):
        m = Machine()
        sessions.append(time_rounds(m.callable("A", MS), m.callable("B", int(MS / level)), warmup=0,
                                    min_rounds=6, min_iters=12, min_seconds=0, clock=m.clock))
    ref, cand, speedup = speedup_of(sessions, batch_size=2, drift_stretches=4)
    assert speedup.processes == 3 and speedup.rounds == 18 and speedup.calls_per_round == 2
    assert speedup.process_ratios == pytest.approx([1.1, 1.2, 1.4], rel=1e-5)  # ns rounding
    assert ref.n_iters == cand.n_iters == 36 and ref.first_call_ms == pytest.approx(1.0)
    # pooled medians: every reference call is 1 ms, the candidate's median is 1/1.2 ms
    assert speedup.ratio == pytest.approx(1.2, rel=1e-5)
    # by hand: logs of 1.1, 1.2, 1.4 -> sd 0.12213, se 0.07051, t(2, 0.975) = 4.30265,
    # half-width 0.30338 around ln 1.2 = 0.18232 -> [0.88598, 1.62532]
    assert speedup.drift_ci == pytest.approx((0.88598, 1.62532), rel=1e-4)
    assert (speedup.ci_low, speedup.ci_high) == pytest.approx(speedup.drift_ci)
    assert speedup.verdict == SAME and speedup.rounds_ci[0] > 1.1  # the rounds alone: a narrow interval
    # one session: the old batch means over stretches of its rounds
    alone = speedup_of(sessions[:1], batch_size=2)[2]
    assert alone.processes == 1 and alone.process_ratios == pytest.approx([1.1], rel=1e-5)
    assert alone.ci_low == pytest.approx(1.1, rel=1e-5) == alone.ci_high


def test_sessions_must_share_their_calls_per_round() -> None:
    one = RoundTimes([[1, 1]] * 2, [[1, 1]] * 2, (1.0, 1.0), (4, 4), False)
    other = RoundTimes([[1, 1, 1]] * 2, [[1, 1, 1]] * 2, (1.0, 1.0), (6, 6), False)
    with pytest.raises(ValueError, match="calls per round"):
        speedup_of([one, other], batch_size=1)
    with pytest.raises(ValueError, match="at least one"):
        speedup_of([], batch_size=1)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="min_rounds"):
        measure_interleaved(lambda: None, lambda: None, batch_size=1, min_rounds=1)
    with pytest.raises(ValueError, match="min_seconds"):
        measure_interleaved(lambda: None, lambda: None, batch_size=1, min_seconds=5, max_seconds=1)
    with pytest.raises(ValueError, match="drift_stretches"):
        measure_interleaved(lambda: None, lambda: None, batch_size=1, drift_stretches=1)


def test_wording() -> None:
    assert verdict_of(1.1, 1.3) == FASTER and verdict_of(0.7, 0.9) == SLOWER and verdict_of(0.9, 1.1) == SAME
    assert describe_speedup(1.42, 1.3, 1.55, FASTER, False) == "1.42x [1.30, 1.55]"
    assert describe_speedup(1.03, 0.95, 1.1, SAME, True) == "no significant difference (1.03x [0.95, 1.10]), noisy"
    assert describe_speedup(2.0, None, None, None, None) == "2.00x (no CI)"


def test_real_modules_are_timed_in_one_loop() -> None:
    torch.manual_seed(0)
    small, big = torch.nn.Linear(32, 32), torch.nn.Linear(512, 512)
    x_small, x_big = torch.randn(8, 32), torch.randn(8, 512)
    with torch.inference_mode():
        ref, cand, speedup = measure_interleaved(lambda: big(x_big), lambda: small(x_small), batch_size=8,
                                                 warmup=2, min_rounds=5, min_iters=10, min_seconds=0)
    assert ref.n_iters == cand.n_iters == 10 and speedup.rounds == 5
    assert all(v > 0 for v in ref.raw_ms + cand.raw_ms)
    assert len(speedup.reference_round_ms) == len(speedup.candidate_round_ms) == 5
    assert speedup.ci_low <= speedup.ratio <= speedup.ci_high
