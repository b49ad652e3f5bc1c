"""Low-bit integer weights inside int8 kernels.

torch.ao's CPU kernels (fbgemm / oneDNN) take int8 weights. A 4-bit weight is
an int8 weight whose values lie in the signed 4-bit range [-8, 7]. The
observers compute scales for that range, but ``convert`` quantizes with
``torch.quantize_per_*`` which clamps to the int8 range only: a weight that
rounds to 8 (or beyond, when a moving-average observer lags the weights)
would be stored out of the 4-bit grid. ``clamp_quantized_weights`` clamps the
stored integers to the grid, which is exactly what fake quantization computed.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def signed_range(bits: int) -> tuple[int, int]:
    """Integer range of signed ``bits``-bit weights, e.g. 4 -> (-8, 7)."""
    if not 2 <= bits <= 8:
        raise ValueError(f"weight bit width {bits} is impossible here: int8 kernels hold 2..8-bit values")
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _quantized_weight_modules(model: nn.Module):
    for module in model.modules():
        if callable(getattr(module, "weight", None)) and hasattr(module, "set_weight_bias"):
            weight = module.weight()
            if isinstance(weight, torch.Tensor) and weight.is_quantized:
                yield module, weight


def clamp_quantized_weights(model: nn.Module, bits: int) -> int:
    """Clamp every quantized weight's integers to the signed ``bits``-bit range, in
    place; returns how many integers were out of range (0 for 8 bits)."""
    if bits == 8:
        return 0
    lo, hi = signed_range(bits)
    changed = 0
    for module, w in _quantized_weight_modules(model):
        ints = w.int_repr()
        clamped = ints.clamp(lo, hi)
        changed += int((clamped != ints).sum())
        if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            new = torch._make_per_channel_quantized_tensor(clamped, w.q_per_channel_scales(),
                                                          w.q_per_channel_zero_points(), w.q_per_channel_axis())
        else:
            new = torch._make_per_tensor_quantized_tensor(clamped, w.q_scale(), w.q_zero_point())
        module.set_weight_bias(new, module.bias())
    return changed


def weight_value_bits(model: nn.Module) -> int:
    """Signed bits needed by the integer weight values actually stored (max over
    layers): proves that 4-bit weights really are on the 4-bit grid."""
    needed = 0
    for _, w in _quantized_weight_modules(model):
        ints = w.int_repr().int()
        lo, hi = int(ints.min()), int(ints.max())
        bits_hi = math.ceil(math.log2(hi + 1)) + 1 if hi > 0 else 1
        bits_lo = math.ceil(math.log2(-lo)) + 1 if lo < 0 else 1
        needed = max(needed, bits_hi, bits_lo)
    return needed
