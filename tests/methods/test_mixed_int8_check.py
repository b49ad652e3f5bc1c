"""method=mixed's measured check against uniform int8 (methods/mixed/int8_check.py).

The models here are real modules timed by the real interleaved harness; their time is
set by construction (each fp32 layer costs 2 ms of sleep, the int8 model 1 ms), so the
measured verdicts are known in advance whatever the host's load: what is tested is the
loop's decisions on real measurements."""

from __future__ import annotations

import time

import torch

from quantexp.methods.mixed.int8_check import check_against_int8, next_move, shown_within, uniform_int8
from quantexp.quant.solver import Budget

# drop (points) of each layer's int8 kernel measured alone; sizes in bytes
TABLE = {
    "conv1": {"fp32": {"drop": 0.0, "size_bytes": 1200}, "int8": {"drop": 0.3, "size_bytes": 300}},
    "conv2": {"fp32": {"drop": 0.0, "size_bytes": 8000}, "int8": {"drop": 0.1, "size_bytes": 2000}},
    "fc": {"fp32": {"drop": 0.0, "size_bytes": 400}, "int8": {"drop": 0.2, "size_bytes": 100},
           "int4": {"drop": 0.9, "size_bytes": 50}},
    "lstm": {"fp32": {"drop": 0.0, "size_bytes": 100}},  # no int8 kernel
}
BASE = {"other_bytes": 0.0}


class Sleeper(torch.nn.Module):
    """Stands for a built mixed model: 2 ms, plus 2 ms per layer left in fp32 (a
    quantize/dequantize boundary that the per-layer kernel times did not see), less 1 ms
    per int4 layer (a kernel faster than int8) - or ``seconds`` as given."""

    def __init__(self, assignment, seconds=None):
        super().__init__()
        self.assignment = dict(assignment)
        dtypes = [d for n, d in assignment.items() if n != "lstm"]
        self.seconds = (seconds if seconds is not None
                        else 0.002 * (1 + dtypes.count("fp32")) - 0.001 * dtypes.count("int4"))

    def forward(self, x):
        time.sleep(self.seconds)
        return x


FAST = {"warmup": 1, "min_rounds": 6, "min_iters": 12, "min_seconds": 0.05, "max_seconds": 5.0}


def check(assignment, budget, seconds=None, **kw):
    builds = []

    def build(a):
        builds.append(dict(a))
        return Sleeper(a, seconds)

    x = torch.zeros(1)
    result = check_against_int8(build, assignment, TABLE, BASE, budget, lambda m: m(x), batch_size=1,
                                timing=FAST, **kw)
    return result, builds


def test_uniform_int8_leaves_layers_without_an_int8_kernel_alone():
    a = {"conv1": "fp32", "conv2": "int8", "fc": "int4", "lstm": "fp32"}
    assert uniform_int8(a, TABLE) == {"conv1": "int8", "conv2": "int8", "fc": "int8", "lstm": "fp32"}


def test_the_cheapest_move_in_accuracy_that_keeps_the_budget():
    a = {"conv1": "fp32", "conv2": "int8", "fc": "fp32", "lstm": "fp32"}
    assert next_move(a, TABLE, BASE, Budget(max_accuracy_drop=1.0))[0] == "fc"  # 0.2 < conv1's 0.3
    assert next_move(a, TABLE, BASE, Budget(max_accuracy_drop=0.35))[0] == "fc"
    assert next_move(a, TABLE, BASE, Budget(max_accuracy_drop=0.25)) is None  # 0.1 + 0.2 > 0.25
    assert next_move({**a, "fc": "int8", "conv1": "int8"}, TABLE, BASE, Budget(max_accuracy_drop=1.0)) is None


def test_a_measured_slower_mixed_model_moves_layers_to_int8_until_it_is_not_slower():
    a = {"conv1": "fp32", "conv2": "int8", "fc": "fp32", "lstm": "fp32"}
    result, builds = check(a, Budget(max_accuracy_drop=1.0))
    # 6 ms vs 2 ms: slower; fc moves (cheapest), 4 ms: still slower; conv1 moves -> uniform int8
    assert result.moves == ["fc", "conv1"]
    assert result.assignment == uniform_int8(a, TABLE) and not result.not_shown_within
    assert result.describe == "the uniform int8 model itself"
    assert builds[0] == uniform_int8(a, TABLE) and builds[1] == a  # the reference first, then the mix
    assert result.model.assignment == result.assignment


def test_the_budget_stops_the_moves_and_says_the_model_is_still_slower():
    a = {"conv1": "fp32", "conv2": "int8", "fc": "fp32", "lstm": "fp32"}
    result, _ = check(a, Budget(max_accuracy_drop=0.35))  # fc may move (0.3), conv1 then may not (0.6)
    assert result.moves == ["fc"] and result.assignment["conv1"] == "fp32"
    assert result.not_shown_within and result.describe.startswith("0.")  # int8 time / mixed time: below 1
    assert result.info()["int8_check.status"].startswith("not shown as fast as uniform int8")


def test_a_mixed_model_within_the_allowed_ratio_is_kept_as_solved():
    a = {"conv1": "fp32", "conv2": "int8", "fc": "int8", "lstm": "fp32"}  # 4 ms vs 2 ms
    result, builds = check(a, Budget(max_accuracy_drop=1.0), max_ratio=3.0)  # up to 3x int8's time allowed
    assert result.moves == [] and result.assignment == a and not result.not_shown_within
    assert len(builds) == 2


def test_a_mixed_model_measured_faster_is_kept():
    a = {"conv1": "int8", "conv2": "int8", "fc": "int4", "lstm": "fp32"}  # 1 ms vs 2 ms
    result, _ = check(a, Budget(max_accuracy_drop=1.0))
    assert result.moves == [] and result.assignment == a and not result.not_shown_within


def test_only_an_interval_wholly_within_the_promise_shows_it_kept():
    from types import SimpleNamespace

    def speed(low, high):
        return SimpleNamespace(ci_low=low, ci_high=high)

    # "no significant difference" is not enough: 0.99x [0.98, 1.00] was a mix that later
    # measured 0.90x of uniform int8
    assert not shown_within(speed(0.98, 1.00), 1.0)
    assert not shown_within(speed(0.90, 0.95), 1.0)
    assert shown_within(speed(1.00, 1.03), 1.0) and shown_within(speed(1.10, 1.20), 1.0)
    # method.max_latency_vs_int8=1.25: up to 25 % more time allowed, so down to 0.8x
    assert shown_within(speed(0.80, 0.85), 1.25) and not shown_within(speed(0.79, 0.85), 1.25)
