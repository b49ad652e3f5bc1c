"""The recommender on a synthetic history whose answer is known: predictions follow the
nearest measured models, the prior fills in where history is thin, the ranking puts
the cheapest option that meets the constraints first, and says when none does."""

from __future__ import annotations

import pytest

from quantexp.architecture.features import FEATURES
from quantexp.recommend.history import Record
from quantexp.recommend.predict import feature_scales, predict, size_by_family_fit
from quantexp.recommend.rank import Constraints, evaluate, rank
from quantexp.recommend.rules import prior_for

CONV = {**dict.fromkeys(FEATURES, 0.0), "log10_params": 5.0, "log10_macs": 6.0, "mac_share.conv": 0.9,
        "mac_share.linear": 0.1}
TEXT = {**dict.fromkeys(FEATURES, 0.0), "log10_params": 7.3, "log10_macs": 8.8, "mac_share.linear": 0.97,
        "mac_share.attention": 0.03, "param_share.embedding": 0.5, "outlier_layer_share": 0.8}


def record(model, features, method, drop, speedup, size, precision="int8", exporter="none"):
    return Record(model=model, model_key=model, family="cnn" if features is CONV else "transformer", method=method,
                  precision=precision, exporter=exporter, hardware="cpu", drop=drop, drop_ci=(drop - 0.3, drop + 0.3),
                  speedup=speedup, speedup_ci=(speedup - 0.1, speedup + 0.1), size_ratio=size, quantize_s=1.0,
                  fp32_p50_ms=4.0, p50_ms=4.0 / speedup, fp32_size_mb=0.44, run_id=None, features=dict(features))


def near(features, shift):
    return {**features, "log10_params": features["log10_params"] + shift}


HISTORY = [
    record("conv_a", CONV, "ptq_static", 0.2, 1.9, 0.3), record("conv_b", near(CONV, 0.3), "ptq_static", 0.1, 1.8, 0.3),
    record("text_a", TEXT, "ptq_static", 3.0, 1.3, 0.3), record("conv_a", CONV, "ptq_dynamic", 0.0, 1.0, 0.7),
    record("conv_b", near(CONV, 0.3), "ptq_dynamic", 0.1, 1.0, 0.7), record("text_a", TEXT, "ptq_dynamic", 0.5, 1.6, 0.4),
]


def test_a_new_conv_model_is_predicted_from_the_conv_models_not_the_transformer():
    p = predict(near(CONV, 0.1), "cnn", ("ptq_static", "int8", "none", "cpu"), HISTORY)
    assert p.support == 3 and p.neighbours[0].startswith("conv_a") and not p.measured
    assert p.drop.value < 0.6 and p.speedup.value > 1.6  # pulled to the conv models (0.1-0.2, 1.8-1.9), not 3.0
    t = predict(near(TEXT, 0.1), "transformer", ("ptq_static", "int8", "none", "cpu"), HISTORY)
    assert t.drop.value > 1.5 and t.neighbours[0].startswith("text_a")


def test_a_model_measured_with_the_recipe_is_predicted_by_its_measurement():
    p = predict(CONV, "cnn", ("ptq_static", "int8", "none", "cpu"), HISTORY, model_key="conv_a")
    assert p.measured and p.drop.value == 0.2 and p.speedup.value == 1.9 and p.drop.sd == pytest.approx(0.6 / 3.92)


def test_without_history_the_prior_speaks_and_says_so():
    p = predict(CONV, "cnn", ("bnb_nf4", "nf4", "none", "cpu"), HISTORY)
    prior = prior_for("bnb_nf4", "nf4", "cnn")
    assert p.support == 0 and p.drop.value == prior.drop and p.speedup.value == prior.speedup


def test_a_small_models_size_comes_from_its_familys_line_not_a_large_neighbours_ratio():
    # quantized size = 0.02 MB fixed + 0.17 x fp32 size on every conv model; a transformer
    # with another ratio does not count
    def sized(model, features, fp32_mb):
        r = record(model, features, "bnb_nf4", 0.1, 0.9, (0.02 + 0.17 * fp32_mb) / fp32_mb, precision="nf4")
        r.fp32_size_mb, r.family = fp32_mb, "transformer" if features is TEXT else "cnn"
        return r

    history = [sized("conv_a", CONV, 0.44), sized("conv_b", near(CONV, 0.6), 1.7), sized("text", TEXT, 90.0)]
    history[2].size_ratio = 0.6
    recipe = ("bnb_nf4", "nf4", "none", "cpu")
    small = predict(near(CONV, -0.6), "cnn", recipe, history, fp32_size_mb=0.1)
    assert small.size_ratio.value == pytest.approx((0.02 + 0.017) / 0.1)  # 0.37, not the neighbours' ~0.2
    assert size_by_family_fit(history, "cnn", 0.1) == pytest.approx(0.37)
    assert size_by_family_fit(history, "transformer", 10.0) is None  # one transformer size: no line
    assert size_by_family_fit(history, "cnn", None) is None
    unsized = predict(near(CONV, -0.6), "cnn", recipe, history)  # no fp32 size given: the neighbours' ratio
    assert unsized.size_ratio.value < 0.3


def test_scales_come_from_the_spread_across_models():
    scales = feature_scales(HISTORY)
    assert scales["mac_share.conv"] > 0.1 and scales["small_layer_share"] == 0.1  # constant feature: the floor


def test_the_cheapest_option_that_meets_the_constraints_comes_first():
    target = near(CONV, 0.1)
    options = [evaluate(predict(target, "cnn", (m, "int8", "none", "cpu"), HISTORY), "cnn", Constraints(1.0), 4.0, 0.44)
               for m in ("ptq_static", "ptq_dynamic", "qat")]
    ranked = rank(options)
    # ptq_dynamic needs weights only and buys size (x0.7): the cheapest that meets; static buys speed too
    assert [o.prediction.method for o in ranked[:2]] == ["ptq_dynamic", "ptq_static"]
    assert all(o.meets for o in ranked)
    fast = rank([evaluate(o.prediction, "cnn", Constraints(1.0, max_latency_ms=3.0), 4.0, 0.44) for o in options])
    assert fast[0].prediction.method == "ptq_static" and not next(o for o in fast if o.prediction.method ==
                                                                   "ptq_dynamic").meets


def test_nothing_meets_an_impossible_constraint_and_the_closest_comes_first():
    target = near(TEXT, 0.1)
    options = [evaluate(predict(target, "transformer", (m, "int8", "none", "cpu"), HISTORY), "transformer",
                        Constraints(0.01), 100.0, 90.0) for m in ("ptq_static", "ptq_dynamic")]
    ranked = rank(options)
    assert not any(o.meets for o in ranked) and ranked[0].prediction.method == "ptq_dynamic"
    assert any("drop" in w and "> 0.01" in w for w in ranked[0].why)
