"""Mixed-precision layers: every assignable layer in its own dtype (fp32 / fp16 / bf16 /
int8 / int4), shared by method=mixed, the sensitivity analysis and the precision search.

How each layer dtype really runs on a CPU (so the mixed model is a real model, not a
simulation; the modules are in ``quantexp.quant.layer_kernels``):

- ``fp16`` / ``bf16``: ``CastWrapper`` (inputs cast in, fp32 out).
- ``int8``: Linear/Conv -> torch.ao static int8 kernels (fbgemm/oneDNN), calibrated on
  the calibration set. LSTM/GRU -> dynamic int8 (int8 weights, activations quantized
  per batch: static int8 LSTM needs an explicit hidden state). Embedding -> row-wise
  int8 lookup.
- ``int4``: Linear -> torch's CPU int4 kernel on bf16 activations (``Int4WeightLinear``);
  Embedding -> row-wise int4 lookup.

Static int8 Linear/Conv layers are built two ways. ``graph=True`` on a model torch.fx
can trace: FX graph mode with a qconfig only on the int8 layers and on the modules
(ReLU, pooling) that directly consume an int8 region, so consecutive int8 layers form
one quantized region (conv1 -> relu -> pool -> conv2 with no dequantize/quantize in
between; fused Conv+ReLU). Otherwise (or when tracing fails: HF encoders) eager mode:
each layer in its own ``QuantWrapper`` (quantize -> int8 kernel -> dequantize).

``layer_dtypes`` reads back what each layer runs in from the model itself (module
types and the dtype actually seen at the layer's compute module during a forward
pass); the method logs it next to the assignment as a table.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from quantexp.config import ConfigError
from quantexp.progress import track
from quantexp.quant.graph_probe import forward_with_hooks
from quantexp.quant.layer_kernels import (
    INT4_GROUP,
    TORCH_FLOAT,
    CastWrapper,
    Int4Embedding,
    Int4WeightLinear,
    Int8Embedding,
)
from quantexp.quant.saturation import int8_compute, saturating_layers

if TYPE_CHECKING:
    from quantexp.models.base import Split

DTYPES = ("fp32", "fp16", "bf16", "int8", "int4")
LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.LSTM, nn.GRU, nn.Embedding)
RECURRENT = (nn.LSTM, nn.GRU)
# Storage bits per weight element, for size estimates (int8/int4 add their scales).
WEIGHT_BITS = {"fp32": 32, "fp16": 16, "bf16": 16, "int8": 8, "int4": 4}


def _value(d: Any) -> str:
    return getattr(d, "value", d)


# ----------------------------------------------------------------- layers
def assignable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Qualified name -> module for every layer that can take its own precision:
    Linear, Conv1/2/3d, LSTM, GRU, Embedding (outermost only), in module order."""
    out: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if not name or any(name.startswith(n + ".") for n in out):
            continue
        if isinstance(module, LAYER_TYPES):
            out[name] = module
    return out


def supported_dtypes(module: nn.Module) -> tuple[str, ...]:
    """The dtypes this layer can be built in (whether they are fast here is
    ``quantexp.quant.kernels``' question)."""
    supported = ["fp32", "fp16", "bf16", "int8"]
    if isinstance(module, nn.Linear) and module.in_features % INT4_GROUP == 0:
        supported.append("int4")
    if isinstance(module, nn.Embedding) and module.embedding_dim % 2 == 0:
        supported.append("int4")
    return tuple(supported)


def validate_assignment(layers: Mapping[str, nn.Module], assignment: Mapping[str, Any]) -> None:
    """Unknown layer names and unsupported dtypes are refused with the valid choices."""
    unknown = [name for name in assignment if name not in layers]
    if unknown:
        raise ConfigError(f"unknown layer name(s) in method.assignment: {', '.join(unknown)}; "
                          f"valid layer names: {', '.join(layers)}")
    for name, dtype in assignment.items():
        dtype = _value(dtype)
        if dtype not in supported_dtypes(layers[name]):
            raise ConfigError(
                f"layer {name} ({type(layers[name]).__name__}) cannot run in {dtype} on this "
                f"backend; valid dtypes for {name}: {', '.join(supported_dtypes(layers[name]))}")


def full_assignment(layers: Mapping[str, nn.Module], assignment: Mapping[str, Any],
                    default: Any = "fp32") -> dict[str, str]:
    """Every layer's dtype: ``assignment``, else ``default`` where the layer supports it
    (an Embedding or a Conv has no int4: it stays fp32 under ``default=int4``)."""
    validate_assignment(layers, assignment)
    default = _value(default)
    return {name: _value(assignment.get(name, default if default in supported_dtypes(m) else "fp32"))
            for name, m in layers.items()}


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def is_static_int8(module: nn.Module, dtype: str) -> bool:
    return dtype == "int8" and not isinstance(module, RECURRENT + (nn.Embedding,))


