"""The low-precision layer modules against fp32 references: the int4 kernel against the
dequantized weights, the emulations the sensitivity analysis uses against the real
modules (the equivalence it relies on), and the quantized embeddings."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from quantexp.bench.size import storage_bits
from quantexp.quant.layer_kernels import (
    TORCH_FLOAT,
    CastWrapper,
    Int4Embedding,
    Int4WeightLinear,
    Int8Embedding,
    emulate_cast,
    emulate_int4_linear,
    fake_quantize_weight,
    int4_quantize,
)


def _bf16_ulp(t: torch.Tensor) -> torch.Tensor:
    """One bf16 rounding step at |t| (8 significant bits)."""
    exponent = torch.floor(torch.log2(t.abs().clamp_min(1e-30)))
    return torch.pow(2.0, exponent - 7)


@pytest.mark.parametrize("shape", [(64, 1568), (384, 384), (32, 1536)])
def test_int4_kernel_matches_the_dequantized_fp32_reference(shape):
    out_f, in_f = shape
    torch.manual_seed(0)
    lin = nn.Linear(in_f, out_f)
    q = Int4WeightLinear(lin)
    assert q.kernel == "tinygemm"  # torch's CPU int4 kernel, not an unpacking fallback
    # 4 bits per weight: the kernel's packed layout holds two weights per byte
    assert q.packed_weight.dtype == torch.uint8 and q.packed_weight.numel() == out_f * in_f // 2
    x = torch.randn(3, 5, in_f)
    y = q(x)
    assert y.shape == (3, 5, out_f) and y.dtype == torch.float32
    # the reference: fp32 product with the dequantized weights (values in [-8, 7] x scale)
    w = fake_quantize_weight(lin.weight, "int4")
    qv, scale = int4_quantize(lin.weight)
    assert int(qv.min()) >= -8 and int(qv.max()) <= 7
    assert torch.equal(w, (qv.float().reshape(out_f, -1, 32) * scale.unsqueeze(2)).reshape(out_f, in_f))
    ref = nn.functional.linear(x, w, lin.bias)
    # the kernel rounds activations and its product to bf16 (2^-8 relative)
    scale_out = ref.abs().amax()
    assert float((y - ref).abs().max()) <= 0.02 * float(scale_out)
    # ... and is exactly that computation, up to fp32 summation order (one bf16 step)
    emu = emulate_int4_linear(x, lin.weight, lin.bias)
    off = (y - emu).abs() > 1.01 * _bf16_ulp(emu - lin.bias) + 1e-6
    assert float(off.float().mean()) < 1e-3
    # really 4-bit: far from the fp32 layer
    assert float((y - lin(x)).abs().max()) > 10 * float((y - emu).abs().max())
    # stored size: 4 bits per weight + a bf16 scale and zero per group of 32 + fp32 bias
    report = storage_bits(q.state_dict())
    assert report.param_bits == out_f * in_f * 4 + (in_f // 32) * out_f * 32 + out_f * 32
    traced = torch.jit.trace(q, (x,))
    assert torch.equal(traced(x[:1]), q(x[:1]))


def test_int4_layers_the_kernel_cannot_take_keep_a_portable_packing():
    lin = nn.Linear(64, 10)  # out_features not a multiple of 16
    q = Int4WeightLinear(lin)
    assert q.kernel == "dequantize"
    x = torch.randn(4, 64)
    assert torch.allclose(q(x), emulate_int4_linear(x, lin.weight, lin.bias, "dequantize"), atol=1e-6)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_cast_emulation_is_the_half_precision_layer(dtype):
    """fp16/bf16 layers are emulated in the sensitivity analysis as fp32 arithmetic on
    values rounded to the dtype (inputs, weights, output): the CPU kernels accumulate
    in fp32 too, so the two agree but for summation order - at most one rounding step
    of the output, on a few elements."""
    torch.manual_seed(0)
    for layer, x in ((nn.Linear(64, 32), torch.randn(200, 64)),
                     (nn.Conv2d(3, 8, 3, padding=1), torch.randn(4, 3, 12, 12))):
        real = CastWrapper(copy.deepcopy(layer), TORCH_FLOAT[dtype])(x)
        emu = emulate_cast(layer, dtype)(x)
        step = (emu.abs() * (2.0 ** -10 if dtype == "fp16" else 2.0 ** -7)).clamp_min(1e-7)
        assert real.dtype == emu.dtype == torch.float32
        assert bool(((real - emu).abs() <= 1.01 * step).all())
        assert float((real != emu).float().mean()) < 0.01


def test_quantized_embeddings_look_up_quantized_rows():
    torch.manual_seed(0)
    emb = nn.Embedding(500, 64)
    ids = torch.randint(0, 500, (3, 7))
    ref = emb(ids)
    for module, bits in ((Int8Embedding(emb), 8), (Int4Embedding(emb), 4)):
        out = module(ids)
        assert out.shape == ref.shape
        # per-row affine quantization: error at most half a step of the row's range
        rows = emb.weight[ids]
        step = (rows.amax(-1, keepdim=True) - rows.amin(-1, keepdim=True)) / (2 ** bits - 1)
        assert bool(((out - ref).abs() <= 0.5 * step + 1e-3).all())
        assert not torch.equal(out, ref)
        # a non-contiguous index tensor (HF's expanded token_type_ids) and another shape, traced
        expanded = torch.zeros(1, 9, dtype=torch.long).expand(2, 9)
        assert module(expanded).shape == (2, 9, 64)
        traced = torch.jit.trace(module, (ids,))
        assert traced(torch.randint(0, 500, (5, 2))).shape == (5, 2, 64)
        report = storage_bits(module.state_dict())
        assert report.param_bits <= 500 * 64 * bits + 500 * 64 + 64  # rows + per-row qparams
