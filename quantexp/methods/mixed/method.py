"""method=mixed: every layer in its own dtype, assigned by hand or solved.

Strategies: ``manual`` (``method.assignment: {layer: dtype}``, unnamed layers take
``method.default``) and ``auto``: the (layer, dtype) kernels this host runs fast
(``quantexp.quant.kernels``: ISA check + cached micro-benchmark on the layer's real
shapes), the per-layer sensitivity of those on the calibration set, then
``quantexp.quant.solver.solve`` under ``method.budget`` and, by default, no slower
than the uniform int8 model (predicted from the measured kernel times, then measured
against it: ``int8_check``). How each dtype runs is in ``quantexp.quant.mixed_layers``;
on models torch.fx can trace, consecutive int8 layers form one quantized region.
"""

from __future__ import annotations

from typing import Any

from quantexp.config import ConfigError, Granularity
from quantexp.methods.base import QuantizationMethod, QuantizedModel
from quantexp.quant.mixed_layers import (
    DTYPES,
    assignable_layers,
    build_mixed,
    full_assignment,
    is_static_int8,
    layer_dtypes,
    model_size_bytes,
    supported_dtypes,
    validate_assignment,
)
from quantexp.quant.qconfig import build_qconfig

TRANSFORMER_ITEMS = {"hessian_items": 16, "sensitivity_items": 64, "hessian_samples": 16}
DEFAULTS = {"hessian_items": 256, "sensitivity_items": None, "hessian_samples": 64}


def _value(d: Any) -> str:
    return getattr(d, "value", d)


class MixedPrecision(QuantizationMethod):
    needs_calibration = True

    def check_model(self, bundle):
        layers = assignable_layers(bundle.model)
        if not layers:
            raise ConfigError(f"model {bundle.name} has no Linear/Conv/LSTM/GRU/Embedding layers to assign")
        validate_assignment(layers, self.cfg.assignment)

    def _items(self, key: str, bundle) -> int | None:
        value = getattr(self.cfg, key)
        if value is None and bundle.family == "transformer":
            return TRANSFORMER_ITEMS[key]
        return value if value is not None else DEFAULTS[key]

    def _kernel_table(self, bundle, dtypes):
        from quantexp.quant.fx_regions import graph_mode_possible
        from quantexp.quant.kernels import kernel_table

        example = bundle.example_inputs(getattr(self, "bench_batch_size", 16))
        return kernel_table(bundle.model, example, dtypes, cache_dir=getattr(self, "cache_dir", None),
                            isa=self.host.cpu.isa, threads=self.host.threads, engine=self.host.quantized_engine,
                            graph=graph_mode_possible(bundle.model))

    def quantize(self, bundle, calibration):
        cfg = self.cfg
        layers = assignable_layers(bundle.model)
        auto = _value(cfg.strategy) == "auto"
        info: dict[str, Any] = {"strategy": _value(cfg.strategy), "n_layers": len(layers)}
        tables: dict[str, list[dict[str, Any]]] = {}
        figures: dict[str, str] = {}
        from quantexp.quant.solver import Budget

        budget = Budget(cfg.budget.max_accuracy_drop, cfg.budget.max_size_mb, cfg.budget.max_latency_ms)
        if budget.items():  # re-checked on the measured numbers (check_measured)
            self._budget = budget
        need_latency = auto and (budget.max_latency_ms is not None or _value(cfg.objective) == "latency"
                                 or cfg.max_latency_vs_int8 is not None)
        choices = [_value(c) for c in cfg.choices if _value(c) != "fp32"]
        table = None
        if (auto or cfg.sensitivity) and (cfg.kernel_filter or need_latency):
            table = self._kernel_table(bundle, sorted(set(choices) | ({"int8"} if need_latency else set())))
            tables["kernels"] = table.table_rows()
            info.update(table.summary())
        offered = table.choices(layers) if table is not None and cfg.kernel_filter else \
            {n: ["fp32", *(d for d in choices if d in supported_dtypes(m))] for n, m in layers.items()}
        if auto or cfg.sensitivity:
            from quantexp.quant.sensitivity import run_sensitivity

            report = run_sensitivity(
                bundle, calibration, choices=sorted({d for ds in offered.values() for d in ds} - {"fp32"} | {"int8"}),
                offered=offered, reduce_range=False, hessian_samples=self._items("hessian_samples", bundle),
                hessian_tol=cfg.hessian_tol, hessian_items=self._items("hessian_items", bundle),
                max_items=self._items("sensitivity_items", bundle), measure_latency=need_latency,
                kernel_ms=table.ms if table is not None else None,
                batch_size=cfg.calibration.batch_size, seed=0,
                latency_batch_size=getattr(self, "bench_batch_size", 16))
            tables.update(report.tables())
            info.update(report.summary())
            figures.update(report.figures())
        if auto:
            candidates = {layer: {d: v for d, v in options.items() if d in offered[layer]}
                          for layer, options in report.candidates.items()}
            cap = None
            if cfg.max_latency_vs_int8 is not None:
                cap = cfg.max_latency_vs_int8 * uniform_int8_latency(report.base, table.ms, layers)
                info["predicted.uniform_int8_latency_ms"] = cap / cfg.max_latency_vs_int8
                info["latency_cap_ms"] = cap
            result, cap_status = solve_capped(candidates, report.base, budget, cap, _value(cfg.objective))
            if cap_status:
                info["latency_cap"] = cap_status
            if not result.met:
                raise ConfigError(f"no configuration meets {budget}; closest: {result.describe_closest()}")
            assignment = result.assignment
            info.update({f"predicted.{k}": v for k, v in result.predicted.items()})
            info["solver"] = result.solver
        else:
            assignment = full_assignment(layers, cfg.assignment, cfg.default)
        # 8-bit activations, checked for saturation (7 bits where an AVX2 kernel saturates)
        qconfig = build_qconfig(cfg.calibration.observer, Granularity.per_channel, False)
        reports: dict[int, dict[str, Any]] = {}  # build_mixed's report, by model

        def build(a):
            report_of_build: dict[str, Any] = {}
            built_model = build_mixed(bundle.model, a, calibration, False, cfg.calibration.batch_size, qconfig,
                                      report=report_of_build, graph=True)
            reports[id(built_model)] = report_of_build
            return built_model

        if auto and cap is not None and cap_status == "met":
            # the latency promise was predicted from layers timed alone: measure it
            from quantexp.methods.mixed.int8_check import check_against_int8

            batch = getattr(self, "bench_batch_size", 16)
            example = bundle.example_inputs(batch)
            checked = check_against_int8(build, assignment, report.candidates, report.base, budget,
                                         lambda m: m(*example), batch_size=batch,
                                         max_ratio=cfg.max_latency_vs_int8,
                                         timing=getattr(self, "bench_timing", None))
            assignment, model = checked.assignment, checked.model
            info.update(checked.info())
        else:
            model = build(assignment)
        built = reports[id(model)]
        rows = layer_dtypes(model, layers, bundle.example_inputs(2))
        seven = set(built["reduce_range_layers"]) if built["build_path"] == "eager" else \
            ({n for n, d in assignment.items() if d == "int8"} if built["reduce_range_layers"] else set())
        for row in rows:
            row["assigned"] = assignment[row["layer"]]
            if row["runs_in"] == "int8" and is_static_int8(layers[row["layer"]], "int8"):
                row["activation_bits"] = 7 if row["layer"] in seven else 8
        # static int8 layers whose x86 kernel saturated with 8-bit activations, rebuilt with 7
        info["reduce_range_layers"] = ",".join(built["reduce_range_layers"])
        info["build_path"] = built["build_path"]
        for key in ("int8_boundaries", "fx_fallback_reason"):
            if key in built:
                info[key] = built[key]
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


