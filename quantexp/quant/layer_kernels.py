"""One layer in a low-precision dtype, as the module that really runs it on a CPU.

- ``CastWrapper`` (fp16 / bf16): weights cast, float inputs cast in, outputs cast back
  to fp32. Fast only where the ISA has half-precision arithmetic (AVX512-FP16,
  AVX512-BF16, AMX); on AVX2 torch falls back to slow conversion loops.
- ``Int4WeightLinear`` (int4 Linear weights, one scale per group of 32 inputs): runs
  torch's CPU int4 kernel (``torch.ops.aten._weight_int4pack_mm_for_cpu``, "tinygemm",
  the kernel torchao's ``Int4OpaqueTensor`` calls) on bf16 activations, because on
  x86 only its bf16 path is vectorised (AVX2 and AVX512; fp32 activations take a
  scalar loop: 293 ms against 2 ms for fp32 on a 1024x384x384 product here). Its
  packed layout is the packing host's (torch packs differently for AVX2 and AVX512
  builds): load an int4 artifact on a CPU of the same kind. Layers the kernel cannot
  take (out_features not a multiple of 16) keep a portable nibble packing that is
  dequantized to fp32 in every forward pass.
- ``Int8Embedding`` / ``Int4Embedding``: row-wise int8 (fbgemm ``embedding_byte``
  through ``torch.ao.nn.quantized.Embedding``) and int4 (fbgemm's 4-bit embedding bag
  with one index per bag: torch 2.13's quint4x2 ``nnq.Embedding`` returns rows of the
  wrong width) lookups; a lookup costs the same in any dtype.

``fake_quantize_weight`` gives the values each dtype stores, in fp32 (the HAWQ
perturbation, and the emulation the sensitivity analysis uses); ``emulate_int4_linear``
and ``emulate_cast`` reproduce the int4 kernel and the fp16/bf16 layers in fp32
arithmetic (tests/quant/test_layer_kernels.py states the equivalence).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

INT4_GROUP = 32
TORCH_FLOAT = {"fp16": torch.float16, "bf16": torch.bfloat16}


def cast_tree(x: Any, dtype: torch.dtype) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(dtype) if x.is_floating_point() else x
    if isinstance(x, tuple):
        return tuple(cast_tree(v, dtype) for v in x)
    if isinstance(x, list):
        return [cast_tree(v, dtype) for v in x]
    return x


class CastWrapper(nn.Module):
    """Runs ``module`` in a float dtype: inputs cast in, outputs cast back to fp32."""

    def __init__(self, module: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.module = module.to(dtype)
        self.dtype_name = {torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
        self._dtype = dtype

    def forward(self, *args):
        out = self.module(*cast_tree(args, self._dtype))
        return cast_tree(out, torch.float32)


# ------------------------------------------------------------------ int4 Linear
def int4_quantize(w: torch.Tensor, group: int = INT4_GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int4 per group of ``group`` inputs: (q in [-8, 7] as int8 [out, in],
    scale [out, in / group]). The scale is rounded to bf16 first, as the kernel stores
    it, so that q * scale is exactly what the kernel multiplies with."""
    w = w.detach().float()
    out_f, in_f = w.shape
    groups = w.reshape(out_f, in_f // group, group)
    scale = (groups.abs().amax(dim=2, keepdim=True).clamp_min(1e-12) / 7).to(torch.bfloat16).float()
    q = torch.round(groups / scale).clamp(-8, 7)
    return q.reshape(out_f, in_f).to(torch.int8), scale.reshape(out_f, in_f // group)


def tinygemm_supported(out_features: int, in_features: int, group: int = INT4_GROUP) -> bool:
    """Shapes torch's CPU int4 kernel takes (it checks N % 16 and K % group)."""
    return (hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and out_features % 16 == 0
            and in_features % group == 0 and group in (32, 64, 128, 256))


class Int4WeightLinear(nn.Module):
    """nn.Linear with int4 weights (group-wise bf16 scales): torch's int4 CPU kernel on
    bf16 activations where the shape allows (``kernel == "tinygemm"``), else a
    portable nibble packing dequantized per call (``kernel == "dequantize"``)."""

    def __init__(self, linear: nn.Linear, group: int = INT4_GROUP):
        super().__init__()
        out_f, in_f = linear.weight.shape
        if in_f % group:
            raise ValueError(f"int4 needs in_features divisible by {group}, got {in_f}")
        q, scale = int4_quantize(linear.weight, group)
        unsigned = (q.to(torch.int32) + 8).contiguous()  # 0..15
        self.kernel = "tinygemm" if tinygemm_supported(out_f, in_f, group) else "dequantize"
        # "weight" in the name: the size report counts integer tensors as stored weights
        # only when named so.
        if self.kernel == "tinygemm":
            self.register_buffer("packed_weight",
                                 torch.ops.aten._convert_weight_to_int4pack_for_cpu(unsigned, 1))
            # [in / group, out, 2]: (scale, zero) with w = (u - 8) * scale + zero, zero = 0
            sz = torch.stack((scale.t(), torch.zeros_like(scale.t())), dim=-1)
            self.register_buffer("scale_and_zero", sz.to(torch.bfloat16).contiguous())
        else:
            u = unsigned.to(torch.int16)
            self.register_buffer("packed_weight", (u[:, 0::2] | (u[:, 1::2] << 4)).to(torch.uint8))
            self.register_buffer("scale", scale)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(),
                                                                   requires_grad=False)
        self.in_features, self.out_features, self.group = in_f, out_f, group

    def weight_fp32(self) -> torch.Tensor:
        """The dequantized weight (portable packing only; the kernel's layout is opaque)."""
        if self.kernel != "dequantize":
            raise RuntimeError("the tinygemm layout is opaque: use fake_quantize_weight(weight, 'int4')")
        p = self.packed_weight.to(torch.int16)
        q = torch.stack((p & 15, p >> 4), dim=2).reshape(self.out_features, self.in_features) - 8
        groups = q.to(torch.float32).reshape(self.out_features, -1, self.group)
        return (groups * self.scale.unsqueeze(2)).reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "dequantize":
            return F.linear(x, self.weight_fp32(), self.bias)
        shape = x.shape
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed_weight, self.group,
                                                        self.scale_and_zero).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)


