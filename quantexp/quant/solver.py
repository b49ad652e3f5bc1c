"""Constraint-driven precision assignment from a per-(layer, dtype) table.

The table (from ``quant.sensitivity``) gives, per layer and dtype, the
accuracy drop (points) measured with only that layer changed, the layer's
stored size, and optionally its latency delta. A whole assignment is predicted
additively (drops add up, sizes add up, latency deltas add up) - an assumption,
which is why the chosen model is then measured through the normal harness and
the budget re-checked on the measured numbers (``Budget.check_measured``).

``solve`` minimises size (or latency) subject to the budget: exact enumeration
(an integer program solved by enumeration) when the space has at most
``EXACT_LIMIT`` assignments, else greedy: best objective gain per point of drop
while the accuracy budget holds, then, if another limit (size, latency) is still
exceeded, the single-layer change that most reduces the total excess, repeated.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

EXACT_LIMIT = 200_000
Table = Mapping[str, Mapping[str, Mapping[str, float]]]


@dataclass(frozen=True)
class Budget:
    max_accuracy_drop: float | None = None   # points (0-100)
    max_size_mb: float | None = None
    max_latency_ms: float | None = None

    def items(self) -> dict[str, float]:
        return {k: v for k, v in (("max_accuracy_drop", self.max_accuracy_drop),
                                  ("max_size_mb", self.max_size_mb),
                                  ("max_latency_ms", self.max_latency_ms)) if v is not None}

    def __str__(self) -> str:
        return ", ".join(f"{k}={v:g}" for k, v in self.items().items()) or "no budget"

    def excess(self, values: Mapping[str, float]) -> dict[str, float]:
        """Relative amount by which ``values`` (accuracy_drop, size_mb, latency_ms)
        exceed each limit (0 where met)."""
        keys = {"max_accuracy_drop": "accuracy_drop", "max_size_mb": "size_mb",
                "max_latency_ms": "latency_ms"}
        out = {}
        for limit_name, limit in self.items().items():
            value = values.get(keys[limit_name])
            if value is None:
                continue
            scale = max(abs(limit), 1e-9) if limit_name != "max_accuracy_drop" else max(abs(limit), 1.0)
            out[limit_name] = max(0.0, (value - limit) / scale)
        return out

    def met_by(self, values: Mapping[str, float]) -> bool:
        return all(v <= 1e-12 for v in self.excess(values).values())

    def check_measured(self, candidate: Mapping[str, Any], comparison: Mapping[str, Any]) -> dict[str, Any]:
        values: dict[str, float] = {"size_mb": candidate["size_bytes"] / 1e6}
        if "accuracy_delta" in comparison:
            values["accuracy_drop"] = -100.0 * comparison["accuracy_delta"]
        if candidate.get("latency"):
            values["latency_ms"] = candidate["latency"]["p50_ms"]
        out: dict[str, Any] = {"budget": str(self), **{f"measured.{k}": v for k, v in values.items()}}
        missing = [k for k, key in (("max_accuracy_drop", "accuracy_drop"), ("max_latency_ms", "latency_ms"))
                   if k in self.items() and key not in values]
        out["met"] = self.met_by(values) and not missing
        if missing:
            out["not_checked"] = ", ".join(missing)
        return out


@dataclass
class SolveResult:
    assignment: dict[str, str]
    predicted: dict[str, float]
    met: bool
    solver: str
    evaluated: int
    closest: dict[str, str] = field(default_factory=dict)
    closest_predicted: dict[str, float] = field(default_factory=dict)

    def describe_closest(self) -> str:
        a = ", ".join(f"{k}={v}" for k, v in self.closest.items())
        p = ", ".join(f"{k}={v:.4g}" for k, v in self.closest_predicted.items())
        return f"{{{a}}} (predicted {p})"


def predict(table: Table, base: Mapping[str, float], assignment: Mapping[str, str]) -> dict[str, float]:
    drop = sum(table[layer][d]["drop"] for layer, d in assignment.items())
    size = base.get("other_bytes", 0.0) + sum(table[layer][d]["size_bytes"] for layer, d in assignment.items())
    out = {"accuracy_drop": drop, "size_mb": size / 1e6}
    if "latency_ms" in base:
        deltas = (table[layer][d].get("latency_delta_ms", 0.0) for layer, d in assignment.items())
        # a kernel whose time was not measured (NaN) is never predicted to fit a latency limit
        out["latency_ms"] = base["latency_ms"] + sum(math.inf if math.isnan(x) else x for x in deltas)
    return out


def solve(table: Table, base: Mapping[str, float], budget: Budget, objective: str = "size",
          exact_limit: int = EXACT_LIMIT) -> SolveResult:
    """The assignment that minimises ``objective`` ("size" or "latency") among those
    predicted to meet ``budget``; ``met=False`` with the closest one otherwise."""
    if objective not in ("size", "latency"):
        raise ValueError(f"objective must be size or latency, got {objective!r}")
    if objective == "latency" and "latency_ms" not in base:
        raise ValueError("objective=latency needs latency measurements in the table")
    key = "size_mb" if objective == "size" else "latency_ms"
    layers = list(table)
    options = [sorted(table[layer]) for layer in layers]
    n = math.prod(len(o) for o in options)
    if n <= exact_limit:
        best = closest = None
        for combo in itertools.product(*options):
            a = dict(zip(layers, combo))
            p = predict(table, base, a)
            if budget.met_by(p):
                rank = (p[key], p["accuracy_drop"])
                if best is None or rank < best[0]:
                    best = (rank, a, p)
            viol = sum(budget.excess(p).values())
            if closest is None or (viol, p[key]) < closest[0]:
                closest = ((viol, p[key]), a, p)
        if best is not None:
            return SolveResult(best[1], best[2], True, "exact", n, best[1], best[2])
        return SolveResult(closest[1], closest[2], False, "exact", n, closest[1], closest[2])
    return _greedy(table, base, budget, key)


def _single_moves(table: Table, a: Mapping[str, str]):
    """Every assignment that differs from ``a`` in one layer's dtype."""
    for layer in table:
        for dtype in table[layer]:
            if dtype != a[layer]:
                yield {**a, layer: dtype}