def solve_capped(candidates, base, budget, cap: float | None, objective: str):
    """``solve`` under ``budget`` and predicted latency <= ``cap`` (the uniform int8
    model's). When the budget needs layers int8 cannot keep (uniform int8 itself misses
    the accuracy budget, so fp32 layers cost time) no assignment may meet both: then the
    fastest assignment that meets ``budget`` (the smallest within 1% of its latency),
    with the status saying so (it is more accurate than uniform int8). Returns (result, cap status or "" without a cap)."""
    from quantexp.quant.solver import Budget, solve

    if cap is None:
        return solve(candidates, base, budget, objective=objective), ""
    capped = Budget(budget.max_accuracy_drop, budget.max_size_mb,
                    cap if budget.max_latency_ms is None else min(cap, budget.max_latency_ms))
    result = solve(candidates, base, capped, objective=objective)
    if result.met:
        return result, "met"
    status = "not met: the budget needs layers int8 cannot keep; fastest that meets it"
    fastest = solve(candidates, base, budget, objective="latency")
    if not fastest.met or objective == "latency":
        return fastest, status
    # within 1% of the fastest, the smallest (an int8 embedding lookup: +17 us, -35 MB)
    near_ms = 1.01 * fastest.predicted["latency_ms"]
    near = Budget(budget.max_accuracy_drop, budget.max_size_mb,
                  near_ms if budget.max_latency_ms is None else min(near_ms, budget.max_latency_ms))
    smallest = solve(candidates, base, near, objective=objective)
    return (smallest, status) if smallest.met else (fastest, status)


def uniform_int8_latency(base: dict[str, float], kernel_ms: dict[str, dict[str, float]], layers) -> float:
    """The latency predicted for every layer in int8 (the kernel table's times, added to
    the fp32 model's): the reference a mixed model must not be slower than."""
    total = base["latency_ms"]
    for name in layers:
        times = kernel_ms.get(name, {})
        if "int8" in times and "fp32" in times:
            total += times["int8"] - times["fp32"]
    return total
