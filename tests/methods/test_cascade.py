"""method=cascade: the deployed module (routing, scripting, saving), threshold holdout,
refusals up front, and tiny end-to-end runs of the plain cascade, +scenario=drift and
+scenario=slo checked in results.json and in MLflow (step metrics, artifacts)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from quantexp.api import compose, validate
from quantexp.config import ConfigError
from quantexp.methods.cascade import module as cm
from tests.cli.test_run_py import store
from tests.run_api import run_api
from tests.run_py import run_py

# A small CNN trained once for the module (1 epoch); 300 held-out items.
MODEL = ["model=cnn", "model.n_train=1200", "model.n_test=400", "model.epochs=1"]
TINY = ["method=cascade", *MODEL, "+debug=tiny", "method.calibration.size=64", "method.holdout=300"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cascade_cache")


# ------------------------------------------------------------------ the module
class Affine(nn.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return torch.stack([x.sum(dim=(1, 2, 3)) * self.scale, torch.zeros(x.shape[0])], dim=1)


class Untraceable(Affine):
    def forward(self, x):
        if torch.jit.is_tracing():
            raise RuntimeError("data-dependent")
        return super().forward(x)


def test_the_cascade_answers_low_or_high_by_threshold_and_router():
    x = torch.linspace(-1, 1, 8 * 4).reshape(8, 1, 2, 2)
    router = cm.RangeRouter(-0.9, 0.9, outside_share=0.0)
    module, how = cm.build(Affine(1.0), Affine(-1.0), router, "max_softmax", 0.0, (x[:2],))
    assert how == "torchscript" and isinstance(module, torch.jit.ScriptModule)
    out, low, conf, escalated, routed = module.decide(x)
    # the first and last items hold values outside [-0.9, 0.9]: routed up whatever the threshold
    assert routed.tolist() == [True] + [False] * 6 + [True] and torch.equal(escalated, routed)
    assert torch.equal(out[1:7], low[1:7]) and torch.equal(out[0], -low[0])
    module.threshold.fill_(1.01)  # every confidence is below: all high precision
    assert torch.equal(module(x), -low)
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    assert float(loaded.threshold) == pytest.approx(1.01) and torch.equal(loaded(x), -low)
    with pytest.raises(Exception):  # tracing the wrapper would freeze one branch: refused
        torch.jit.trace(cm.Cascade(Affine(1.0), Affine(-1.0), cm.NoRouter(), 0, 0.5), (x,))


def test_a_low_model_that_cannot_be_traced_keeps_the_cascade_eager_and_picklable():
    x = torch.randn(6, 1, 2, 2)
    module, how = cm.build(Untraceable(1.0), Affine(-1.0), cm.NoRouter(), "margin", 2.0, (x[:2],))
    assert how.startswith("eager") and not isinstance(module, torch.jit.ScriptModule)
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert torch.equal(loaded(x), Affine(-1.0)(x))


def test_text_routing_by_length_and_unseen_tokens():
    seen = torch.zeros(50, dtype=torch.bool)
    seen[:20] = True
    router = cm.TextRouter(seen, max_len=5, oov_share=0.3)
    ids = torch.tensor([[1, 2, 3, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6, 7], [1, 30, 31, 0, 0, 0, 0],
                        [1, 30, 2, 3, 0, 0, 0]])
    mask = (ids > 0).long()
    mask[1] = 1
    assert router(ids, mask).tolist() == [False, True, True, False]  # ok, too long, 2/3 unseen, 1/4 unseen
    fp16 = cm.HalfPrecision(nn.Linear(4, 2))
    assert fp16(torch.randn(3, 4)).dtype == torch.float32 and fp16.model.weight.dtype == torch.float16


def test_drift_noise_stays_in_range_and_substitutes_only_inside_texts():
    from quantexp.methods.cascade.drift import noisy_window

    rng = np.random.default_rng(0)
    x = torch.rand(50, 1, 4, 4) * 3 - 1  # values in [-1, 2]
    (noisy,) = noisy_window((x,), 0.3, rng, (-1.0, 2.0), None)
    assert noisy.min() >= -1.0 and noisy.max() <= 2.0 and not torch.equal(noisy, x)
    assert noisy_window((x,), 0.0, rng, (-1.0, 2.0), None)[0] is x
    ids = torch.tensor([[101, 5, 6, 7, 8, 102, 0, 0]] * 20)
    mask = (ids > 0).long()
    new_ids, new_mask = noisy_window((ids, mask), 0.5, rng, (0.0, 1.0), np.array([40, 41]))
    changed = new_ids != ids
    assert changed.any() and torch.equal(new_mask, mask)
    assert not changed[:, [0, 5, 6, 7]].any()  # [CLS], [SEP] and padding stay
    assert set(new_ids[changed].tolist()) <= {40, 41}


def test_the_holdout_never_overlaps_the_calibration_set():
    from quantexp.methods.cascade.method import draw_holdout
    from quantexp.models.base import Split

    train = Split((torch.randn(100, 3),), torch.zeros(100, dtype=torch.long), torch.arange(1000, 1100))
    calibration = train.subset(list(range(0, 100, 2)))
    holdout = draw_holdout(train, calibration, 40, seed=3)
    assert len(holdout) == 40 and not set(holdout.ids.tolist()) & set(calibration.ids.tolist())
    assert torch.equal(draw_holdout(train, calibration, 40, seed=3).ids, holdout.ids)
    with pytest.raises(ConfigError, match="only 50 are left"):
        draw_holdout(train, calibration, 51, seed=3)


# ------------------------------------------------------------------- refusals
@pytest.mark.parametrize("overrides, message", [
    (["method.threshold=1.5"], "method.threshold must be in [0, 1], got 1.5"),
    (["method.target_drop=-1"], "method.target_drop must be in [0, 100], got -1"),
    (["method.target_drop=101"], "method.target_drop must be in [0, 100], got 101"),
    (["precision=fp32"], "a cascade needs a low precision below its high one: precision=fp32"),
    (["method.low=ptq_dynamic", "precision=fp16", "method.high=fp16"],
     "a cascade needs a low precision below its high one: precision=fp16 (the low model, "
     "method.low=ptq_dynamic) and method.high=fp16"),
    (["method.low=nope"], "method.low=nope is not a method; valid: bnb_int8"),
    (["method.low=cascade"], "the low-precision model of a cascade cannot be a cascade"),
    (["method.low=ort_static"], "method.low=ort_static cannot run with exporter=none; valid exporter values"),
    (["precision=nf4"], "method.low=ptq_static cannot run with precision=nf4; valid precision values for "
                        "ptq_static: int8, w4a8, w4a8_tensor"),
    (["method.low=bnb_int8", "+method.low_options.treshold=4"], "method.low_options for bnb_int8: Key 'treshold'"),
    (["method.low=bnb_int8", "+method.low_options.threshold=-4"], "method.threshold must be >= 0"),
    (["exporter=onnx"], "method=cascade cannot run with exporter=onnx; valid exporter values for cascade: none"),
    (["method.routing.outside_share=2"], "method.routing.outside_share must be in [0, 1], got 2"),
    (["+scenario=drift", "method.drift.shadow=0"], "method.drift.shadow must be in (0, 1], got 0"),
    (["+scenario=drift", "method.drift.target_agreement=1.2"], "method.drift.target_agreement must be in (0, 1]"),
    (["+scenario=slo", "method.slo.p99_ms=0"], "method.slo.p99_ms must be > 0 and finite, got 0"),
    (["+scenario=slo", "method.slo.rates=[]"], "method.slo.rates must be a non-empty list of rates > 0"),
    (["+scenario=slo", "method.slo.batch_sizes=[0,4]"], "method.slo.batch_sizes must be a non-empty list"),
    (["+scenario=slo", "method.slo.precisions=[low,low]"], "method.slo.precisions must be a non-empty list"),
    (["+scenario=slo", "method.slo.repeats=0"], "and method.slo.repeats must be >= 1"),
])
def test_bad_cascade_configs_are_one_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(compose(["method=cascade", *overrides]))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_scenarios_select_the_cascade_and_compose_with_their_settings():
    exp = validate(compose(["+scenario=drift", "method.drift.windows=3"]))
    assert exp.method.name == "cascade" and exp.method.scenario.value == "drift" and exp.method.drift.windows == 3
    exp = validate(compose(["method=cascade", "+scenario=slo", "method.low=ptq_dynamic"]))
    assert exp.method.scenario.value == "slo" and exp.method.low == "ptq_dynamic"


def test_preflight_counts_the_holdout_with_the_calibration_set(tmp_path):
    from quantexp.preflight import preflight

    with pytest.raises(ConfigError, match=r"method=cascade needs 4256 training items \(calibration and "
                                          r"held-out items\) but the training set has 4000"):
        preflight(validate(compose(["method=cascade", "method.holdout=4000"])), tmp_path)


def test_run_py_refuses_out_of_range_before_any_model_loads(tmp_path):
    proc = run_py(["method=cascade", "method.threshold=-0.1"], tmp_path, timeout=120, store=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: method.threshold must be in [0, 1], got -0.1"
    assert not (tmp_path / "cache").exists() and not (tmp_path / "mlflow.db").exists()
    # a scenario runs on the cascade: another method has no scenario to run
    proc = run_py(["+scenario=drift", "method=ptq_static"], tmp_path, timeout=120, store=False)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "error: +scenario=drift runs on method=cascade (conf/scenario/drift.yaml selects it), not "
        "method=ptq_static: drop the method= override")


# ------------------------------------------------------------ end to end, tiny
def test_cascade_run_reports_escalation_low_alone_and_throughput(tmp_path, cache):
    # A fixed threshold high enough that items do escalate (the calibrated one may be 0
    # on so easy a holdout); the calibration facts are reported for it all the same.
    data = run_api([*TINY, "method.threshold=0.7"], tmp_path, cache)
    method, cand = data["method"], data["candidates"]["cascade"]
    assert method["build"] == "torchscript" and cand["export.format"] == "torchscript"
    assert method["threshold"] == 0.7 and method["threshold_source"] == "fixed"
    assert 0.0 <= method["holdout.calibrated_threshold"] <= 1.0 + 1e-6 and method["holdout.items"] == 300
    assert 0.0 < method["test.escalated_share"] < 1.0
    # both models are stored: more bits than fp32 alone, more bytes than fp32's artifact
    assert cand["bits_per_param"] > 32 + 7 and cand["size_bytes"] > data["candidates"]["fp32"]["size_bytes"]
    assert method["cascade.accuracy"] == pytest.approx(data["comparison"]["accuracy"])
    assert method["cascade.accuracy_ci_low"] < method["cascade.accuracy"] < method["cascade.accuracy_ci_high"]
    assert method["cascade.agreement_fp32"] == pytest.approx(data["comparison"]["agreement_fp32"])
    assert method["cascade.agreement_fp32"] >= method["low.agreement_fp32"]
    for side in ("fp32", "low", "cascade"):
        assert method[f"passes.{side}.items_per_s"] > 0 and method[f"passes.{side}.p99_ms"] > 0
    assert method["passes.low.throughput_ratio_ci_low"] <= method["passes.low.throughput_ratio"]
    # the deployed artifact is the whole cascade, loaded back and routed per item
    loaded = torch.jit.load(cand["artifact"])
    assert float(loaded.threshold) == pytest.approx(0.7)
    rows = (tmp_path / "run" / "tables" / "cascade_throughput.csv").read_text().splitlines()
    assert rows[0].startswith("model,") and len(rows) == 4
    client, runs = store(tmp_path)
    metrics = runs[0].data.metrics  # the method's numbers are method.* metrics
    assert metrics["method.test.escalated_share"] == pytest.approx(method["test.escalated_share"])
    assert "method.passes.cascade.throughput_ratio" in metrics and "candidate.accuracy_pct" in metrics


def test_drift_scenario_logs_windows_and_compares_the_controller(tmp_path, cache):
    windows = 3
    data = run_api([*TINY, "+scenario=drift", f"method.drift.windows={windows}", "method.drift.window=60",
                    "method.drift.shadow=0.5", "method.drift.min_pool=10", "method.drift.noise_max=0.6"],
                   tmp_path, cache)
    method = data["method"]
    assert 0 <= method["drift.windows_met.controller"] <= windows and 0 <= method["drift.windows_met.fixed"] <= windows
    rows = data["tables"]["drift_windows"]
    assert [(r["window"], r["arm"]) for r in rows] == [(w, a) for w in range(windows) for a in ("fixed", "controller")]
    assert rows[0]["noise"] == 0.0 and rows[-1]["noise"] == pytest.approx(0.6)
    # noise hurts: the last window is no easier for fp32 than the clean first one
    assert rows[-1]["fp32_accuracy"] <= rows[0]["fp32_accuracy"]
    assert all(r["threshold"] == rows[0]["threshold"] for r in rows if r["arm"] == "fixed")
    assert Path(data["figures"]["drift"]).is_file()
    client, runs = store(tmp_path)
    run_id = runs[0].info.run_id
    for metric in ("threshold", "agreement_estimate", "true_accuracy", "escalated_share", "latency_p50_ms"):
        history = client.get_metric_history(run_id, f"drift.controller.{metric}")
        assert sorted(m.step for m in history) == list(range(windows)), metric
    assert [m.step for m in client.get_metric_history(run_id, "drift.fixed.true_agreement")] == list(range(windows))
    assert "figures/drift.png" in [a.path for a in client.list_artifacts(run_id, "figures")]
    assert runs[0].data.metrics["method.drift.windows_met.controller"] == method["drift.windows_met.controller"]


def test_slo_scenario_runs_statics_and_the_controller_on_the_same_load(tmp_path, cache, capsys):
    data = run_api([*TINY, "+scenario=slo", "method.slo.rates=[50,200]", "method.slo.phase_s=0.4",
                    "method.slo.batch_sizes=[1,4]", "method.slo.precisions=[high,low]", "method.slo.p99_ms=100",
                    "method.slo.interval_s=0.2", "method.slo.profile_calls=3", "method.slo.repeats=2"],
                   tmp_path, cache)
    method = data["method"]
    rows = data["tables"]["slo_runs"]
    runs = ["b1_high", "b4_high", "b1_low", "b4_low", "controller"]
    assert [r["run"] for r in rows] == [r for r in runs for _ in (50, 200)]
    assert {r["rate"] for r in rows} == {50.0, 200.0}
    # every run saw the same arrivals, twice, and is judged by the median of its two p99s
    assert len({(r["rate"], r["requests"]) for r in rows}) == 2
    for r in rows:
        assert r["repeats"] == 2 and r["served_high"] + r["served_low"] == 2 * r["completed"], r
        each = [float(x) for x in r["p99_ms_each"].split("/")]
        assert r["p99_ms"] == pytest.approx(sum(each) / 2, rel=0.01)
    assert "slo.verdict" in method and method["slo.controller_matches_best_static"] in (True, False)
    # the progress display names the stage that serves the scenario (minutes at real rates)
    assert "✓ cascade: escalation + SLO scenario" in capsys.readouterr().err
    assert method["slo.profile_ms.b1_low"] > 0 and Path(data["figures"]["slo"]).is_file()
    client, mlruns = store(tmp_path)
    run_id = mlruns[0].info.run_id
    steps = client.get_metric_history(run_id, "slo.controller.p99_ms")
    assert len(steps) >= 2 and [m.step for m in steps] == sorted(m.step for m in steps)
    assert client.get_metric_history(run_id, "slo.controller.queue_len")
    assert client.get_metric_history(run_id, "slo.controller.throughput")
    assert [m.step for m in client.get_metric_history(run_id, "slo.static.b4_low.p99_ms")] == [0, 1]
    assert "figures/slo.png" in [a.path for a in client.list_artifacts(run_id, "figures")]


def test_an_slo_no_configuration_can_meet_ends_with_the_closest():
    # Known once service times are profiled on the loaded cascade (after the model loads):
    # one ConfigError line, which run.py turns into exit 2 with the MLflow run FAILED.
    from quantexp.methods.cascade.config import SloConfig
    from quantexp.methods.cascade.slo import run_slo
    from quantexp.models.base import ModelBundle, Split

    x = torch.randn(32, 1, 2, 2)
    module, _ = cm.build(Affine(1.0), Affine(-1.0), cm.NoRouter(), "max_softmax", 0.5, (x[:2],))
    test = Split((x,), torch.zeros(32, dtype=torch.long), torch.arange(32))
    bundle = ModelBundle.from_module(Affine(1.0), test=test)
    cfg = SloConfig(p99_ms=1e-6, batch_sizes=[1, 4], profile_calls=2)
    exp = validate(compose([]))
    with pytest.raises(ConfigError) as err:
        run_slo(module, bundle, cfg, exp, log=None)
    assert str(err.value).startswith("no configuration meets method.slo.p99_ms=1e-06: every call takes longer; "
                                     "closest: b") and "\n" not in str(err.value)


@pytest.mark.slow
def test_bitsandbytes_low_model_makes_an_eager_cascade(tmp_path, cache):
    data = run_api([*TINY, "method.low=bnb_nf4", "precision=nf4", "method.threshold=0.9"], tmp_path, cache)
    assert data["method"]["build"].startswith("eager")
    assert data["candidates"]["cascade"]["export.format"].startswith("torch.save pickle")
    assert data["method"]["cascade.agreement_fp32"] >= data["method"]["low.agreement_fp32"]


@pytest.mark.slow
def test_text_cascade_routes_on_length_and_vocabulary(tmp_path, tiny_bert):
    data = run_api(["method=cascade", "model=hf", f"model.path={tiny_bert}", "model.n_train=200",
                    "model.n_test=64", "model.max_length=32", "model.epochs=1", "method.low=ptq_dynamic",
                    "+debug=tiny", "method.calibration.size=32", "method.holdout=100",
                    "method.routing.length_quantile=0.5"], tmp_path)
    method = data["method"]
    assert method["routing"] == "text length and out-of-vocabulary share"
    assert method["test.routed_share"] > 0  # half the texts are longer than the training median
    assert np.isclose(method["cascade.accuracy"], data["comparison"]["accuracy"])