def one_layer(module: nn.Module, dtype: str) -> nn.Module:
    """``module`` (an fp32 layer) rebuilt to run in ``dtype``, for every dtype that needs
    no calibration (fp32 returns it unchanged; static int8 raises)."""
    if dtype == "fp32":
        return module
    if dtype in TORCH_FLOAT:
        return CastWrapper(copy.deepcopy(module), TORCH_FLOAT[dtype])
    if isinstance(module, nn.Embedding):
        return Int8Embedding(module) if dtype == "int8" else Int4Embedding(module)
    if dtype == "int4":
        return Int4WeightLinear(module)
    if dtype == "int8" and isinstance(module, RECURRENT):
        from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

        holder = nn.Sequential(copy.deepcopy(module))
        quantize_dynamic(holder, {"0": default_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
        return holder[0]
    raise ValueError(f"{type(module).__name__} in {dtype} needs calibration (static int8)")


# ------------------------------------------------------------- building
def static_qconfig(reduce_range: bool):
    from torch.ao.quantization import QConfig
    from torch.ao.quantization.observer import HistogramObserver, PerChannelMinMaxObserver

    return QConfig(activation=HistogramObserver.with_args(dtype=torch.quint8, reduce_range=reduce_range),
                   weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8,
                                                             qscheme=torch.per_channel_symmetric))


def reduced(qconfig: Any) -> Any:
    """``qconfig`` with 7-bit activations (``reduce_range``)."""
    from torch.ao.quantization import QConfig

    return QConfig(activation=qconfig.activation.with_args(reduce_range=True), weight=qconfig.weight)


def build_mixed(model: nn.Module, assignment: Mapping[str, Any], calibration: Split | None,
                reduce_range: bool = True, batch_size: int = 32, qconfig: Any = None,
                report: dict[str, Any] | None = None, graph: bool = False) -> nn.Module:
    """A copy of ``model`` in which every layer runs in its assigned dtype.
    ``assignment`` must name every layer it changes; unnamed layers stay fp32.

    Static int8 layers get 8-bit activations unless ``reduce_range``; then the int8
    kernels are checked for saturation (``saturating_layers``, on the first calibration
    batch): eager mode rebuilds each saturating layer with 7-bit activations, graph mode
    (``graph=True`` and traceable) rebuilds the whole graph with 7 bits (a layer's input
    scale belongs to the region before it). ``report`` (a dict) receives
    ``reduce_range_layers`` ({layer: share of saturated outputs before the rebuild}),
    ``build_path`` (``fx_graph`` or ``eager``), ``fx_fallback_reason`` and, in graph
    mode, ``int8_boundaries`` (quantize + dequantize calls in the graph)."""
    report = report if report is not None else {}
    assignment = {k: _value(v) for k, v in assignment.items()}
    validate_assignment(assignable_layers(model), assignment)
    layers = assignable_layers(model)
    static = [n for n, d in assignment.items() if is_static_int8(layers[n], d)]
    if static and calibration is None:
        raise ValueError("static int8 layers need a calibration set")
    if graph and static:
        from quantexp.quant.fx_regions import build_fx

        try:
            built, boundaries = build_fx(model, assignment, calibration, batch_size,
                                         qconfig or static_qconfig(reduce_range), _swap_uncalibrated)
        except Exception as exc:  # torch.fx cannot trace data-dependent Python control flow
            report["fx_fallback_reason"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        else:
            fallback = {} if reduce_range else _saturated(built, static, calibration, batch_size)
            if fallback:
                built, boundaries = build_fx(model, assignment, calibration, batch_size,
                                             reduced(qconfig or static_qconfig(False)), _swap_uncalibrated)
            report.update(reduce_range_layers=fallback, build_path="fx_graph", int8_boundaries=boundaries)
            return built
    built = _build_eager(model, assignment, calibration, reduce_range, batch_size, qconfig, set())
    fallback = {} if reduce_range else _saturated(built, static, calibration, batch_size)
    if fallback:
        built = _build_eager(model, assignment, calibration, reduce_range, batch_size, qconfig, set(fallback))
    report.update(reduce_range_layers=fallback, build_path="eager")
    return built


def _saturated(built: nn.Module, static: list[str], calibration: Split | None, batch_size: int) -> dict[str, float]:
    if not static or calibration is None:
        return {}
    first = next(iter(calibration.batches(batch_size)))[0]
    return saturating_layers(built, static, first)


def _swap_uncalibrated(model: nn.Module, assignment: Mapping[str, str]) -> None:
    """Every assigned layer that needs no calibration, swapped in place (before
    calibration, so the int8 observers see the activations the mixed model produces)."""
    layers = assignable_layers(model)
    for name, dtype in assignment.items():
        if dtype != "fp32" and not is_static_int8(layers[name], dtype):
            _set(model, name, one_layer(layers[name], dtype))


def calibrate(model: nn.Module, calibration: Split, batch_size: int) -> None:
    with torch.no_grad():
        batches = calibration.batches(batch_size)
        for inputs, _ in track(batches, "calibration", total=-(-len(calibration) // batch_size)):
            model(*inputs)


def _build_eager(model: nn.Module, assignment: Mapping[str, str], calibration: Split | None,
                 reduce_range: bool, batch_size: int, qconfig: Any, reduced_layers: set[str]) -> nn.Module:
    from torch.ao.quantization import QuantWrapper, convert, prepare

    model = copy.deepcopy(model).eval()
    layers = assignable_layers(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao deprecation warnings
        _swap_uncalibrated(model, assignment)
        static = [n for n, d in assignment.items() if is_static_int8(layers[n], d)]
        if static:
            qconfig = qconfig or static_qconfig(reduce_range)
            for name in static:
                wrapper = QuantWrapper(model.get_submodule(name))
                wrapper.qconfig = reduced(qconfig) if name in reduced_layers else qconfig
                _set(model, name, wrapper)
            prepare(model, inplace=True)
            calibrate(model, calibration, batch_size)
            convert(model, inplace=True)
    return model.eval()


# ------------------------------------------------------------ read back
def _module_dtype(module: nn.Module) -> str:
    import torch.ao.nn.quantized.dynamic as nnqd

    if isinstance(module, CastWrapper):
        return module.dtype_name
    if int8_compute(module) is not None:
        return "int8"
    if isinstance(module, (nnqd.LSTM, nnqd.GRU, nnqd.Linear)):
        return "int8"
    if isinstance(module, Int8Embedding):
        return "int8"
    if isinstance(module, (Int4WeightLinear, Int4Embedding)):
        return "int4"
    weight = getattr(module, "weight", None)
    if weight is not None and isinstance(weight, torch.Tensor):
        return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(weight.dtype, "fp32")
    return "fp32"


def compute_module(module: nn.Module) -> nn.Module:
    """The module that does a layer's arithmetic (inside its wrapper, if any)."""
    from torch.ao.quantization import QuantWrapper

    return module.module if isinstance(module, (CastWrapper, QuantWrapper)) else module


def layer_dtypes(model: nn.Module, names: Iterable[str],
                 example: tuple[torch.Tensor, ...] | None = None) -> list[dict[str, Any]]:
    """Per layer: the dtype its module says it runs in, and (with ``example``) the
    dtype of the tensor that actually reached the compute kernel in a forward pass
    (quint8 for static int8, fp16/bf16 for cast layers, bfloat16 for the int4 kernel)."""
    rows, seen, hooks = [], {}, []
    for name in names:
        module = model.get_submodule(name)
        compute = compute_module(module)
        rows.append({"layer": name, "type": type(compute).__name__, "runs_in": _module_dtype(module)})

        def hook(_m, inputs, _out, name=name):
            t = inputs[0] if inputs else None
            if isinstance(t, torch.Tensor):
                seen[name] = str(t.dtype).removeprefix("torch.")
        hooks.append((compute, hook))
        if isinstance(compute, Int4WeightLinear) and compute.kernel == "tinygemm":
            # the kernel's own input: the bf16 activations (the module receives fp32)
            rows[-1]["kernel"] = "aten._weight_int4pack_mm_for_cpu (bf16 activations)"
    if example is not None:
        forward_with_hooks(model, hooks, example)
        for row in rows:
            row["kernel_input_dtype"] = seen.get(row["layer"], "not called")
    return rows


# ------------------------------------------------------------------ size
def layer_weight_bytes(module: nn.Module, dtype: str) -> float:
    """Bytes this layer's parameters take stored in ``dtype`` (int8: per-channel fp32
    scales + fp32 bias; int4: a 32-bit scale per group of 32 + fp32 bias; embeddings:
    8 bytes of scale and offset per row)."""
    if isinstance(module, nn.Embedding):
        n, rows = module.weight.numel(), module.weight.shape[0]
        return {"fp32": 4.0 * n, "fp16": 2.0 * n, "bf16": 2.0 * n, "int8": n + 8.0 * rows,
                "int4": n / 2 + 8.0 * rows}[dtype]
    total = 0.0
    for pname, p in module.named_parameters():
        is_weight = "weight" in pname
        if dtype in ("fp16", "bf16", "fp32"):
            total += p.numel() * WEIGHT_BITS[dtype] / 8
        elif not is_weight:
            total += p.numel() * 4  # biases stay fp32 in int kernels
        elif dtype == "int8":
            total += p.numel() + p.shape[0] * 4
        else:  # int4
            total += p.numel() / 2 + (p.numel() / INT4_GROUP) * 4
    return total


def model_size_bytes(model: nn.Module, assignment: Mapping[str, str]) -> float:
    layers = assignable_layers(model)
    in_layers = {id(p) for m in layers.values() for p in m.parameters()}
    other = sum(p.numel() * 4 for p in model.parameters() if id(p) not in in_layers)
    return other + sum(layer_weight_bytes(layers[n], assignment.get(n, "fp32")) for n in layers)


__all__ = ["DTYPES", "LAYER_TYPES", "RECURRENT", "CastWrapper", "Int4Embedding", "Int4WeightLinear",
           "assignable_layers", "build_mixed", "calibrate", "compute_module", "full_assignment",
           "is_static_int8", "layer_dtypes", "layer_weight_bytes", "model_size_bytes", "one_layer", "reduced",
           "saturating_layers", "static_qconfig", "supported_dtypes", "validate_assignment"]