def _greedy(table: Table, base: Mapping[str, float], budget: Budget, key: str) -> SolveResult:
    a = {layer: "fp32" if "fp32" in table[layer] else min(table[layer]) for layer in table}
    p = predict(table, base, a)
    evaluated = 1
    max_drop = budget.max_accuracy_drop if budget.max_accuracy_drop is not None else math.inf
    while True:
        best = None
        for trial in _single_moves(table, a):
            q = predict(table, base, trial)
            evaluated += 1
            gain = p[key] - q[key]
            if gain <= 0 or q["accuracy_drop"] > max_drop:
                continue
            cost = max(q["accuracy_drop"] - p["accuracy_drop"], 0.0) + 1e-3
            if best is None or gain / cost > best[0]:
                best = (gain / cost, trial, q)
        if best is None:
            break
        a, p = best[1], best[2]
    # repair: a limit other than accuracy still exceeded (e.g. a latency cap)
    while not budget.met_by(p):
        excess = sum(budget.excess(p).values())
        best = None
        for trial in _single_moves(table, a):
            q = predict(table, base, trial)
            evaluated += 1
            rank = (sum(budget.excess(q).values()), q[key])
            if rank[0] < excess - 1e-12 and (best is None or rank < best[0]):
                best = (rank, trial, q)
        if best is None:
            break
        a, p = best[1], best[2]
    met = budget.met_by(p)
    return SolveResult(a, p, met, "greedy", evaluated, a, p)


__all__ = ["Budget", "SolveResult", "predict", "solve"]
