"""Mixed precision: Hutchinson traces, per-layer sensitivity with a planted sensitive
layer, the mixed model's real per-layer dtypes, the budget solver, Pareto maths."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from quantexp.analysis.pareto import best_under, hypervolume, pareto_front
from quantexp.config import ConfigError
from quantexp.models.base import ModelBundle, Split
from quantexp.quant.hessian import hutchinson_trace
from quantexp.quant.mixed_layers import assignable_layers, build_mixed, layer_dtypes
from quantexp.quant.solver import Budget, predict, solve


def test_hutchinson_matches_exact_trace_of_a_quadratic():
    torch.manual_seed(0)
    m = torch.randn(6, 6, dtype=torch.float64)
    a = m @ m.T + torch.diag(torch.arange(1.0, 7.0, dtype=torch.float64))  # SPD, known trace
    b = torch.randn(4, 4, dtype=torch.float64)
    b = b + b.T
    x = torch.randn(6, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, dtype=torch.float64, requires_grad=True)
    # f = 1/2 x^T A x + 1/2 y^T B y + (x[:4] . y)^2 ; Hessian blocks: A + 2 y y^T on x[:4], B + 2 x x^T on y
    def loss():
        return 0.5 * x @ a @ x + 0.5 * y @ b @ y + (x[:4] @ y) ** 2
    est = hutchinson_trace(loss, {"x": [x], "y": [y]}, n_samples=400, seed=1)
    exact_x = float(torch.trace(a) + 2 * (y[:4] ** 2).sum())
    exact_y = float(torch.trace(b) + 2 * (x[:4] ** 2).sum())
    for name, exact in (("x", exact_x), ("y", exact_y)):
        assert abs(est[name].trace - exact) <= 4 * est[name].std_err + 1e-9, (name, est[name], exact)
        assert est[name].n_params == (6 if name == "x" else 4)
    # a diagonal Hessian has zero variance under Rademacher probes: the estimate is exact.
    z = torch.randn(5, dtype=torch.float64, requires_grad=True)
    d = torch.arange(1.0, 6.0, dtype=torch.float64)
    exact = hutchinson_trace(lambda: 0.5 * (d * z * z).sum(), {"z": [z]}, n_samples=3)
    assert exact["z"].trace == pytest.approx(15.0) and exact["z"].std_err == pytest.approx(0.0)


def test_hutchinson_stops_early_once_the_standard_error_is_small():
    z = torch.randn(5, dtype=torch.float64, requires_grad=True)
    d = torch.arange(1.0, 6.0, dtype=torch.float64)
    # zero variance (diagonal Hessian): stops at min_samples
    est = hutchinson_trace(lambda: 0.5 * (d * z * z).sum(), {"z": [z]}, n_samples=100, rel_tol=0.1,
                           min_samples=4)
    assert est["z"].n_samples == 4 and est["z"].trace == pytest.approx(15.0)
    # a dense Hessian: stops once stderr <= 10% of the trace, well before the cap
    torch.manual_seed(0)
    m = torch.randn(30, 30, dtype=torch.float64)
    a = m @ m.T
    x = torch.randn(30, dtype=torch.float64, requires_grad=True)
    est = hutchinson_trace(lambda: 0.5 * x @ a @ x, {"x": [x]}, n_samples=400, rel_tol=0.1, seed=2)
    assert 8 <= est["x"].n_samples < 400
    assert est["x"].std_err <= 0.1 * abs(est["x"].trace)
    assert abs(est["x"].trace - float(torch.trace(a))) <= 4 * est["x"].std_err



def test_hutchinson_weighted_stop_settles_a_near_zero_trace():
    """An indefinite block whose trace is ~0 has no relative error to converge to: alone it
    runs every probe; weighted by its share of the score scale it stops early."""
    torch.manual_seed(0)
    m = torch.randn(20, 20, dtype=torch.float64)
    big = m @ m.T  # trace ~400, settles within 10% after a few dozen probes
    sym = torch.randn(20, 20, dtype=torch.float64)
    sym = sym + sym.T
    sym = sym - torch.eye(20, dtype=torch.float64) * torch.trace(sym) / 20  # trace exactly 0, dense
    x = torch.randn(20, dtype=torch.float64, requires_grad=True)
    y = torch.randn(20, dtype=torch.float64, requires_grad=True)

    def loss():
        return 0.5 * x @ big @ x + 0.5 * y @ sym @ y
    groups = {"x": [x], "y": [y]}
    plain = hutchinson_trace(loss, groups, n_samples=200, rel_tol=0.1, seed=3)
    assert plain["y"].n_samples == 200  # the zero trace never settles relatively
    weighted = hutchinson_trace(loss, groups, n_samples=200, rel_tol=0.1, seed=3, weights={"x": 1.0, "y": 1.0})
    assert weighted["x"].n_samples < 200
    assert weighted["x"].std_err <= 0.1 * abs(weighted["x"].trace)
    assert weighted["y"].std_err <= 0.1 * abs(weighted["x"].trace)

class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc_a, self.r1 = nn.Linear(8, 32), nn.ReLU()
        self.fc_b, self.r2 = nn.Linear(32, 32), nn.ReLU()
        self.fc_c = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc_c(self.r2(self.fc_b(self.r1(self.fc_a(x)))))


def _planted_bundle() -> ModelBundle:
    torch.manual_seed(0)
    n = 512
    x = torch.randn(n, 8)
    x[:, 7] = 0.0  # feature 7 is always zero in the data
    teacher = torch.randn(8, 4)
    labels = (x @ teacher).argmax(1)
    model = MLP()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), labels).backward()
        opt.step()
    with torch.no_grad():
        # The planted layer: a huge weight on the always-zero input changes nothing in
        # fp32, but it sets fc_a's per-channel int8 scale, so every other weight rounds to 0.
        model.fc_a.weight[:, 7] = 1000.0
    model.eval()
    split = Split((x,), labels, torch.arange(n))
    return ModelBundle(model, "mlp", "mlp", split, split, 4, ["x"], load_time_s=0.0)


def test_sensitivity_ranks_the_planted_layer_first():
    from quantexp.quant.sensitivity import run_sensitivity

    bundle = _planted_bundle()
    analysis = bundle.train.subset(torch.arange(128))
    report = run_sensitivity(bundle, analysis, choices=["fp16", "int8"], hessian_samples=3,
                             batch_size=128, plot=True)
    assert report.ranking("empirical")[0] == "fc_a"
    assert report.ranking("weight_only")[0] == "fc_a"
    assert report.ranking("hessian")[0] == "fc_a"
    assert report.agreement["weight_only_top1_agree"] == 1.0
    assert report.agreement["top1_agree"] == 1.0 and -1.0 <= report.agreement["spearman_rho"] <= 1.0
    rows = {(r["layer"], r["dtype"]): r for r in report.rows}
    assert rows[("fc_a", "int8")]["accuracy_drop_points"] > 20.0
    assert rows[("fc_a", "int8")]["sqnr_db"] < rows[("fc_b", "int8")]["sqnr_db"]
    assert rows[("fc_a", "int8")]["kl_div"] > rows[("fc_b", "int8")]["kl_div"] >= 0.0
    assert rows[("fc_a", "int8")]["weight_only_kl"] > rows[("fc_b", "int8")]["weight_only_kl"]
    assert rows[("fc_a", "fp16")]["accuracy_drop_points"] < 2.0  # 1000 is exact in fp16
    tables = report.tables()
    assert {"sensitivity", "hessian_sensitivity", "sensitivity_ranking"} <= set(tables)
    assert report.figure
    with open(report.figure, "rb") as fh:
        assert fh.read(4) == b"\x89PNG"
    # the solver, fed the measured table, keeps the planted layer out of int8
    result = solve(report.candidates, report.base, Budget(max_accuracy_drop=2.0), objective="size")
    assert result.met and result.assignment["fc_a"] != "int8"


def _tiny_models():
    from quantexp.models.cnn.family import SmallCNN
    from quantexp.models.rnn.family import LSTMClassifier

    torch.manual_seed(0)
    cnn = SmallCNN([4, 32], 32).eval()  # fc1: 32*7*7 inputs, a multiple of the int4 group
    lstm = LSTMClassifier(28, 16).eval()
    return cnn, lstm


def test_mixed_model_runs_each_layer_in_its_assigned_dtype():
    cnn, lstm = _tiny_models()
    x = torch.randn(48, 1, 28, 28)
    cal = Split((x,), torch.zeros(48, dtype=torch.long), torch.arange(48))
    assignment = {"conv1": "int8", "conv2": "fp16", "fc1": "int4", "fc2": "bf16"}
    mixed = build_mixed(cnn, assignment, cal, batch_size=16)
    kernel = {"int8": "quint8", "fp16": "float16", "bf16": "bfloat16", "int4": "float32", "fp32": "float32"}
    rows = layer_dtypes(mixed, assignable_layers(cnn), (x[:2],))
    assert [r["layer"] for r in rows] == list(assignment)
    for row in rows:
        assert row["runs_in"] == assignment[row["layer"]]
        assert row["kernel_input_dtype"] == kernel[assignment[row["layer"]]]
    out = mixed(x[:4])
    ref = cnn(x[:4])
    assert out.dtype == torch.float32 and out.shape == ref.shape and torch.isfinite(out).all()
    assert not torch.equal(out, ref)  # really quantized
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.5
    # the original model is untouched
    assert type(cnn.conv1) is nn.Conv2d and cnn.fc2.weight.dtype == torch.float32
    # it survives the harness' export (TorchScript trace, save, load)
    traced = torch.jit.trace(mixed, (x[:2],), check_trace=False)
    assert torch.allclose(traced(x[:4]), out, atol=1e-4)

    rows_in = torch.randn(16, 28, 28)
    cal = Split((rows_in,), torch.zeros(16, dtype=torch.long), torch.arange(16))
    for dtype in ("int8", "fp16", "bf16"):
        m = build_mixed(lstm, {"lstm": dtype, "fc": "int8"}, cal, batch_size=8)
        r = {row["layer"]: row for row in layer_dtypes(m, ["lstm", "fc"], (rows_in[:2],))}
        assert r["lstm"]["runs_in"] == dtype and r["fc"]["runs_in"] == "int8"
        assert torch.isfinite(m(rows_in[:3])).all()


def test_static_int8_layers_never_keep_a_saturating_kernel():
    """x86 int8 kernels summing u8*s8 pairs in 16 bits saturate with 8-bit activations
    on large same-sign weights and inputs at the top of their range (this host: no
    VNNI). build_mixed(reduce_range=False) checks each static layer against exact int8
    arithmetic and rebuilds a saturating one with 7-bit activations."""
    from quantexp.quant.mixed_layers import saturating_layers

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 8 * 8, 3)

        def forward(self, x):
            return self.fc(torch.flatten(self.conv(x), 1))

    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        net.conv.weight.copy_(torch.rand(4, 1, 3, 3) * 0.5 + 0.5)
    x = (torch.rand(64, 1, 8, 8) > 0.3).float() * 3.0 - 0.4  # mostly at the maximum
    cal = Split((x,), torch.zeros(64, dtype=torch.long), torch.arange(64))
    report: dict = {}
    built = build_mixed(net, {"conv": "int8", "fc": "int8"}, cal, reduce_range=False, batch_size=32,
                        report=report)
    assert saturating_layers(built, ["conv", "fc"], (x[:32],)) == {}
    for name in report["reduce_range_layers"]:  # rebuilt with 7-bit activations
        assert built.get_submodule(name).quant.zero_point <= 127
    with torch.no_grad():
        ref = net(x)
        assert float((built(x) - ref).abs().max()) < 0.05 * float(ref.abs().max())
    if torch.backends.quantized.engine in ("x86", "fbgemm") and not _has_vnni():
        assert "conv" in report["reduce_range_layers"]


def _has_vnni() -> bool:
    from quantexp.hardware.cpu import read_cpu_info

    return read_cpu_info().has_vnni


def test_bad_assignment_names_the_valid_choices():
    cnn, _ = _tiny_models()
    with pytest.raises(ConfigError, match=r"unknown layer name\(s\) in method.assignment: fc9; "
                                          r"valid layer names: conv1, conv2, fc1, fc2"):
        build_mixed(cnn, {"fc9": "int8"}, None)
    with pytest.raises(ConfigError, match="valid dtypes for conv1: fp32, fp16, bf16, int8"):
        build_mixed(cnn, {"conv1": "int4"}, None)


TABLE = {  # hand-made: layer -> dtype -> measured single-layer drop / size
    "a": {"fp32": {"drop": 0.0, "size_bytes": 4000}, "int8": {"drop": 0.2, "size_bytes": 1000},
          "int4": {"drop": 3.0, "size_bytes": 500}},
    "b": {"fp32": {"drop": 0.0, "size_bytes": 8000}, "fp16": {"drop": 0.1, "size_bytes": 4000},
          "int8": {"drop": 2.5, "size_bytes": 2000}},
    "c": {"fp32": {"drop": 0.0, "size_bytes": 2000}, "int8": {"drop": 0.5, "size_bytes": 500}},
}
BASE = {"other_bytes": 100.0}


@pytest.mark.parametrize("limit", [0, None])
def test_solver_meets_a_budget_on_a_hand_made_table(limit):
    kwargs = {} if limit is None else {"exact_limit": limit}  # 0: force the greedy solver
    result = solve(TABLE, BASE, Budget(max_accuracy_drop=1.0), "size", **kwargs)
    assert result.met and result.predicted["accuracy_drop"] <= 1.0
    # the optimum: a=int8, b=fp16, c=int8 (drop 0.8, 5.6 kB); anything smaller breaks the budget
    assert result.assignment == {"a": "int8", "b": "fp16", "c": "int8"}
    assert result.predicted["size_mb"] == pytest.approx((100 + 1000 + 4000 + 500) / 1e6)
    assert result.solver == ("greedy" if limit == 0 else "exact")
    both = solve(TABLE, BASE, Budget(max_accuracy_drop=3.5, max_size_mb=0.0045), "size", **kwargs)
    assert both.met and both.assignment == {"a": "int8", "b": "int8", "c": "int8"}  # 3.2 pts, 3.6 kB



def test_latency_cap_at_uniform_int8_yields_to_the_accuracy_budget():
    """Capped at the uniform int8 model's predicted latency when some assignment meets
    both; when the accuracy budget needs a layer int8 cannot keep, the fastest assignment
    that meets the budget, said so."""
    from quantexp.methods.mixed.method import solve_capped, uniform_int8_latency

    table = {"a": {"fp32": {"drop": 0.0, "size_bytes": 4000, "latency_delta_ms": 0.0},
                   "int8": {"drop": 0.2, "size_bytes": 1000, "latency_delta_ms": -2.0},
                   "int4": {"drop": 0.3, "size_bytes": 500, "latency_delta_ms": -1.0}},
             "b": {"fp32": {"drop": 0.0, "size_bytes": 8000, "latency_delta_ms": 0.0},
                   "int8": {"drop": 2.5, "size_bytes": 2000, "latency_delta_ms": -3.0},
                   "int4": {"drop": 0.4, "size_bytes": 1000, "latency_delta_ms": -3.5}}}
    base = {"other_bytes": 0.0, "latency_ms": 10.0}
    kernel_ms = {"a": {"fp32": 4.0, "int8": 2.0, "int4": 3.0}, "b": {"fp32": 5.0, "int8": 2.0, "int4": 1.5}}
    cap = uniform_int8_latency(base, kernel_ms, ["a", "b"])
    assert cap == 5.0
    # size objective alone would take a=int4 (smaller, slower than int8): the cap keeps a=int8
    result, status = solve_capped(table, base, Budget(max_accuracy_drop=1.0), cap, "size")
    assert status == "met" and result.assignment == {"a": "int8", "b": "int4"}
    assert result.predicted["latency_ms"] <= cap
    # b's int4 removed: b must stay fp32 (int8 loses 2.5 points), so nothing is as fast as int8
    slow = {**table, "b": {k: v for k, v in table["b"].items() if k != "int4"}}
    result, status = solve_capped(slow, base, Budget(max_accuracy_drop=1.0), cap, "size")
    assert result.met and status.startswith("not met") and result.assignment == {"a": "int8", "b": "fp32"}
    result, status = solve_capped(slow, base, Budget(max_accuracy_drop=1.0), None, "size")
    assert status == "" and result.met
    # ... and within 1% of the fastest, the smallest: a=int4 costs 0.04 ms more on ~8 ms, half the bytes
    near = {**slow, "a": {**slow["a"], "int4": {**slow["a"]["int4"], "latency_delta_ms": -1.96}}}
    result, status = solve_capped(near, base, Budget(max_accuracy_drop=1.0), cap, "size")
    assert status.startswith("not met") and result.assignment == {"a": "int4", "b": "fp32"}

def test_solver_reports_the_closest_when_no_assignment_meets_the_budget():
    result = solve(TABLE, BASE, Budget(max_accuracy_drop=0.5, max_size_mb=0.002), "size")
    assert not result.met
    assert result.predicted == predict(TABLE, BASE, result.closest)
    assert "predicted" in result.describe_closest() and "a=" in result.describe_closest()
    assert str(Budget(max_accuracy_drop=0.5, max_size_mb=0.002)) == "max_accuracy_drop=0.5, max_size_mb=0.002"


def test_pareto_front_and_hypervolume():
    pts = [(0.0, 4.0), (1.0, 2.0), (2.0, 1.0), (2.0, 3.0), (3.0, 3.0)]
    assert pareto_front(pts, ["minimize", "minimize"]) == [0, 1, 2]
    # area dominated within ref (4, 5): 4*1 + 3*2 + 2*1 = 12
    assert hypervolume(pts, ["minimize", "minimize"], (4.0, 5.0)) == pytest.approx(12.0)
    # maximising the first objective is the mirror image
    mirrored = [(-a, b) for a, b in pts]
    assert hypervolume(mirrored, ["maximize", "minimize"], (-4.0, 5.0)) == pytest.approx(12.0)
    assert hypervolume([(5.0, 5.0)], ["minimize", "minimize"], (4.0, 5.0)) == 0.0
    assert best_under(pts, 0, ["minimize", "minimize"], {1: 2.0}) == 1
    assert best_under(pts, 0, ["minimize", "minimize"], {1: 0.5}) is None
    assert math.isclose(hypervolume([(1, 1, 1)], ["minimize"] * 3, (2, 2, 2)), 1.0)


def test_int4_linear_packs_two_weights_per_byte_and_matches_fake_quant():
    from quantexp.quant.mixed_layers import Int4WeightLinear
    from quantexp.quant.sensitivity import fake_quantize_weight

    torch.manual_seed(0)
    lin = nn.Linear(64, 8)
    q = Int4WeightLinear(lin)
    assert q.packed_weight.dtype == torch.uint8 and q.packed_weight.shape == (8, 32) and q.scale.shape == (8, 2)
    expected = fake_quantize_weight(lin.weight, "int4")
    assert torch.allclose(q.weight_fp32(), expected, atol=1e-6)
    x = torch.randn(3, 64)
    assert torch.allclose(q(x), nn.functional.linear(x, expected, lin.bias), atol=1e-5)
    assert not torch.allclose(q.weight_fp32(), lin.weight)  # really 4-bit (16 levels per group)
    assert len(torch.unique(q.weight_fp32()[0, :32] / q.scale[0, 0]).round()) <= 16
    # the size report counts the packed weights: 4 bits + a 32-bit scale per 32, fp32 bias
    from quantexp.bench.size import bits_per_parameter

    bits = bits_per_parameter(q.state_dict(), 64 * 8 + 8)
    assert bits == pytest.approx((64 * 8 * 4 + 16 * 32 + 8 * 32) / (64 * 8 + 8))


def test_rank_agreement_matches_scipy():
    from scipy.stats import kendalltau, spearmanr

    from quantexp.quant.sensitivity import rank_agreement

    a, b = ["w", "x", "y", "z", "v"], ["x", "w", "z", "v", "y"]
    got = rank_agreement(a, b)
    pos_b = [b.index(n) for n in a]
    assert got["spearman_rho"] == pytest.approx(spearmanr(range(5), pos_b).statistic)
    assert got["kendall_tau"] == pytest.approx(kendalltau(range(5), pos_b).statistic)
    assert got["top1_agree"] == 0.0 and rank_agreement(a, a)["spearman_rho"] == 1.0


def test_mixed_config_refuses_what_it_cannot_do():
    from quantexp.config import BudgetConfig, DType
    from quantexp.methods.mixed.config import MixedPrecisionConfig, MixedStrategy

    with pytest.raises(ConfigError, match="method.strategy=auto needs a budget"):
        MixedPrecisionConfig(strategy=MixedStrategy.auto).validate()
    with pytest.raises(ConfigError, match="cannot assign nf4; valid dtypes: fp32, fp16, bf16, int8, int4"):
        MixedPrecisionConfig(assignment={"fc1": DType.nf4}).validate()
    with pytest.raises(ConfigError, match="method.budget.max_size_mb must be >= 0"):
        MixedPrecisionConfig(strategy=MixedStrategy.auto, budget=BudgetConfig(max_size_mb=-1.0)).validate()
    MixedPrecisionConfig(strategy=MixedStrategy.auto, budget=BudgetConfig(max_accuracy_drop=1.0)).validate()
    with pytest.raises(ConfigError, match="method.hessian_tol must be > 0 or null"):
        MixedPrecisionConfig(hessian_tol=0.0).validate()
    with pytest.raises(ConfigError, match="method.sensitivity_items must be >= 1 or null"):
        MixedPrecisionConfig(sensitivity_items=0).validate()


def test_a_first_search_creates_the_folder_of_its_sqlite_study(tmp_path):
    """SQLite creates the file, not its folder: a first ``+search=mixed_precision`` run
    (no ``optuna/`` yet) failed with 'unable to open database file'."""
    from quantexp.search import remaining_trials

    storage = f"sqlite:///{tmp_path}/optuna/study.db"
    assert remaining_trials(storage, "fresh", 5) == 5
    assert (tmp_path / "optuna").is_dir()
