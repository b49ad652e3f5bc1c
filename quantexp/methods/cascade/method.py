"""method=cascade: build the deployed cascade (low-precision model from another method,
high-precision model, routing) and calibrate its threshold on held-out training items.

The low-precision model comes from the registry by name (``get_method``), so any
model-stage method can be the first stage (ptq_static, ptq_dynamic, bnb_int8,
bnb_nf4, mixed, qat ...) without this package importing another method package.
The threshold is calibrated on training items that the low method's calibration set
does not contain, never on test items. Caveat reported with the numbers: the fp32
model was trained on the whole training split, these items included, so both models
are more accurate and more confident there than on unseen data; the test-set
figures show how far that carries.

After the pipeline has evaluated and timed the loaded artifact, ``after_measure``
adds what only a cascade has (``report.py``) and runs the chosen scenario
(``drift.py``, ``slo.py``) on the same loaded artifact.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from quantexp.bench.size import storage_bits
from quantexp.config import ConfigError
from quantexp.methods.base import QuantizationMethod, QuantizedModel, get_method
from quantexp.methods.cascade import module as cm
from quantexp.serving.threshold import calibrate_threshold, outcome_at


def _value(v: Any) -> str:
    return getattr(v, "value", v)


class Cascade(QuantizationMethod):
    # The low method may calibrate, and the router's input range comes from the same set.
    needs_calibration = True
    # the escalation threshold is solved against labels on held-out training items
    needs_labels = True

    def __init__(self, cfg, precision, host):
        super().__init__(cfg, precision, host)
        low_cls = get_method(cfg.low)
        if low_cls.stage != "model":
            raise ConfigError(f"method.low={cfg.low} rewrites an exported artifact; a cascade needs a "
                              "method that returns a PyTorch module")
        self.low_method = low_cls(cfg.low_config(), precision, host)
        self.calibration_facts: dict[str, Any] = {}

    def check_model(self, bundle) -> None:
        self.low_method.check_model(bundle)

    # ------------------------------------------------------------- building
    def quantize(self, bundle, calibration) -> QuantizedModel:
        cfg = self.cfg
        self.low_method.log = None
        low = self.low_method.quantize(bundle, calibration)
        base = bundle.model.eval()
        text = len(bundle.test.inputs) == 2
        if _value(cfg.high) == "fp16":
            high = (cm.HalfPrecisionText if text else cm.HalfPrecision)(copy.deepcopy(base))
        else:
            high = base
        router, routing = self._router(bundle, calibration, text)
        example = bundle.example_inputs(2)
        module, fmt = cm.build(low.model, high, router, _value(cfg.signal), 0.0, example)

        holdout = draw_holdout(bundle.train, calibration, cfg.holdout, torch.initial_seed())
        cal = self._calibrate(module, base, holdout)
        threshold = cal.threshold if cfg.threshold is None else float(cfg.threshold)
        module.threshold.fill_(threshold)

        # TorchScript keeps a traced int8 model's packed weights out of state_dict: count
        # the stored bits of both models from the modules they were built from.
        param_bits = storage_bits(low.model.state_dict()).param_bits + storage_bits(high.state_dict()).param_bits
        low_info = dict(low.info)
        tables = low_info.pop("tables", {})
        figures = low_info.pop("figures", {})
        info: dict[str, Any] = {
            "low_method": cfg.low, "high_precision": _value(cfg.high), "signal": _value(cfg.signal),
            "threshold": threshold, "threshold_source": "calibrated" if cfg.threshold is None else "fixed",
            "build": fmt, "param_bits": param_bits, **routing,
            **{f"holdout.{k}": v for k, v in self.calibration_facts.items()},
            **{f"low.{k}": v for k, v in low_info.items() if not isinstance(v, (dict, list))},
            "tables": tables, "figures": figures,
        }
        return QuantizedModel(module, info)

    def _router(self, bundle, calibration, text: bool) -> tuple[torch.nn.Module, dict[str, Any]]:
        r = self.cfg.routing
        if not r.enabled:
            return (cm.NoTextRouter() if text else cm.NoRouter()), {"routing": "off"}
        if text:
            ids, mask = bundle.train.inputs
            vocab = int(max(ids.max(), bundle.test.inputs[0].max())) + 1
            seen = torch.zeros(vocab, dtype=torch.bool)
            seen[ids[mask > 0].unique()] = True
            lengths = mask.sum(dim=1).float()
            max_len = int(torch.quantile(lengths, r.length_quantile).item())
            return cm.TextRouter(seen, max_len, r.oov_share), {
                "routing": "text length and out-of-vocabulary share", "routing.max_tokens": max_len,
                "routing.oov_share": r.oov_share, "routing.vocabulary_seen": int(seen.sum())}
        x = calibration.inputs[0]
        low, high = float(x.min()), float(x.max())
        return cm.RangeRouter(low, high, r.outside_share), {
            "routing": "inputs outside the calibrated range", "routing.range_low": low,
            "routing.range_high": high, "routing.outside_share": r.outside_share}

    def _calibrate(self, module, fp32, holdout):
        """Run the cascade's stages on the held-out items and solve the threshold."""
        cfg = self.cfg
        labels = holdout.labels.numpy()
        module.threshold.fill_(-1.0)  # no escalation by confidence: the router's share alone
        parts = decide_all(module, holdout.inputs, cfg.calibration.batch_size * 8)
        high_pred = batched_argmax(module.high, holdout.inputs, cfg.calibration.batch_size * 8)
        ref_pred = batched_argmax(fp32, holdout.inputs, cfg.calibration.batch_size * 8)
        low_pred = parts["low_logits"].argmax(axis=1)
        if _value(cfg.target_metric) == "agreement":
            low_ok, high_ok, reference = low_pred == ref_pred, high_pred == ref_pred, 1.0
        else:
            low_ok, high_ok = low_pred == labels, high_pred == labels
            reference = float((ref_pred == labels).mean())
        cal = calibrate_threshold(parts["confidence"], low_ok, high_ok, reference_score=reference,
                                  target_points=cfg.target_drop, forced=parts["routed"])
        facts = {"items": cal.n_items, "metric": _value(cfg.target_metric), "target_points": cfg.target_drop,
                 "target_met": cal.met, "reference_score": cal.reference_score, "low_score": cal.low_score,
                 "routed_share": cal.forced_share, "calibrated_threshold": cal.threshold}
        if cfg.threshold is not None:  # a fixed threshold: what it gives on the same items
            score, share = outcome_at(cfg.threshold, parts["confidence"], low_ok, high_ok, parts["routed"])
            facts.update(cascade_score=score, escalated_share=share,
                         drop_points=100.0 * (cal.reference_score - score))
        else:
            facts.update(cascade_score=cal.cascade_score, escalated_share=cal.escalated_share,
                         drop_points=cal.drop_points)
        self.calibration_facts = facts
        return cal

    # ------------------------------------------------------- after measuring
    @property
    def after_measure_title(self) -> str:
        """The progress display's line for ``after_measure``."""
        scenario = _value(self.cfg.scenario)
        return "cascade: escalation" + {"drift": " + drift scenario", "slo": " + SLO scenario"}.get(scenario, "")

    def after_measure(self, bundle, exported, reference, preds, exp) -> dict[str, Any]:
        """What only a cascade has, measured on the loaded artifact, then the scenario."""
        from quantexp.methods.cascade.report import measure_cascade

        runtime = exported.runtime
        if runtime is None:
            return {}
        extra = measure_cascade(runtime.module, bundle, reference, preds, exp)
        scenario = _value(self.cfg.scenario)
        if scenario == "drift":
            from quantexp.methods.cascade.drift import run_drift

            extra.update(run_drift(runtime.module, reference, bundle, self.cfg.drift, exp, self.log))
        elif scenario == "slo":
            from quantexp.methods.cascade.slo import run_slo

            extra.update(run_slo(runtime.module, bundle, self.cfg.slo, exp, self.log))
        return extra


