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
quant/dequant pair (``quant.mixed_layers.build_mixed``): still static int8 kernels,
without cross-layer fusion. There, activations get all 8 bits and each layer is
checked against exact int8 arithmetic; one whose AVX2 kernel saturates is rebuilt
with 7-bit activations (MiniLM: 7-bit everywhere cost 6 points on 500 items, 8 bits
2). On both paths, layers that read a GELU's output (``method.outlier_after``) stay
fp32, or run dynamic int8 (``method.outlier_layers``), and embedding tables become
int8 weight-only (``method.embeddings``). MiniLM, 2,000 test items: 74.00 -> 74.35
with this recipe (11.97 bits/param), 72.30 with dynamic outlier layers, 70.80 before.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from quantexp.methods.base import QuantizationMethod, QuantizedModel, count_modules
from quantexp.progress import track
from quantexp.quant.fx_tracing import fx_graph_mode
from quantexp.quant.graph_probe import layers_after
from quantexp.quant.int_grid import clamp_quantized_weights, weight_value_bits
from quantexp.quant.layer_error import layer_error_info
from quantexp.quant.mixed_layers import build_mixed
from quantexp.quant.qconfig import KEPT_FLOAT, QUANTIZABLE, build_qconfig, count_quantized


class PTQStatic(QuantizationMethod):
    needs_calibration = True

    def quantize(self, bundle, calibration):
        # FX path: without VNNI, x86 int8 kernels (vpmaddubsw) can saturate 16-bit
        # intermediates, so activations keep 7 bits (reduce_range); VNNI accumulates
        # in 32 bits. The eager path checks each layer instead (module docstring).
        reduce_range = not self.host.cpu.has_vnni
        weight_bits = self.precision.weight_bits
        qconfig = build_qconfig(self.cfg.calibration.observer, self.precision.granularity, reduce_range,
                                weight_bits)
        model = copy.deepcopy(bundle.model).eval()
        example = bundle.example_inputs(1)
        outliers = layers_after(model, self.cfg.outlier_after, example)
        mode = self.cfg.outlier_layers
        special = outliers if mode != "static" else []
        built: dict = {}
        try:
            quantized, path = self._fx(model, qconfig, example, calibration, special), "fx_graph_mode"
            fallback_reason = ""
        except Exception as exc:  # torch.fx cannot trace data-dependent Python control flow
            fallback_reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            # 8-bit activations, checked per layer for saturation (see the module docstring)
            qconfig = build_qconfig(self.cfg.calibration.observer, self.precision.granularity, False, weight_bits)
            assignment = {name: "fp32" if name in special else "int8" for name, module in model.named_modules()
                          if isinstance(module, QUANTIZABLE)}
            quantized = build_mixed(bundle.model, assignment, calibration, reduce_range=False,
                                    batch_size=self.cfg.calibration.batch_size, qconfig=qconfig, report=built)
            path = "eager_per_layer"
        if mode == "dynamic":
            dynamic_int8(quantized, special)
        embeddings = quantize_embeddings(quantized) if self.cfg.embeddings in ("auto", "int8") else 0
        info = {
            "path": path,
            "observer": self.cfg.calibration.observer.value,
            "granularity": self.precision.granularity.value,
            "reduce_range": reduce_range if path == "fx_graph_mode" else False,
            # eager path: layers whose 8-bit kernel saturated, rebuilt with 7-bit activations
            "reduce_range_layers": sorted(built.get("reduce_range_layers", {})),
            # layers reading an outlier-prone activation, and how they run
            "outlier_layers": outliers,
            "outlier_layers_as": mode,
            "int8_embeddings": embeddings,
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
            n_batches = -(-len(calibration) // self.cfg.calibration.batch_size)
            for inputs, _ in track(batches, "calibration", total=n_batches):
                model(*inputs)

    def _fx(self, model, qconfig, example, calibration, float_layers: list[str]):
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        # Keep the backend's special cases (fixed-qparam ops such as sigmoid);
        # override the global qconfig with the configured observers.
        mapping = get_default_qconfig_mapping(torch.backends.quantized.engine).set_global(qconfig)
        for name in float_layers:  # made dynamic int8 after convert, when so configured
            mapping.set_module_name(name, None)
        with fx_graph_mode():
            prepared = prepare_fx(model, mapping, example_inputs=example)
            self._calibrate(prepared, calibration)
            return convert_fx(prepared)


def dynamic_int8(model: nn.Module, names: list[str]) -> None:
    """The float Linear layers ``names`` of a converted model as dynamic int8 (int8
    weights, activations quantized per batch at run time), in place. A layer FX fused
    with its activation (LinearReLU) stays float."""
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    linear = [n for n in names if type(model.get_submodule(n)) is nn.Linear]
    if linear:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao deprecation warnings
            quantize_dynamic(model, {n: default_dynamic_qconfig for n in linear}, dtype=torch.qint8, inplace=True)


class Int8Embedding(nn.Module):
    """A torch.ao int8 embedding that accepts any index tensor: the kernel needs
    contiguous indices, and HF encoders pass expanded (strided) position/type ids."""

    def __init__(self, quantized: nn.Module):
        super().__init__()
        self.quantized = quantized

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return self.quantized(indices.contiguous())


def quantize_embeddings(model: nn.Module) -> int:
    """Every nn.Embedding of ``model`` as int8 weight-only (per-row float scale and
    offset), in place; returns how many were replaced."""
    import torch.ao.nn.quantized as nnq
    from torch.ao.quantization import float_qparams_weight_only_qconfig

    replaced = 0
    for name, module in list(model.named_modules()):
        if type(module) is nn.Embedding:
            module.qconfig = float_qparams_weight_only_qconfig
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf,
                    Int8Embedding(nnq.Embedding.from_float(module)))
            replaced += 1
    return replaced
