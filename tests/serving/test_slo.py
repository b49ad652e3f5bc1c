"""The batch-size/precision controller under a p99 SLO, on a virtual clock with a
simulated model whose service times are known: it must meet the SLO wherever some
static configuration does, and prefer the higher precision when it can."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantexp.serving.loadgen import phases
from quantexp.serving.server import ServeConfig, StaticPolicy, serve
from quantexp.serving.slo import ServiceTimes, SloController, predicted_p99_s, verdict

# seconds per batch of b items: high precision 2 ms + 1 ms/item, low 1 ms + 0.4 ms/item
COST = {"high": (0.002, 0.001), "low": (0.001, 0.0004)}
CONFIGS = [ServeConfig(b, p) for p in ("high", "low") for b in (1, 8)]


class VirtualTime:
    def __init__(self):
        self.now = 0.0

    def clock(self):
        return self.now

    def sleep(self, s):
        self.now += max(s, 1e-7)


def run(policy, phase_list, slo_s=0.02):
    out = []
    for phase in phase_list:
        vt = VirtualTime()

        def infer(ids, precision):
            base, per = COST[precision]
            vt.now += base + per * len(ids)

        out.append(serve(phase.arrivals_s, infer, policy, max_wait_s=0.004, interval_s=0.25, drain_s=1.0,
                         clock=vt.clock, sleep=vt.sleep, rate=phase.rate))
    return out


def profiled():
    return {c: COST[c.precision][0] + COST[c.precision][1] * c.batch_size for c in CONFIGS}


def test_predicted_latency_grows_with_load_and_is_infinite_past_capacity():
    c = ServeConfig(8, "high")  # 10 ms per batch of 8: 800 items/s at most
    # loads at which batches fill (a batch holds what arrives in max_wait + service)
    low, _ = predicted_p99_s(c, 0.010, 650.0, 0.004)
    high, rho = predicted_p99_s(c, 0.010, 780.0, 0.004)
    assert low < high and rho == pytest.approx(780 * 0.010 / 8)
    assert predicted_p99_s(c, 0.010, 900.0, 0.004)[0] == math.inf
    one = ServeConfig(1, "high")
    assert predicted_p99_s(one, 0.010, 20.0, 0.004)[0] < predicted_p99_s(one, 0.010, 80.0, 0.004)[0]


def test_predicted_latency_by_hand():
    # batch 1: the M/D/1 wait, ln 100 * s * rho / (2 (1 - rho)) on top of the service
    p99, rho = predicted_p99_s(ServeConfig(1, "low"), 0.0004, 1000.0, 0.005)
    assert rho == pytest.approx(0.4) and p99 == pytest.approx(0.0004 + math.log(100) * 0.0004 * 0.4 / 1.2)
    # batches of 16 at 6,000 items/s, 2.08 ms each (measured on the 2-core host: p99 5.9-7.9
    # ms over three servings): filling, the Erlang(15) 99th percentile 25.446 / 6000 s =
    # 4.241 ms; rho 0.78; queueing ln 100 * 2.08 ms * 0.78 / 0.22 / 16 / 2 = 1.061 ms
    p99, rho = predicted_p99_s(ServeConfig(16, "low"), 0.00208, 6000.0, 0.005)
    assert rho == pytest.approx(0.78) and p99 == pytest.approx(0.004241 + 0.00208 + 0.001061, abs=2e-6)
    # at 1,000 items/s the batch times out after max_wait instead
    assert predicted_p99_s(ServeConfig(16, "low"), 0.00208, 1000.0, 0.005)[0] > 0.005 + 0.00208


def test_the_controller_meets_the_slo_wherever_a_static_configuration_does():
    load = phases([100.0, 400.0, 1500.0, 3000.0], 4.0, 20000, seed=0)
    runs = {c.label: run(StaticPolicy(c), load) for c in CONFIGS}
    ctrl = SloController(CONFIGS, ServiceTimes(profiled()), 0.02, 0.004, ["high", "low"])
    runs["controller"] = run(ctrl, load)
    v = verdict(runs, slo_ms=20.0)
    # at 1,500 items/s only low precision in batches of 8 keeps up; nothing does at 3,000
    assert v.best_static == "b8_low" and v.best_rate["b8_low"] == 1500.0
    assert v.best_rate["b1_high"] == 100.0 and v.best_rate["b8_high"] == 400.0
    assert v.controller_matches and v.best_rate["controller"] == 1500.0
    assert all(r.meets(20.0) for r in runs["controller"][:3])
    # at the lowest rate it served everything in high precision
    assert runs["controller"][0].served_by == {"high": runs["controller"][0].n_requests}
    assert "best static b8_low: 1500 items/s; controller: 1500 items/s" == v.describe()


def test_an_slo_nothing_meets_names_the_closest():
    load = phases([3000.0], 1.0, 20000, seed=0)
    runs = {c.label: run(StaticPolicy(c), load) for c in CONFIGS}
    v = verdict(runs, slo_ms=20.0)
    assert v.best_static is None and v.controller_matches is None
    assert v.describe().startswith("no configuration meets p99 <= 20 ms at any offered rate; closest: b8_low")
    # with a controller that did not meet it either: nothing to match, not "did not match"
    runs["controller"] = run(SloController(CONFIGS, ServiceTimes(profiled()), 0.02, 0.004, ["high", "low"]), load)
    v = verdict(runs, slo_ms=20.0)
    assert v.best_rate["controller"] is None and v.controller_matches is None


def test_service_times_follow_observed_full_batches_only():
    times = ServiceTimes({ServeConfig(4, "low"): 0.010})
    times.observe(ServeConfig(4, "low"), 2, 0.001)  # partial batch: ignored
    assert times[ServeConfig(4, "low")] == 0.010
    times.observe(ServeConfig(4, "low"), 4, 0.020)
    assert times[ServeConfig(4, "low")] == pytest.approx(0.015)


def test_one_slow_batch_does_not_make_a_configuration_look_slow():
    config = ServeConfig(1, "high")
    times = ServiceTimes({config: 0.00025, ServeConfig(16, "low"): 0.001}, window=8)
    for _ in range(5):
        times.observe(config, 1, 0.00026)
    times.observe(config, 1, 0.005)  # a page fault or a GC pause: 20x
    assert times[config] == pytest.approx(0.00026)
    ctrl = SloController([config, ServeConfig(16, "low")], times, 0.003, 0.002, ["high", "low"])
    assert ctrl.choose(1000.0) == config  # still predicted to meet 3 ms at 1,000 items/s
    for _ in range(8):  # but a configuration that really got slower is followed
        times.observe(config, 1, 0.002)
    assert times[config] == pytest.approx(0.002)


def test_overload_picks_the_most_capacity():
    ctrl = SloController(CONFIGS, ServiceTimes(profiled()), 0.02, 0.004, ["high", "low"])
    assert ctrl.choose(10_000.0) == ServeConfig(8, "low")
    assert ctrl.choose(10.0) == ServeConfig(1, "high")
    assert np.isfinite(predicted_p99_s(ServeConfig(1, "high"), 0.003, 10.0, 0.004)[0])


def test_a_backlog_switches_to_a_larger_batch_only_until_it_is_cleared():
    small, large = ServeConfig(1, "high"), ServeConfig(8, "high")
    times = ServiceTimes({small: 0.0004, large: 0.0012})
    ctrl = SloController([small, large], times, 0.003, 0.005, ["high"])
    assert ctrl.decide(None) == small
    assert ctrl.before_batch(1) == small
    assert ctrl.before_batch(9) == large  # 9 x 0.4 ms > 1.5 ms; two batches of 8: 2.4 ms
    assert ctrl.before_batch(8) == large  # still more than batch 1 clears in time
    # cleared: back to batch 1, instead of waiting up to max_wait for 8 to arrive
    assert ctrl.before_batch(1) == small


def test_a_backlog_smaller_than_a_batch_counts_the_wait_for_the_batch_to_fill():
    small, large = ServeConfig(1, "high"), ServeConfig(8, "high")
    ctrl = SloController([small, large], ServiceTimes({small: 0.0004, large: 0.0012}), 0.003, 0.005, ["high"])
    ctrl.decide(None)
    # 6 waiting at 1,000 items/s: 2 more take ~2 ms to come, so a batch of 8 starts
    # after 2 ms and ends at 3.2 ms; batch 1 clears the six in 2.4 ms
    ctrl.rate = 1000.0
    assert ctrl.before_batch(6, oldest_wait_s=0.0005) == small
    # at 20,000 items/s the two come within 0.1 ms: one batch of 8, 1.3 ms
    ctrl.rate = 20_000.0
    assert ctrl.before_batch(6, oldest_wait_s=0.0005) == large
    # the oldest request has already waited max_wait: the batch of 8 starts now, part-full
    ctrl.rate = 1000.0
    assert ctrl.before_batch(6, oldest_wait_s=0.005) == large


def _served(p99_s: float, n: int = 1000, served: int | None = None):
    """A serving of ``n`` requests whose top 1 % waited ``p99_s`` (the rest 1 ms)."""
    from quantexp.serving.server import PhaseResult

    latencies = np.full(n, 0.001)
    latencies[-n // 50:] = p99_s
    completed = np.arange(n) < (n if served is None else served)
    return PhaseResult(1000.0, latencies, completed, 1.0, served_by={"high": int(completed.sum())})


def test_one_stalled_serving_of_three_does_not_decide_the_verdict():
    from quantexp.serving.slo import RepeatedPhase

    once_stalled = RepeatedPhase((_served(0.002), _served(0.030), _served(0.0025)))
    assert once_stalled.p99_ms == pytest.approx(2.5) and once_stalled.meets(3.0)
    assert once_stalled.summary()["p99_ms_each"] == "2/30/2.5" and once_stalled.summary()["repeats"] == 3
    assert once_stalled.served_by == {"high": 3000}
    twice = RepeatedPhase((_served(0.030), _served(0.002), _served(0.031)))
    assert twice.p99_ms == pytest.approx(30.0) and not twice.meets(3.0)
    unserved = RepeatedPhase((_served(0.002), _served(0.002, served=990), _served(0.002)))
    assert not unserved.meets(3.0)  # a request left waiting in any serving fails the rate
    v = verdict({"a": [once_stalled], "b": [twice]}, slo_ms=3.0)
    assert v.best_static == "a" and v.best_rate == {"a": 1000.0, "b": None}


def test_measured_latency_beyond_the_model_makes_the_controller_pick_a_faster_configuration():
    from quantexp.serving.server import IntervalStats

    high, low = ServeConfig(1, "high"), ServeConfig(1, "low")
    times = ServiceTimes({high: 0.0006, low: 0.0003})
    ctrl = SloController([high, low], times, 0.003, 0.005, ["high", "low"])
    assert ctrl.choose(1000.0) == high  # the model: 2.7 ms at 1,000 items/s, within 3 ms
    predicted_high, _ = predicted_p99_s(high, 0.0006, 1000.0, 0.005)
    # the host added ~2 ms to the tail of an interval served by `high` at 1,000 items/s
    interval = IntervalStats(0, 0.0, 0.5, high, 500, 500, 0.7, 1e3 * predicted_high + 2.0, 0, 1.0)
    assert ctrl.decide(interval) == low
    assert ctrl.slack_s == pytest.approx(0.5 * 0.002)
    # too few completions say nothing about a p99
    quiet = SloController([high, low], times, 0.003, 0.005, ["high", "low"])
    quiet.learn_slack(IntervalStats(0, 0.0, 0.5, high, 20, 20, 0.7, 50.0, 0, 1.0))
    assert quiet.slack_s == 0.0


def test_when_nothing_meets_the_slo_the_closest_that_keeps_up_is_chosen():
    small, large = ServeConfig(1, "low"), ServeConfig(16, "low")
    times = ServiceTimes({small: 0.0004, large: 0.0016})
    ctrl = SloController([small, large], times, 0.0002, 0.005, ["low"])  # an SLO below any call
    # both keep up with 1,000 items/s; batch 16 has more capacity but waits to fill
    assert ctrl.choose(1000.0) == small
    assert ctrl.choose(100_000.0) == large  # past both capacities: the most capacity


def test_a_drop_in_load_gives_up_a_batch_that_fills_too_slowly():
    from quantexp.serving.server import IntervalStats

    b1, b16 = ServeConfig(1, "low"), ServeConfig(16, "low")
    times = ServiceTimes({b1: 0.0003, b16: 0.0008, ServeConfig(1, "high"): 0.0006})
    ctrl = SloController([b1, b16, ServeConfig(1, "high")], times, 0.003, 0.005, ["high", "low"])
    # an interval at 12,000 items/s: only batches of 16 keep up
    assert ctrl.decide(IntervalStats(0, 0.0, 0.5, b1, 6000, 6000, 1.0, 2.0, 0, 1.0)) == b16
    # the load drops: 3 requests after 1 ms is what 12,000 items/s would bring in 0.2 ms
    assert ctrl.before_batch(3, 0.0001) == b16  # waiting 0.1 ms is what batching costs
    assert ctrl.before_batch(3, 0.001) == b1  # batch 16 would have waited ~15 ms more
    assert ctrl.before_batch(1, 0.0) == b1  # and batch 1 stays until the next interval
    # an interval at 1,000 items/s decides again: high precision, batch 1
    assert ctrl.decide(IntervalStats(1, 0.5, 1.0, b1, 500, 500, 0.5, 1.0, 0, 1.0)) == ServeConfig(1, "high")


def test_the_arrival_rate_of_a_full_interval_is_taken_as_it_is():
    ctrl = SloController(CONFIGS, ServiceTimes(profiled()), 0.02, 0.004, ["high", "low"])
    from quantexp.serving.server import IntervalStats

    ctrl.load(IntervalStats(0, 0.0, 0.5, CONFIGS[0], 6000, 6000, 1.0, 2.0, 0, 1.0))
    assert ctrl.rate == pytest.approx(12000.0)
    ctrl.load(IntervalStats(1, 0.5, 1.0, CONFIGS[0], 500, 500, 1.0, 2.0, 0, 1.0))
    assert ctrl.rate == pytest.approx(1000.0)  # no smoothing: 500 arrivals are ~4.5 % noise
    ctrl.load(IntervalStats(2, 1.0, 1.5, CONFIGS[0], 10, 10, 1.0, 2.0, 0, 1.0))
    assert ctrl.rate == pytest.approx(0.5 * 20.0 + 0.5 * 1000.0)  # 10 arrivals: smoothed


def test_poisson_cdf_is_scipys():
    from scipy.stats import poisson

    from quantexp.serving.slo import poisson_cdf

    for k in (-1, 0, 1, 2, 5, 15, 63, 3000):
        for mean in (0.0, 0.3, 2.0, 12.0, 40.0, 200.0, 2000.0):
            assert poisson_cdf(k, mean) == pytest.approx(poisson.cdf(k, mean), rel=1e-9, abs=1e-300), (k, mean)


def test_a_step_up_in_load_is_met_before_the_interval_ends():
    from quantexp.serving.server import IntervalStats

    b1, b4 = ServeConfig(1, "high"), ServeConfig(4, "low")
    ctrl = SloController([b1, b4], ServiceTimes({b1: 0.0005, b4: 0.0006}), 0.003, 0.005, ["high", "low"])
    # an interval at 1,000 items/s: high precision, batch 1
    assert ctrl.decide(IntervalStats(0, 0.0, 0.5, b1, 500, 500, 1.0, 1.5, 0, 1.0)) == b1
    assert ctrl.choose(2000.0) == b4  # what 2,000 items/s needs
    # 60 arrivals in the first 40 ms of an interval: 40 expected at 1,000 items/s, odds ~0.2 %
    # - not yet believed
    ctrl.before_batch(1, 0.0, 60, 0.040)
    assert ctrl.rate == pytest.approx(1000.0) and ctrl.chosen == b1
    # 90 in 45 ms: odds below 1e-3; the load is now read as 2,000 items/s, which needs b4
    assert ctrl.before_batch(1, 0.0, 90, 0.045) == b4
    assert ctrl.rate == pytest.approx(2000.0) and ctrl.chosen == b4


def test_a_configuration_not_run_since_the_profile_follows_the_host():
    # what runs is observed twice as slow as profiled (the host slowed): the configurations
    # that have not run are read at twice their profile too, keeping their relative costs
    ran, idle = ServeConfig(16, "cascade"), ServeConfig(16, "low")
    times = ServiceTimes({ran: 0.0007, idle: 0.0006})
    times.observe(ran, 16, 0.0014)
    times.observe(ran, 16, 0.0014)
    assert times[idle] == pytest.approx(0.0006)  # two batches: not yet a level
    times.observe(ran, 16, 0.0014)
    assert times[ran] == pytest.approx(0.0014) and times[idle] == pytest.approx(0.0012)
    # faster than the profile (warm): both read faster, and past capacity the controller
    # takes the configuration with the most items per second, int8 alone, not the cascade
    for _ in range(8):
        times.observe(ran, 16, 0.0005)
    assert times[ran] == pytest.approx(0.0005) and times[idle] == pytest.approx(0.0006 * 0.0005 / 0.0007)
    ctrl = SloController([ran, idle], times, 0.003, 0.005, ["cascade", "low"])
    assert ctrl.choose(60000.0) == idle
