"""Static int8 layers whose x86 kernel saturates with 8-bit activations.

x86 int8 kernels that sum u8*s8 pairs in 16 bits (vpmaddubsw, AVX2 without VNNI)
saturate when activations use all 8 bits. ``saturating_layers`` checks each converted
layer against exact int8 arithmetic instead of assuming; mixed precision and the
eager ptq_static path rebuild a saturating layer with 7-bit activations.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from quantexp.quant.graph_probe import forward_with_hooks


def int8_compute(module: nn.Module) -> nn.Module | None:
    """The torch.ao int8 Linear/Conv module that computes layer ``module`` (itself for
    an FX-converted layer, ``.module`` inside an eager ``QuantWrapper``), or None."""
    import torch.ao.nn.quantized as nnq

    inner = getattr(module, "module", module)
    return inner if isinstance(inner, (nnq.Linear, nnq.Conv1d, nnq.Conv2d, nnq.Conv3d)) else None


def saturating_layers(model: nn.Module, names: Iterable[str], inputs: tuple[torch.Tensor, ...],
                      max_steps: int = 4, max_share: float = 0.01) -> dict[str, float]:
    """Static int8 layers whose kernel output departs from exact int8 arithmetic.

    For every int8 layer in ``names`` (eager ``QuantWrapper`` or FX-converted, fused
    ReLU included) the kernel's output is compared with the same layer computed in
    fp32 from its own int8 input, int8 weights and output scale (what the kernel
    should return, up to rounding). Measured with 8-bit activations forced on an AVX2
    host (engine x86/fbgemm), on the CNN's conv1, whose input is raw pixels: logit KL
    vs fp32 7.2e-3, against 3.6e-6 for the exact computation (engine onednn, or 7-bit
    activations: 9.2e-6). Exact kernels differ from the fp32 recomputation by rounding
    only (x86 here: at most 2 quantization steps; onednn: a few outputs by up to 6);
    saturation moves many outputs far (conv1: 6.7% of its outputs off by more than 4
    steps, up to 51). Returns {layer: share of outputs off by more than ``max_steps``
    steps} for the layers where that share is above ``max_share``."""
    import torch.ao.nn.quantized as nnq
    from torch.nn import functional as F

    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = []
    for name in names:
        inner = int8_compute(model.get_submodule(name))
        if inner is None:
            continue

        def hook(_m, args, out, name=name):
            seen[name] = (args[0], out)
        hooks.append((inner, hook))
    forward_with_hooks(model, hooks, inputs)
    bad = {}
    for name, (x, out) in seen.items():
        inner = int8_compute(model.get_submodule(name))
        w, b = inner.weight().dequantize(), inner.bias()
        if isinstance(inner, nnq.Linear):
            ref = F.linear(x.dequantize(), w, b)
        else:
            conv = {nnq.Conv1d: F.conv1d, nnq.Conv2d: F.conv2d, nnq.Conv3d: F.conv3d}[
                next(c for c in (nnq.Conv1d, nnq.Conv2d, nnq.Conv3d) if isinstance(inner, c))]
            if inner.padding_mode != "zeros":
                continue
            ref = conv(x.dequantize(), w, b, inner.stride, inner.padding, inner.dilation, inner.groups)
        if "ReLU" in type(inner).__name__:  # fused ConvReLU / LinearReLU
            ref = torch.relu(ref)
        ref = torch.quantize_per_tensor(ref, float(inner.scale), int(inner.zero_point), torch.quint8)
        diff = (out.int_repr().int() - ref.int_repr().int()).abs()
        share = float((diff > max_steps).float().mean())
        if share > max_share:
            bad[name] = share
    return bad


__all__ = ["int8_compute", "saturating_layers"]