def emulate_int4_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        kernel: str = "tinygemm") -> torch.Tensor:
    """``Int4WeightLinear`` in fp32 arithmetic: the tinygemm kernel multiplies bf16
    activations by the exactly dequantized weights, accumulates in fp32 and rounds the
    product to bf16 before the fp32 bias; the portable path is fp32 throughout."""
    w = fake_quantize_weight(weight, "int4")
    if kernel == "dequantize":
        return F.linear(x, w, bias)
    y = F.linear(x.to(torch.bfloat16).float(), w).to(torch.bfloat16).float()
    return y if bias is None else y + bias.float()


def emulate_cast(module: nn.Module, dtype: str):
    """A forward function computing ``module`` the way ``CastWrapper`` does, in fp32:
    inputs, weights and outputs rounded to ``dtype``, products summed in fp32 (what the
    half-precision CPU kernels do; they differ only in summation order)."""
    target = TORCH_FLOAT[dtype]
    rounded = copy.deepcopy(module)
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.to(target).float())

    def forward(*args):
        out = rounded(*(cast_tree(cast_tree(args, target), torch.float32)))
        return cast_tree(cast_tree(out, target), torch.float32)
    return forward


# ------------------------------------------------------------------ embeddings
class Int8Embedding(nn.Module):
    """Row-wise int8 embedding (per-row fp32 scale and offset): fbgemm's
    ``embedding_byte`` through ``torch.ao.nn.quantized.Embedding``, which needs
    contiguous indices (HF encoders pass an expanded ``token_type_ids`` buffer)."""

    def __init__(self, embedding: nn.Embedding):
        super().__init__()
        import torch.ao.nn.quantized as nnq
        from torch.ao.quantization import float_qparams_weight_only_qconfig

        source = copy.deepcopy(embedding).float()
        source.qconfig = float_qparams_weight_only_qconfig
        self.embedding = nnq.Embedding.from_float(source)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(ids.contiguous())


class Int4Embedding(nn.Module):
    """Row-wise int4 embedding (per-row fp16 scale and offset) on fbgemm's 4-bit
    embedding-bag kernel, one index per bag."""

    def __init__(self, embedding: nn.Embedding):
        super().__init__()
        import torch.ao.nn.quantized as nnq
        from torch.ao.quantization import float_qparams_weight_only_qconfig_4bit

        bag = nn.EmbeddingBag(embedding.num_embeddings, embedding.embedding_dim, mode="sum")
        bag.weight = nn.Parameter(embedding.weight.detach().float().clone(), requires_grad=False)
        bag.qconfig = float_qparams_weight_only_qconfig_4bit
        self.bag = nnq.EmbeddingBag.from_float(bag)
        self.embedding_dim = embedding.embedding_dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1).contiguous()
        offsets = torch.arange(flat.shape[0], dtype=flat.dtype, device=flat.device)
        return self.bag(flat, offsets).reshape(*ids.shape, self.embedding_dim)


# ------------------------------------------------------------------ fake quantization
def fake_quantize_weight(w: torch.Tensor, dtype: str) -> torch.Tensor:
    """The values ``dtype``'s weight storage gives ``w``, in fp32 (Linear/Conv: int8 per
    output channel, symmetric; int4 per group of 32 inputs, bf16 scales)."""
    w = w.detach().float()
    if dtype == "fp32":
        return w
    if dtype in TORCH_FLOAT:
        return w.to(TORCH_FLOAT[dtype]).float()
    rows = w.reshape(w.shape[0], -1)
    if dtype == "int8":
        scale = rows.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
        return (torch.round(rows / scale).clamp(-128, 127) * scale).reshape(w.shape)
    if dtype == "int4":
        if rows.shape[1] % INT4_GROUP:
            return w
        q, scale = int4_quantize(rows)
        groups = q.float().reshape(rows.shape[0], -1, INT4_GROUP) * scale.unsqueeze(2)
        return groups.reshape(w.shape)
    raise ValueError(f"unknown dtype {dtype}")


__all__ = ["INT4_GROUP", "TORCH_FLOAT", "CastWrapper", "Int4Embedding", "Int4WeightLinear", "Int8Embedding",
           "cast_tree", "emulate_cast", "emulate_int4_linear", "fake_quantize_weight", "int4_quantize",
           "tinygemm_supported"]
