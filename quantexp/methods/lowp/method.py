"""method=cast and method=woq_int8: low-precision compute on the run's device.

Both conversions take the device as a parameter, so the tests run the exact code path
of hardware=mps on the CPU (bf16 emulated there, which is why the pre-flight refuses
bf16 on a CPU without bf16 instructions for real runs).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from quantexp.methods.base import QuantizationMethod, QuantizedModel, count_modules

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


class LowPrecision(nn.Module):
    """``module`` in ``dtype``: floating inputs cast in, logits cast back to fp32."""

    def __init__(self, module: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.module = module.to(dtype)
        self.dtype = dtype

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        cast = tuple(x.to(self.dtype) if x.is_floating_point() else x for x in inputs)
        return self.module(*cast).float()


def to_precision(module: nn.Module, precision: str, device: str = "cpu") -> LowPrecision:
    """A copy of ``module`` computing in ``precision`` (fp16 | bf16) on ``device``."""
    return LowPrecision(copy.deepcopy(module).to(device), DTYPES[precision]).eval()


class Int8WeightOnlyLinear(nn.Module):
    """y = x @ (w_int8 * scale).T + b, by ``torch._weight_int8pack_mm`` (the int8 weights
    are never expanded to a float matrix in memory)."""

    def __init__(self, linear: nn.Linear, device: str = "cpu"):
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        self.register_buffer("weight_int8", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).to(device))
        self.register_buffer("scales", scale.to(device))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().to(device))
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        # the kernel wants the scales in the activations' dtype (fp32 on CPU, fp16/bf16 on mps)
        y = torch._weight_int8pack_mm(flat.contiguous(), self.weight_int8, self.scales.to(flat.dtype))
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*shape[:-1], self.out_features)


def weight_only_int8(module: nn.Module, device: str = "cpu") -> tuple[nn.Module, int]:
    """A copy of ``module`` on ``device`` with every nn.Linear int8 weight-only; (model, layers replaced)."""
    model = copy.deepcopy(module).to(device).eval()
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, Int8WeightOnlyLinear(child, device))
                replaced += 1
    return model, replaced


class Cast(QuantizationMethod):
    def quantize(self, bundle, calibration):
        model = to_precision(bundle.model, self.precision.name, self.host.device)
        return QuantizedModel(model, {"compute_dtype": self.precision.name, "device": self.host.device,
                                      "quantized_layers": count_modules(bundle.model, (nn.Linear, nn.Conv2d))})


class WeightOnlyInt8(QuantizationMethod):
    def check_model(self, bundle) -> None:
        from quantexp.config import ConfigError

        if count_modules(bundle.model, (nn.Linear,)) == 0:
            raise ConfigError("method=woq_int8 replaces nn.Linear layers; this model has none")

    def quantize(self, bundle, calibration):
        model, replaced = weight_only_int8(bundle.model, self.host.device)
        return QuantizedModel(model, {"quantized_layers": replaced, "kernel": "torch._weight_int8pack_mm",
                                      "device": self.host.device})
