"""The fp32 baseline: the model unchanged."""

from __future__ import annotations

import copy

from quantexp.methods.base import QuantizationMethod, QuantizedModel


class Fp32(QuantizationMethod):
    def quantize(self, bundle, calibration):
        return QuantizedModel(copy.deepcopy(bundle.model), {"quantized_layers": 0})
