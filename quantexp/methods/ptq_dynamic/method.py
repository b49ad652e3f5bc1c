"""PyTorch native dynamic quantization (``torch.ao.quantization.quantize_dynamic``).

Weights of Linear/LSTM/GRU layers are stored as int8 (or fp16); activations are
quantized per batch at run time, so no calibration data is needed. This is the
eager API: it produces real fbgemm/oneDNN int8 kernels on CPU with no compile
step, which the torchao replacement (``Int8DynamicActivationInt8WeightConfig``)
only reaches through ``torch.compile`` on CPU.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from quantexp.methods.base import QuantizationMethod, QuantizedModel, count_modules
from quantexp.quant.layer_error import layer_error_info

DYNAMIC_TYPES = (nn.Linear, nn.LSTM, nn.GRU)


class PTQDynamic(QuantizationMethod):
    # Quantization itself uses no data; calibration inputs feed the per-layer
    # error table (SQNR/cosine vs fp32) only.
    needs_calibration = True

    def quantize(self, bundle, calibration):
        from torch.ao.quantization import quantize_dynamic

        dtype = torch.float16 if self.precision.name == "fp16" else torch.qint8
        model = copy.deepcopy(bundle.model).eval()
        n_layers = count_modules(model, DYNAMIC_TYPES)
        quantized = quantize_dynamic(model, set(DYNAMIC_TYPES), dtype=dtype)
        info = {
            "quantized_layers": n_layers,
            "weight_dtype": str(dtype).removeprefix("torch."),
            "path": "torch.ao.quantization.quantize_dynamic",
        }
        info.update(layer_error_info(bundle.model, quantized, calibration,
                                     batch_size=self.cfg.calibration.batch_size))
        return QuantizedModel(quantized, info)
