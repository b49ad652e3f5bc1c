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
    low, _ = predicted_p99_s(c, 0.010, 100.0, 0.004)
    high, rho = predicted_p99_s(c, 0.010, 700.0, 0.004)
    assert low < high and rho == pytest.approx(700 * 0.010 / 8)
    assert predicted_p99_s(c, 0.010, 900.0, 0.004)[0] == math.inf


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
    assert ctrl.before_batch(6) == large  # 6 x 0.4 ms > 1.5 ms; one batch of 8: 1.2 ms
    assert ctrl.before_batch(5) == large  # still more than batch 1 clears in time
    # cleared: back to batch 1, instead of waiting up to max_wait for 8 to arrive
    assert ctrl.before_batch(1) == small
