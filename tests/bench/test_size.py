"""Storage accounting on REAL torch.ao quantized modules, checked against hand computation.

Bit budget of a per-tensor quantized weight: numel*8 + 64 (fp64 scale) + 64 (int64 zero point).
Per-channel: numel*8 + out_channels*(64 + 64) (fp64 scales + int64 zero points tensors).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Self

import pytest
import torch
from torch import nn
from torch.ao.quantization import (
    DeQuantStub,
    QuantStub,
    convert,
    float_qparams_weight_only_qconfig,
    float_qparams_weight_only_qconfig_4bit,
    fuse_modules,
    get_default_qconfig,
    get_default_qconfig_mapping,
    prepare,
    quantize_dynamic,
)

from quantexp.bench.size import (
    UnsupportedStateError,
    bits_per_parameter,
    path_size_bytes,
    storage_bits,
)

PER_TENSOR_QPARAM_BITS = 64 + 64


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_fp32_linear_is_exactly_32_bits() -> None:
    m = nn.Linear(64, 32)
    rep = storage_bits(m.state_dict())
    assert rep.param_bits == (64 * 32 + 32) * 32
    assert rep.other_bits == 0
    assert rep.n_tensors == 2
    assert rep.per_dtype == {"float32": (64 * 32 + 32) * 4}
    assert bits_per_parameter(m.state_dict(), n_params(m)) == 32.0


def test_dynamic_qint8_linear() -> None:
    fp = nn.Sequential(nn.Linear(64, 32))
    q = quantize_dynamic(fp, {nn.Linear}, dtype=torch.qint8)
    sd = q.state_dict()
    w, _b = sd["0._packed_params._packed_params"]
    assert w.qscheme() == torch.per_tensor_affine  # dynamic default qconfig: per-tensor
    expected = 64 * 32 * 8 + PER_TENSOR_QPARAM_BITS + 32 * 32
    rep = storage_bits(sd)
    assert rep.param_bits == expected == 17536
    # Unused output qparams of the dynamic Linear: fp32 scale + int64 zero point.
    assert rep.other_bits == 32 + 64
    assert set(rep.other_keys) == {"0.scale", "0.zero_point"}
    assert rep.per_dtype == {
        "qint8": 2048,
        "float64": 8,
        "int64": 8 + 8,
        "float32": 128 + 4,
    }
    assert rep.total_bytes == sum(rep.per_dtype.values())
    assert bits_per_parameter(sd, n_params(fp)) == expected / 2080


def test_dynamic_fp16_linear_counts_weight_at_16_bits() -> None:
    fp = nn.Sequential(nn.Linear(64, 32))
    q = quantize_dynamic(fp, {nn.Linear}, dtype=torch.float16)
    sd = q.state_dict()
    # torch hands the fp16-packed weight back as float32; only the dtype sibling tells.
    assert sd["0._packed_params._packed_params"][0].dtype == torch.float32
    assert sd["0._packed_params.dtype"] == torch.float16
    rep = storage_bits(sd)
    assert rep.param_bits == 64 * 32 * 16 + 32 * 32  # fbgemm keeps the bias in fp32
    assert rep.per_dtype["float16"] == 64 * 32 * 2
    bpp = bits_per_parameter(sd, n_params(fp))
    assert bpp == (64 * 32 * 16 + 32 * 32) / 2080
    assert 16.0 < bpp < 16.5


class ConvLinear(nn.Module):
    def __init__(self, eager: bool) -> None:
        super().__init__()
        self.quant = QuantStub() if eager else nn.Identity()
        self.conv = nn.Conv2d(3, 8, 3)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8 * 6 * 6, 10)
        self.dequant = DeQuantStub() if eager else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(
            self.fc(torch.flatten(self.relu(self.conv(self.quant(x))), 1))
        )


# conv: 216 int8 weights + 8 per-channel (fp64 scale, int64 zp) + 8 fp32 biases;
# fc: 2880 int8 weights + 10 per-channel qparams + 10 fp32 biases.
STATIC_PARAM_BITS = (216 * 8 + 8 * (64 + 64) + 8 * 32) + (
    2880 * 8 + 10 * (64 + 64) + 10 * 32
)
STATIC_FP32_PARAMS = 216 + 8 + 2880 + 10


def _check_static(fp: nn.Module, q: nn.Module, input_qparam_keys: set[str]) -> None:
    sd = q.state_dict()
    # The x86 qconfig quantizes weights per output channel.
    assert sd["conv.weight"].qscheme() == torch.per_channel_affine
    assert sd["conv.weight"].q_per_channel_scales().dtype == torch.float64
    assert sd["conv.weight"].q_per_channel_zero_points().dtype == torch.int64
    assert (
        sd["fc._packed_params._packed_params"][0].qscheme() == torch.per_channel_affine
    )
    rep = storage_bits(sd)
    assert rep.param_bits == STATIC_PARAM_BITS == 27648
    # Input qparams and conv/fc output qparams: 3 x (fp32 scale + int64 zero point).
    assert rep.other_bits == 3 * (32 + 64)
    assert set(rep.other_keys) == input_qparam_keys | {
        "conv.scale",
        "conv.zero_point",
        "fc.scale",
        "fc.zero_point",
    }
    assert n_params(fp) == STATIC_FP32_PARAMS
    bpp = bits_per_parameter(sd, n_params(fp))
    assert bpp == STATIC_PARAM_BITS / STATIC_FP32_PARAMS
    assert 8.0 < bpp < 9.0


def test_static_eager_conv_linear() -> None:
    fp = ConvLinear(eager=True).eval()
    m = copy.deepcopy(fp)
    m.qconfig = get_default_qconfig("x86")
    m = fuse_modules(m, [["conv", "relu"]])
    prepared = prepare(m)
    with torch.no_grad():
        for _ in range(3):
            prepared(torch.randn(4, 3, 8, 8))
    _check_static(fp, convert(prepared), {"quant.scale", "quant.zero_point"})


@pytest.mark.slow  # FX tracing imports torch._inductor: ~10 s on a cold process
def test_static_fx_conv_linear() -> None:
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    fp = ConvLinear(eager=False).eval()
    prepared = prepare_fx(
        copy.deepcopy(fp),
        get_default_qconfig_mapping("x86"),
        example_inputs=(torch.randn(1, 3, 8, 8),),
    )
    with torch.no_grad():
        for _ in range(3):
            prepared(torch.randn(4, 3, 8, 8))
    _check_static(
        fp, convert_fx(prepared), {"quant_input_scale_0", "quant_input_zero_point_0"}
    )


def _rnn_expected_bits(fp: nn.Module, weight_bits: int, weight_overhead: int) -> int:
    total = 0
    for name, p in fp.named_parameters():
        if name.split(".")[-1].startswith("weight"):
            total += p.numel() * weight_bits + weight_overhead
        else:
            total += p.numel() * 32
    return total


def test_dynamic_lstm_is_unpacked_and_biases_counted_once() -> None:
    fp = nn.LSTM(16, 8, num_layers=2)
    q = quantize_dynamic(nn.Sequential(fp), {nn.LSTM}, dtype=torch.qint8)
    sd = q.state_dict()
    assert all(isinstance(v, torch.ScriptObject) for v in sd.values())
    rep = storage_bits(sd)
    expected = _rnn_expected_bits(fp, 8, PER_TENSOR_QPARAM_BITS)
    # weights 512+256+256+256 int8 + 4 per-tensor qparams; biases 4 x 32 fp32 (once each).
    assert expected == 1280 * 8 + 4 * 128 + 128 * 32
    assert rep.param_bits == expected
    assert rep.other_bits == 0
    assert rep.n_tensors == 8
    assert bits_per_parameter(sd, n_params(fp)) == expected / 1408


def test_dynamic_fp16_lstm() -> None:
    fp = nn.LSTM(16, 8)
    q = quantize_dynamic(nn.Sequential(fp), {nn.LSTM}, dtype=torch.float16)
    rep = storage_bits(q.state_dict())
    assert rep.param_bits == _rnn_expected_bits(fp, 16, 0) == (512 + 256) * 16 + 64 * 32


def test_dynamic_lstm_cell_packed_weights() -> None:
    fp = nn.LSTMCell(16, 8)
    q = quantize_dynamic(nn.Sequential(fp), {nn.LSTMCell}, dtype=torch.qint8)
    sd = q.state_dict()
    assert set(sd) == {"0._packed_weight_ih", "0._packed_weight_hh"}
    assert storage_bits(sd).param_bits == _rnn_expected_bits(
        fp, 8, PER_TENSOR_QPARAM_BITS
    )


@pytest.mark.parametrize(
    ("qconfig", "data_bytes"),
    [
        (float_qparams_weight_only_qconfig, 10 * 12),
        (float_qparams_weight_only_qconfig_4bit, 10 * 12 // 2),
    ],
)
def test_quantized_embedding_bag(qconfig: object, data_bytes: int) -> None:
    q = quantize_dynamic(
        nn.Sequential(nn.EmbeddingBag(10, 12)), {nn.EmbeddingBag: qconfig}
    )
    rep = storage_bits(q.state_dict())
    # Per-row float qparams: fp32 scale + fp32 zero point for each of the 10 rows.
    assert rep.param_bits == data_bytes * 8 + 10 * (32 + 32)


def test_packed_conv_and_embedding_script_objects() -> None:
    qw = torch.quantize_per_tensor(torch.randn(8, 3, 3, 3), 0.05, 0, torch.qint8)
    conv = torch.ops.quantized.conv2d_prepack(
        qw, torch.randn(8), [1, 1], [0, 0], [1, 1], 1
    )
    w = torch.randn(10, 12)
    obs = float_qparams_weight_only_qconfig.weight()
    obs(w)
    scales, zps = obs.calculate_qparams()
    qe = torch.quantize_per_channel(w, scales, zps.to(torch.float32), 0, torch.quint8)
    emb = torch.ops.quantized.embedding_bag_prepack(qe)
    rep = storage_bits({"c": conv, "e": emb})
    assert rep.param_bits == (216 * 8 + PER_TENSOR_QPARAM_BITS + 8 * 32) + (
        120 * 8 + 10 * 64
    )


def test_other_buffers_go_to_other_bucket() -> None:
    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.bn = nn.BatchNorm1d(4)
            self.register_buffer("position_ids", torch.arange(16).unsqueeze(0))
            self.register_buffer("token_type_ids", torch.zeros(1, 16, dtype=torch.long))

    m = Tiny()
    sd = m.state_dict()
    rep = storage_bits(sd)
    assert rep.param_bits == (16 + 4 + 4 + 4) * 32
    # BN running mean/var fp32, num_batches_tracked int64 scalar, two 16-long int64 buffers.
    assert rep.other_bits == (4 + 4) * 32 + 64 + 2 * 16 * 64
    assert bits_per_parameter(sd, n_params(m)) == 32.0
    # Explicit key sets override the name heuristics.
    rep2 = storage_bits(
        sd, param_keys={"position_ids"}, buffer_keys={"bn.weight", "bn.bias"}
    )
    assert rep2.param_bits == rep.param_bits + 16 * 64 - 8 * 32
    assert rep2.other_bits == rep.other_bits - 16 * 64 + 8 * 32


def test_tied_and_aliased_tensors_count_once() -> None:
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    sd = {
        **{f"emb.{k}": v for k, v in emb.state_dict().items()},
        **{f"head.{k}": v for k, v in head.state_dict().items()},
    }
    assert len(sd) == 2
    rep = storage_bits(sd)
    assert rep.param_bits == 40 * 32 and rep.n_tensors == 1
    # Distinct storages with equal values are both counted.
    rep2 = storage_bits({"a": torch.zeros(5), "b": torch.zeros(5)})
    assert rep2.param_bits == 2 * 5 * 32


class PackedInt4(torch.Tensor):
    """Minimal traceable wrapper subclass (torchao style): logical fp32 shape, packed storage."""

    @staticmethod
    def __new__(
        cls, packed: torch.Tensor, scales: torch.Tensor, shape: tuple[int, ...]
    ) -> Self:
        return torch.Tensor._make_wrapper_subclass(cls, shape, dtype=torch.float32)

    def __init__(
        self, packed: torch.Tensor, scales: torch.Tensor, shape: tuple[int, ...]
    ) -> None:
        self.packed = packed
        self.scales = scales

    def __tensor_flatten__(self) -> tuple[list[str], None]:
        return ["packed", "scales"], None

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise NotImplementedError(func)


def test_wrapper_subclass_counts_inner_tensors() -> None:
    t = PackedInt4(
        torch.zeros(32, dtype=torch.uint8), torch.ones(8, dtype=torch.float16), (8, 8)
    )
    assert t.shape == (8, 8) and t.dtype == torch.float32  # logically 2048 bits
    rep = storage_bits({"w": t})
    assert rep.param_bits == 32 * 8 + 8 * 16
    assert rep.per_dtype == {"uint8": 32, "float16": 16}


def test_unrecognised_entries_raise_with_key_and_type() -> None:
    with pytest.raises(UnsupportedStateError, match=r"blob.*str"):
        storage_bits({"ok": torch.zeros(2), "blob": "hello"})
    with pytest.raises(UnsupportedStateError, match=r"sp.*sparse"):
        storage_bits({"sp": torch.zeros(3, 3).to_sparse()})
    with pytest.raises(UnsupportedStateError, match=r"pk\[0\].*dict"):
        storage_bits({"pk": ({"a": 1},)})
    prev = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = "fbgemm"
        qw = torch.quantize_per_tensor(torch.randn(8, 8), 0.1, 0, torch.qint8)
        sparse_packed = torch.ops.sparse.qlinear_prepack(qw, None, 1, 4)
    finally:
        torch.backends.quantized.engine = prev
    with pytest.raises(
        UnsupportedStateError, match=r"lin\._packed.*sparse\.LinearPackedParamsBase"
    ):
        storage_bits({"lin._packed": sparse_packed})


def test_bits_per_parameter_rejects_zero_params() -> None:
    with pytest.raises(ValueError):
        bits_per_parameter({"w": torch.zeros(2)}, 0)


def test_path_size_bytes(tmp_path: Path) -> None:
    f = tmp_path / "model.bin"
    f.write_bytes(b"x" * 1000)
    assert path_size_bytes(f) == 1000
    pkg = tmp_path / "model.mlpackage"
    (pkg / "Data" / "weights").mkdir(parents=True)
    (pkg / "Manifest.json").write_bytes(b"m" * 10)
    (pkg / "Data" / "weights" / "weight.bin").write_bytes(b"w" * 300)
    assert path_size_bytes(pkg) == 310
    # A link inside the package counts its own size, not the 1000-byte target again.
    link = pkg / "alias"
    os.symlink(f, link)
    assert path_size_bytes(pkg) == 310 + os.lstat(link).st_size
    with pytest.raises(FileNotFoundError):
        path_size_bytes(tmp_path / "missing")
