"""PyTorch native static int8: observers calibrated on training data, then
converted to int8 kernels for weights AND activations.

Why ``torch.ao.quantization`` (FX graph mode) and not torchao's pt2e path: on
CPU, ``convert_pt2e`` yields a reference graph of quantize/dequantize ops around
fp32 kernels; it only becomes int8 compute after ``torch.compile`` (Inductor C++
codegen), which costs minutes per model and a compiler toolchain at run time.
FX ``convert_fx`` lowers directly to fbgemm/oneDNN int8 kernels, so the model we
time is the int8 model. (torch 2.13 warns that this API is deprecated.)

Models FX cannot trace (e.g. HuggingFace encoders with data-dependent control
flow) fall back to eager mode with every Linear/Conv wrapped in its own
quant/dequant pair: still static int8 kernels, without cross-layer fusion.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from quantexp.methods.base import QuantizationMethod, QuantizedModel, count_modules
from quantexp.progress import track
from quantexp.quant.int_grid import clamp_quantized_weights, weight_value_bits
from quantexp.quant.layer_error import layer_error_info
from quantexp.quant.qconfig import KEPT_FLOAT, QUANTIZABLE, build_qconfig, count_quantized


class PTQStatic(QuantizationMethod):
    needs_calibration = True

    def quantize(self, bundle, calibration):
        # Without VNNI, x86 int8 kernels (vpmaddubsw) can saturate 16-bit
        # intermediates, so activations keep 7 bits (reduce_range). VNNI
        # accumulates in 32 bits: the full 8-bit range is safe there.
        reduce_range = not self.host.cpu.has_vnni
        weight_bits = self.precision.weight_bits
        qconfig = build_qconfig(self.cfg.calibration.observer, self.precision.granularity, reduce_range,
                                weight_bits)
        model = copy.deepcopy(bundle.model).eval()
        example = bundle.example_inputs(1)
        try:
            quantized, path = self._fx(model, qconfig, example, calibration), "fx_graph_mode"
            fallback_reason = ""
        except Exception as exc:  # torch.fx cannot trace data-dependent Python control flow
            fallback_reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            model = copy.deepcopy(bundle.model).eval()
            quantized, path = self._eager_per_layer(model, qconfig, calibration), "eager_per_layer"
        info = {
            "path": path,
            "observer": self.cfg.calibration.observer.value,
            "granularity": self.precision.granularity.value,
            "reduce_range": reduce_range,
            "weight_bits": weight_bits,
            # 4-bit values are clamped to [-8, 7] inside the int8 weights (see int_grid.py).
            "weights_clamped_at_convert": clamp_quantized_weights(quantized, weight_bits),
            "weight_value_bits": weight_value_bits(quantized),
            "quantized_layers": count_quantized(quantized),
            "float_layers_left": count_modules(quantized, KEPT_FLOAT),
            "calibration_items": len(calibration),
        }
        if fallback_reason:
            info["fx_fallback_reason"] = fallback_reason
        # Per-layer SQNR/cosine vs fp32 on a few calibration batches (tables/layer_error.csv).
        info.update(layer_error_info(bundle.model, quantized, calibration,
                                     batch_size=self.cfg.calibration.batch_size))
        return QuantizedModel(quantized, info)

    def _calibrate(self, model: nn.Module, calibration) -> None:
        with torch.inference_mode():
            batches = calibration.batches(self.cfg.calibration.batch_size)
            for inputs, _ in track(batches, "calibration", total=-(-len(calibration) // self.cfg.calibration.batch_size)):
                model(*inputs)

    def _fx(self, model, qconfig, example, calibration):
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        # Keep the backend's special cases (fixed-qparam ops such as sigmoid);
        # override the global qconfig with the configured observers.
        mapping = get_default_qconfig_mapping(torch.backends.quantized.engine).set_global(qconfig)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepared = prepare_fx(model, mapping, example_inputs=example)
            self._calibrate(prepared, calibration)
            return convert_fx(prepared)

    def _eager_per_layer(self, model, qconfig, calibration):
        from torch.ao.quantization import QuantWrapper, convert, prepare

        def wrap(parent: nn.Module) -> None:
            for name, child in parent.named_children():
                if isinstance(child, QUANTIZABLE):
                    wrapper = QuantWrapper(child)
                    wrapper.qconfig = qconfig
                    setattr(parent, name, wrapper)
                else:
                    wrap(child)

        wrap(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepare(model, inplace=True)
            self._calibrate(model, calibration)
            convert(model, inplace=True)
        return model