def draw_holdout(train, calibration, size: int, seed: int):
    """``size`` training items not in the calibration set, drawn with ``seed``."""
    used = set(calibration.ids.tolist()) if calibration is not None else set()
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed % 2**63))
    free = [int(i) for i in order if int(train.ids[i]) not in used]
    if len(free) < size:
        raise ConfigError(f"method.holdout={size} training items are needed besides the calibration set; "
                          f"only {len(free)} are left")
    return train.subset(free[:size])


@torch.inference_mode()
def decide_all(module, inputs: tuple[torch.Tensor, ...], batch_size: int) -> dict[str, np.ndarray]:
    """``module.decide`` over every item, in batches: logits, low logits, confidence,
    escalated and routed, as numpy arrays."""
    names = ("logits", "low_logits", "confidence", "escalated", "routed")
    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    n = int(inputs[0].shape[0])
    for start in range(0, n, batch_size):
        parts = module.decide(*(x[start:start + batch_size] for x in inputs))
        for name, part in zip(names, parts):
            out[name].append(part.float().numpy() if part.is_floating_point() else part.numpy())
    return {name: np.concatenate(v) for name, v in out.items()}


@torch.inference_mode()
def batched_argmax(model, inputs: tuple[torch.Tensor, ...], batch_size: int) -> np.ndarray:
    n = int(inputs[0].shape[0])
    return np.concatenate([model(*(x[s:s + batch_size] for x in inputs)).argmax(dim=1).numpy()
                           for s in range(0, n, batch_size)])
