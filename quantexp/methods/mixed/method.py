"""method=mixed: every layer in its own dtype, assigned by hand or solved.

Strategies: ``manual`` (``method.assignment: {layer: dtype}``, unnamed layers take
``method.default``) and ``auto`` (per-layer sensitivity measured on the
calibration set, then ``quantexp.quant.solver.solve`` under ``method.budget``).
How each dtype runs is in ``quantexp.quant.mixed_layers``.
"""

from __future__ import annotations

from typing import Any

from quantexp.config import ConfigError, Granularity
from quantexp.methods.base import QuantizationMethod, QuantizedModel
from quantexp.quant.mixed_layers import (
    DTYPES,
    RECURRENT,
    assignable_layers,
    build_mixed,
    full_assignment,
    layer_dtypes,
    model_size_bytes,
    validate_assignment,
)
from quantexp.quant.qconfig import build_qconfig


def _value(d: Any) -> str:
    return getattr(d, "value", d)


class MixedPrecision(QuantizationMethod):
    needs_calibration = True

    def check_model(self, bundle):
        layers = assignable_layers(bundle.model)
        if not layers:
            raise ConfigError(f"model {bundle.name} has no Linear/Conv/LSTM/GRU layers to assign")
        validate_assignment(layers, self.cfg.assignment)

    def quantize(self, bundle, calibration):
        cfg = self.cfg
        reduce_range = not self.host.cpu.has_vnni
        layers = assignable_layers(bundle.model)
        info: dict[str, Any] = {"strategy": _value(cfg.strategy), "reduce_range": reduce_range,
                                "n_layers": len(layers)}
        tables: dict[str, list[dict[str, Any]]] = {}
        figures: dict[str, str] = {}
        if _value(cfg.strategy) == "auto" or cfg.sensitivity:
            from quantexp.quant.sensitivity import run_sensitivity

            report = run_sensitivity(bundle, calibration, choices=[_value(c) for c in cfg.choices],
                                     reduce_range=reduce_range, hessian_samples=cfg.hessian_samples,
                                     hessian_tol=cfg.hessian_tol, hessian_items=cfg.hessian_items,
                                     max_items=cfg.sensitivity_items,
                                     measure_latency=_value(cfg.strategy) == "auto"
                                     and (cfg.budget.max_latency_ms is not None
                                          or _value(cfg.objective) == "latency"),
                                     batch_size=cfg.calibration.batch_size, seed=0)
            tables.update(report.tables())
            info.update(report.summary())
            figures.update(report.figures())
        from quantexp.quant.solver import Budget, solve

        budget = Budget(cfg.budget.max_accuracy_drop, cfg.budget.max_size_mb, cfg.budget.max_latency_ms)
        if budget.items():  # re-checked on the measured numbers (check_measured)
            self._budget = budget
        if _value(cfg.strategy) == "auto":
            result = solve(report.candidates, report.base, budget, objective=_value(cfg.objective))
            if not result.met:
                raise ConfigError(f"no configuration meets {budget}; closest: "
                                  f"{result.describe_closest()}")
            assignment = result.assignment
            info.update({f"predicted.{k}": v for k, v in result.predicted.items()})
            info["solver"] = result.solver
        else:
            assignment = full_assignment(layers, cfg.assignment, cfg.default)
        qconfig = build_qconfig(cfg.calibration.observer, Granularity.per_channel, reduce_range)
        built: dict[str, Any] = {}
        model = build_mixed(bundle.model, assignment, calibration, reduce_range,
                            cfg.calibration.batch_size, qconfig, report=built)
        rows = layer_dtypes(model, layers, bundle.example_inputs(2))
        for row in rows:
            row["assigned"] = assignment[row["layer"]]
            if row["runs_in"] == "int8" and not isinstance(layers[row["layer"]], RECURRENT):
                row["activation_bits"] = 7 if reduce_range or row["layer"] in built["reduce_range_layers"] else 8
        # static int8 layers whose x86 kernel saturated with 8-bit activations, rebuilt with 7
        info["reduce_range_layers"] = ",".join(built["reduce_range_layers"])
        tables["precision_assignment"] = rows
        info["assignment"] = ",".join(f"{n}={d}" for n, d in assignment.items())
        info["estimated_size_mb"] = model_size_bytes(bundle.model, assignment) / 1e6
        for dtype in DTYPES:
            info[f"layers_{dtype}"] = sum(d == dtype for d in assignment.values())
        info["tables"] = tables
        if figures:
            info["figures"] = figures
        return QuantizedModel(model, info)

    def check_measured(self, candidate: dict[str, Any], comparison: dict[str, Any]) -> dict[str, Any]:
        """The budget checked on the measured (not predicted) numbers."""
        budget = getattr(self, "_budget", None)
        if budget is None:
            return {}
        return budget.check_measured(candidate, comparison)

