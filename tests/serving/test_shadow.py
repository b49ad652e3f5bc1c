"""The drift controller against a simulated model whose agreement per threshold is known.

Simulated low-precision model: confidence c ~ U(0, 1) and P(agrees with fp32 | c) =
1 - a (1 - c); escalated items agree. At threshold t the expected agreement is
1 - a (1 - t)^2 / 2, so the threshold that meets a target T exactly is
t* = 1 - sqrt(2 (1 - T) / a).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantexp.serving.shadow import ShadowController


def t_star(a: float, target: float) -> float:
    return 1 - math.sqrt(2 * (1 - target) / a)


def expected_agreement(a: float, t: float) -> float:
    return 1 - a * (1 - min(t, 1.0)) ** 2 / 2


def shadow_sample(rng, a: float, n: int):
    conf = rng.random(n)
    return conf, rng.random(n) < 1 - a * (1 - conf)


def test_it_converges_to_the_threshold_that_meets_the_target():
    rng = np.random.default_rng(0)
    ctrl = ShadowController(threshold=0.0, target_agreement=0.98, pool=4000, safety_sd=0.0)
    for _ in range(40):
        ctrl.observe(*shadow_sample(rng, 0.2, 100))
        ctrl.update()
    assert ctrl.threshold == pytest.approx(t_star(0.2, 0.98), abs=0.05)
    assert ctrl.estimate() == pytest.approx(0.98, abs=0.004)


def test_it_follows_drift_up_and_back_down():
    rng = np.random.default_rng(1)
    ctrl = ShadowController(threshold=0.5, target_agreement=0.98, pool=1500, safety_sd=0.0)
    history = []
    for a in [0.2] * 30 + [0.6] * 30 + [0.2] * 30:
        ctrl.observe(*shadow_sample(rng, a, 100))
        history.append(ctrl.update())
    assert history[29] == pytest.approx(t_star(0.2, 0.98), abs=0.06)
    assert history[59] == pytest.approx(t_star(0.6, 0.98), abs=0.06)
    assert history[89] == pytest.approx(t_star(0.2, 0.98), abs=0.06)


def test_the_safety_margin_aims_below_the_target_by_the_pools_standard_error():
    ctrl = ShadowController(threshold=0.0, target_agreement=0.98, pool=400, safety_sd=2.0)
    ctrl.observe(*shadow_sample(np.random.default_rng(5), 0.2, 400))
    assert ctrl.solve_points() == pytest.approx(100 * (0.02 - 2 * math.sqrt(0.02 * 0.98 / 400)))
    assert ctrl.update() > t_star(0.2, 0.98)


def test_windows_meet_the_target_more_often_than_with_the_threshold_held():
    rng = np.random.default_rng(2)
    target, start = 0.98, t_star(0.1, 0.98)  # calibrated on the easy start
    ctrl = ShadowController(threshold=start, target_agreement=target, pool=300)
    met = {"fixed": 0, "controller": 0}
    for a in np.linspace(0.1, 0.8, 40):  # drift: the low model gets worse
        met["fixed"] += expected_agreement(a, start) >= target - 1e-3
        met["controller"] += expected_agreement(a, ctrl.threshold) >= target - 5e-3
        ctrl.observe(*shadow_sample(rng, a, 50))  # 5% of a 1,000-item window
        ctrl.update()
    assert met["fixed"] <= 3 and met["controller"] >= 30


def test_it_waits_for_enough_shadow_items_and_forced_items_count_as_agreeing():
    ctrl = ShadowController(threshold=0.3, target_agreement=0.99, pool=100, min_items=20)
    ctrl.observe(np.full(10, 0.9), np.zeros(10, bool))
    assert ctrl.update() == 0.3 and ctrl.estimate() == 0.0
    ctrl.observe(np.full(10, 0.9), np.zeros(10, bool), forced=np.ones(10, bool))
    assert ctrl.estimate(0.3) == pytest.approx(0.5)
    assert ctrl.update() > 0.9  # the unforced disagreeing items must all go up
    assert ctrl.estimate() == 1.0


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        ShadowController(0.5, target_agreement=0.0, pool=10)
    with pytest.raises(ValueError):
        ShadowController(0.5, target_agreement=0.9, pool=0)
