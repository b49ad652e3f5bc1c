"""The solved assignment checked against uniform int8 on measured time, and repaired.

The solver predicts a mixed model's latency by adding per-layer kernel times, each
layer timed alone. A layer kept in fp32 between int8 layers also costs a dequantize
before it and a quantize after it (on its full activation tensor), which no
single-layer timing sees: on the CNN, conv1 and fc2 kept in fp32 were predicted no
slower than uniform int8 and measured 0.92x of it. So, when the method promises "no
slower than uniform int8" (``method.max_latency_vs_int8``) and the solver says the
promise holds, both models are built and timed interleaved (``bench.interleaved``);
until the measurement shows the promise kept (the CI of the speed-up wholly at or
above 1 / max_ratio), the layer not yet in int8 whose int8 kernel costs the least
predicted accuracy (the budget still met) moves to int8, and the pair is timed again.
Each move brings the model closer to uniform int8 itself, so the loop ends.

Why the burden of proof is on the mix (a layer stays out of int8 only when the
measurement shows the model no slower for it), not on the move (a layer moved only
when the mix was significantly slower, the rule before): in five runs on the CNN the
check measured two mixes as "no significant difference" (0.99x [0.98, 1.00] and
1.01x [1.00, 1.01]), and the benchmark, timing the same mix against another build of
uniform int8 minutes later, found them at 0.90x and 0.94x. The ratio of two models
drifts on this host by more than one measurement's interval; a mix not clearly as
fast is not worth that risk when the accuracy budget allows the moves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from quantexp.config import BenchConfig
from quantexp.quant.solver import Budget, Table, predict

MAX_MOVES = 8


@dataclass
class Int8Check:
    assignment: dict[str, str]
    model: Any
    describe: str = ""                 # the last timing: mixed vs uniform int8, "1.02x [0.98, 1.05]"
    not_shown_within: bool = False     # the promise (as fast) not shown by the last timing, no move left
    moves: list[str] = field(default_factory=list)  # layers moved to int8, in order

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"int8_check.speedup_vs_uniform_int8": self.describe,
                               "int8_check.moved_to_int8": ",".join(self.moves)}
        if self.not_shown_within:
            out["int8_check.status"] = ("not shown as fast as uniform int8: no layer can move to int8 "
                                        "within the budget")
        return out


def uniform_int8(assignment: Mapping[str, str], table: Table) -> dict[str, str]:
    """Every layer that has an int8 option in int8; the others as assigned."""
    return {n: "int8" if "int8" in table.get(n, {}) else d for n, d in assignment.items()}


def next_move(assignment: Mapping[str, str], table: Table, base: Mapping[str, float],
              budget: Budget) -> tuple[str, dict[str, str]] | None:
    """The layer (not yet int8) whose move to int8 adds the least predicted accuracy
    drop while the accuracy and size limits still hold; None when there is none."""
    limits = Budget(budget.max_accuracy_drop, budget.max_size_mb, None)  # latency: measured here
    best = None
    for name, dtype in assignment.items():
        if dtype == "int8" or "int8" not in table.get(name, {}):
            continue
        trial = {**assignment, name: "int8"}
        predicted = predict(table, base, trial)
        if limits.met_by(predicted) and (best is None or predicted["accuracy_drop"] < best[0]):
            best = (predicted["accuracy_drop"], name, trial)
    return None if best is None else (best[1], best[2])


def shown_within(speed, max_ratio: float) -> bool:
    """The measurement shows the mix within ``max_ratio`` x uniform int8's time: the CI
    of int8 time / mixed time wholly at or above 1 / max_ratio."""
    return speed.ci_low >= 1.0 / max_ratio


def check_against_int8(build: Callable[[Mapping[str, str]], Any], assignment: dict[str, str], table: Table,
                       base: Mapping[str, float], budget: Budget, run: Callable[[Any], Any], *,
                       batch_size: int, max_ratio: float = 1.0, timing: Mapping[str, float] | None = None,
                       max_moves: int = MAX_MOVES) -> Int8Check:
    """Measure ``build(assignment)`` against ``build(uniform int8)``; move layers to int8
    until the mixed model is shown within ``max_ratio`` x the int8 one's time (the CI of
    int8 time / mixed time wholly at or above 1 / max_ratio). ``run(model)``
    makes one timed call (one batch of ``batch_size``); ``table``: the sensitivity
    table with int8 rows for every layer that has an int8 kernel; ``timing``: the run's
    bench settings (default: bench's defaults, for a method used without a run)."""
    import torch

    from quantexp.bench.interleaved import measure_interleaved

    uniform = uniform_int8(assignment, table)
    reference = build(uniform)
    if assignment == uniform:
        return Int8Check(dict(assignment), reference, "the uniform int8 model itself")
    check = Int8Check(dict(assignment), build(assignment))
    while True:
        with torch.no_grad():
            _, _, speed = measure_interleaved(lambda: run(reference), lambda: run(check.model),
                                              batch_size=batch_size,
                                              **(timing or BenchConfig().interleaved_timing()))
        check.describe = speed.describe()
        check.not_shown_within = not shown_within(speed, max_ratio)
        move = next_move(check.assignment, table, base, budget) if check.not_shown_within else None
        if move is None or len(check.moves) >= max_moves:
            return check
        check.moves.append(move[0])
        check.assignment = move[1]
        if check.assignment == uniform:  # every move made: it is the reference
            check.model, check.describe, check.not_shown_within = reference, "the uniform int8 model itself", False
            return check
        check.model = build(check.assignment)


__all__ = ["Int8Check", "check_against_int8", "next_move", "shown_within", "uniform_int8"]
