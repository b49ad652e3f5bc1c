"""Per-layer error (quantexp.quant.layer_error): SQNR of a planted error, identical
models, and real torch.ao quantized models (dynamic, eager static with a fused
Linear+ReLU whose output is a quantized tensor)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from quantexp.models.base import Split
from quantexp.quant.layer_error import layer_error, layer_error_info, quantized_layer_names, sqnr_db


class Planted(nn.Module):
    """The same Linear, plus a fixed additive error on its output (row i of ``error``
    for the i-th item seen, across batches)."""

    def __init__(self, linear: nn.Linear, error: torch.Tensor) -> None:
        super().__init__()
        self.linear, self.error, self.seen = linear, error, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        start, self.seen = self.seen, self.seen + x.shape[0]
        return self.linear(x) + self.error[start:self.seen]


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


def test_sqnr_db_known_values():
    ref = torch.tensor([3.0, 4.0])            # power 25
    assert sqnr_db(ref, ref + torch.tensor([0.5, 0.0])) == pytest.approx(10 * math.log10(25 / 0.25))
    assert sqnr_db(ref, ref * 0.9) == pytest.approx(20.0)  # noise = 0.1 * signal -> 20 dB
    assert sqnr_db(ref, ref) == math.inf


@pytest.mark.parametrize("target_db", [10.0, 20.0, 35.0])
def test_planted_error_gives_the_planted_sqnr(target_db):
    ref_model = mlp()
    x = torch.randn(24, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref_out = ref_model[0](x)
    noise = torch.randn(ref_out.shape, generator=torch.Generator().manual_seed(2))
    # Scale the noise so that sum(ref^2) / sum(noise^2) = 10^(target/10) exactly.
    noise *= math.sqrt(ref_out.double().pow(2).sum() / noise.double().pow(2).sum()
                       / 10 ** (target_db / 10))
    q_model = copy.deepcopy(ref_model)
    q_model[0] = Planted(q_model[0], noise)
    # Two batches: the statistics accumulate over both.
    rows, unmatched = layer_error(ref_model, q_model, [(x[:12],), (x[12:],)], names=["0"])
    assert unmatched == {}
    (row,) = rows
    assert row["layer"] == "0" and row["type"] == "Planted" and row["elements"] == 24 * 32
    assert row["sqnr_db"] == pytest.approx(target_db, abs=1e-4)
    expected_cos = torch.nn.functional.cosine_similarity(
        ref_out.flatten().double(), (ref_out + noise).flatten().double(), dim=0)
    assert row["cosine"] == pytest.approx(float(expected_cos), abs=1e-6)
    assert row["max_abs_err"] == pytest.approx(float(noise.abs().max()), rel=1e-5)


def test_identical_models_give_infinite_sqnr_and_unit_cosine():
    ref = mlp()
    x = torch.randn(10, 16)
    rows, unmatched = layer_error(ref, copy.deepcopy(ref), [(x,)], names=["0", "2"])
    assert unmatched == {} and len(rows) == 2
    for row in rows:
        assert row["sqnr_db"] == math.inf and row["max_abs_err"] == 0.0
        assert row["cosine"] == pytest.approx(1.0, abs=1e-12)


def test_unmatched_names_are_reported_not_guessed():
    ref = mlp()
    q = copy.deepcopy(ref)
    q.add_module("extra", nn.Linear(8, 8))
    rows, unmatched = layer_error(ref, q, [(torch.randn(4, 16),)], names=["0", "extra", "missing"])
    assert [r["layer"] for r in rows] == ["0"]
    assert set(unmatched) == {"extra", "missing"}


def test_dynamic_int8_model_is_found_and_measured():
    from torch.ao.quantization import quantize_dynamic

    ref = mlp()
    q = quantize_dynamic(copy.deepcopy(ref), {nn.Linear}, dtype=torch.qint8)
    assert quantized_layer_names(q) == ["0", "2"]
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(3))
    cal = Split((x,), torch.zeros(64, dtype=torch.long), torch.arange(64))
    info = layer_error_info(ref, q, cal, max_items=32, batch_size=8)
    rows = info["tables"]["layer_error"]
    assert info["layer_error_items"] == 32 and [r["layer"] for r in rows] == ["0", "2"]
    # int8 weights and activations: tens of dB, far from identical and far from noise.
    assert all(25 < r["sqnr_db"] < 80 and r["cosine"] > 0.99 for r in rows)
    assert info["layer_error_worst_layer"] in {"0", "2"}
    assert info["layer_error_min_sqnr_db"] == min(r["sqnr_db"] for r in rows)


class StubbedMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from torch.ao.quantization import DeQuantStub, QuantStub

        self.quant, self.dequant = QuantStub(), DeQuantStub()
        self.fc1, self.relu, self.fc2 = nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.fc2(self.relu(self.fc1(self.quant(x)))))


def test_static_fused_linear_relu_is_compared_after_relu():
    from torch.ao.quantization import (
        convert,
        fuse_modules,
        get_default_qconfig,
        prepare,
    )

    torch.manual_seed(0)
    ref = StubbedMLP().eval()
    q = fuse_modules(copy.deepcopy(ref), [["fc1", "relu"]])
    q.qconfig = get_default_qconfig("x86")
    q = prepare(q)
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        q(x)
    q = convert(q)
    assert quantized_layer_names(q) == ["fc1", "fc2"]  # stubs are plumbing, not layers
    rows, unmatched = layer_error(ref, q, [(x,)])
    assert unmatched == {}
    by_layer = {r["layer"]: r for r in rows}
    assert by_layer["fc1"]["type"] == "LinearReLU" and by_layer["fc1"]["compared"] == "relu(output)"
    assert by_layer["fc2"]["compared"] == "output"
    # Compared with the pre-ReLU fp32 output, the negative half would be pure error.
    assert by_layer["fc1"]["sqnr_db"] > 25 and by_layer["fc2"]["sqnr_db"] > 20


def test_no_calibration_is_reported():
    assert layer_error_info(mlp(), mlp(), None) == {"layer_error": "not measured: no calibration inputs"}
