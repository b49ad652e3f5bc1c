"""Threshold calibration and confidence signals, on synthetic logits with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from quantexp.serving.threshold import calibrate_threshold, confidence, outcome_at


def test_confidence_signals_have_their_closed_form_values():
    logits = np.log(np.array([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3]]))
    assert confidence(logits, "max_softmax") == pytest.approx([0.7, 1 / 3])
    assert confidence(logits, "margin") == pytest.approx([0.5, 0.0], abs=1e-12)
    entropy = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    assert confidence(logits, "entropy") == pytest.approx([1 - entropy / math.log(3), 0.0], abs=1e-12)
    with pytest.raises(ValueError, match="unknown confidence signal"):
        confidence(logits, "variance")


@pytest.mark.parametrize("signal", ["max_softmax", "margin", "entropy"])
def test_the_deployed_modules_confidence_is_the_same_number(signal):
    from quantexp.methods.cascade.module import SIGNAL_CODES
    from quantexp.methods.cascade.module import confidence as module_confidence

    logits = np.random.default_rng(0).normal(size=(64, 10)) * 3
    got = module_confidence(torch.as_tensor(logits, dtype=torch.float32), SIGNAL_CODES[signal]).numpy()
    assert got == pytest.approx(confidence(logits, signal), abs=1e-5)


def _items(n=1000, wrong=(5, 50, 120)):
    conf = (np.arange(n) + 0.5) / n  # item i has confidence (i + 0.5) / n
    low_ok = np.ones(n, dtype=bool)
    low_ok[list(wrong)] = False
    return conf, low_ok, np.ones(n, dtype=bool)


def test_target_zero_escalates_exactly_up_to_the_last_wrong_item():
    conf, low_ok, high_ok = _items()
    cal = calibrate_threshold(conf, low_ok, high_ok, reference_score=1.0, target_points=0.0)
    # items 0..120 must go up: the threshold is item 121's confidence (strictly below escalates)
    assert cal.threshold == pytest.approx(conf[121])
    assert cal.escalated_share == pytest.approx(121 / 1000)
    assert cal.cascade_score == 1.0 and cal.drop_points == pytest.approx(0.0) and cal.met
    assert cal.low_score == pytest.approx(0.997)


def test_a_looser_target_leaves_the_most_confident_mistakes_with_the_low_model():
    conf, low_ok, high_ok = _items()
    one = calibrate_threshold(conf, low_ok, high_ok, reference_score=1.0, target_points=0.1)
    assert one.threshold == pytest.approx(conf[51]) and one.drop_points == pytest.approx(0.1)
    three = calibrate_threshold(conf, low_ok, high_ok, reference_score=1.0, target_points=0.3)
    assert three.threshold == 0.0 and three.escalated_share == 0.0  # the low model alone is enough


def test_accuracy_targets_compare_with_the_reference_accuracy():
    conf, low_ok, high_ok = _items()
    high_ok[900:] = low_ok[900:] = False  # both models get the last 100 wrong
    cal = calibrate_threshold(conf, low_ok, high_ok, reference_score=high_ok.mean(), target_points=0.0)
    assert cal.reference_score == pytest.approx(0.9) and cal.threshold == pytest.approx(conf[121])


def test_a_lucky_dip_is_not_trusted():
    # Escalating items 0..9 fixes item 5, but escalating item 10 breaks it (the high model
    # is wrong there, the low one right): the curve dips within target at k=6..10 only.
    conf, low_ok, high_ok = _items(wrong=(5,))
    high_ok[10] = False
    cal = calibrate_threshold(conf, low_ok, high_ok, reference_score=1.0, target_points=0.0)
    assert cal.met is False  # nothing holds at every larger threshold... up to escalating all
    assert cal.threshold > conf.max()
    loose = calibrate_threshold(conf, low_ok, high_ok, reference_score=1.0, target_points=0.1)
    assert loose.threshold == 0.0  # one wrong item either way: fine from the start


def test_forced_items_are_escalated_whatever_their_confidence():
    conf, low_ok, high_ok = _items(wrong=(5, 990))
    forced = np.zeros(1000, dtype=bool)
    forced[990] = True  # the router catches the confident mistake
    cal = calibrate_threshold(conf, low_ok, high_ok, reference_score=1.0, target_points=0.0, forced=forced)
    assert cal.threshold == pytest.approx(conf[6])
    assert cal.escalated_share == pytest.approx(7 / 1000) and cal.forced_share == pytest.approx(0.001)
    assert outcome_at(cal.threshold, conf, low_ok, high_ok, forced) == (1.0, pytest.approx(0.007))


def test_ties_escalate_together():
    conf = np.array([0.2, 0.5, 0.5, 0.5, 0.9])
    low_ok = np.array([True, True, False, True, True])
    cal = calibrate_threshold(conf, low_ok, np.ones(5, bool), reference_score=1.0, target_points=0.0)
    assert cal.threshold == pytest.approx(0.9) and cal.escalated_share == pytest.approx(0.8)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="target_points"):
        calibrate_threshold(np.ones(3), np.ones(3, bool), np.ones(3, bool), reference_score=1.0, target_points=101)
    with pytest.raises(ValueError, match="one confidence"):
        calibrate_threshold(np.ones(3), np.ones(2, bool), np.ones(3, bool), reference_score=1.0, target_points=1)

