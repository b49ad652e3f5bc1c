"""Mixed-precision layers: every assignable layer in its own dtype (fp32 / fp16 / bf16 /
int8 / int4), shared by method=mixed, the sensitivity analysis and the precision search.

How each layer dtype really runs on a CPU (so the mixed model is a real model,
not a simulation):

- ``fp16`` / ``bf16``: the layer's weights are cast (``module.to(dtype)``) and the
  layer is wrapped in ``CastWrapper``: float inputs are cast to the dtype at the
  boundary, outputs back to fp32, so neighbours of any precision see fp32.
- ``int8``: Linear/Conv -> torch.ao static int8 kernels (fbgemm/oneDNN) inside a
  ``QuantWrapper`` (QuantStub -> int8 layer -> DeQuantStub: the quant/dequant pair
  at the layer's boundaries), calibrated on the calibration set. LSTM/GRU ->
  dynamic int8 (``torch.ao.nn.quantized.dynamic``: int8 weights, activations
  quantized per batch), because static int8 LSTM needs an explicit hidden state.
- ``int4``: Linear only, ``Int4WeightLinear``: symmetric 4-bit weights, one fp32
  scale per group of 32 inputs, two weights packed per byte (uint8 buffer, which is
  what the TorchScript artifact stores), unpacked and dequantized in the forward
  pass for an fp32 matmul (weight-only int4: smaller artifact, not faster on CPU).
  (torchao's IntxWeightOnly was tried first: its TorchScript trace stored the
  dequantized fp32 weight, so the artifact grew instead of shrinking.)

``layer_dtypes`` reads back what each layer runs in from the model itself
(module types and the dtype actually seen at the layer's compute module during a
forward pass); the method logs it next to the assignment as a table.
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

if TYPE_CHECKING:
    from quantexp.models.base import Split

DTYPES = ("fp32", "fp16", "bf16", "int8", "int4")
TORCH_FLOAT = {"fp16": torch.float16, "bf16": torch.bfloat16}
LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.LSTM, nn.GRU)
RECURRENT = (nn.LSTM, nn.GRU)
INT4_GROUP = 32
# Storage bits per weight element, for size estimates (int8/int4 add their scales).
WEIGHT_BITS = {"fp32": 32, "fp16": 16, "bf16": 16, "int8": 8, "int4": 4}


def _value(d: Any) -> str:
    return getattr(d, "value", d)


# ----------------------------------------------------------------- layers
def assignable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Qualified name -> module for every layer that can take its own precision:
    Linear, Conv1/2/3d, LSTM, GRU (outermost only), in module order."""
    out: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if not name or any(name.startswith(n + ".") for n in out):
            continue
        if isinstance(module, LAYER_TYPES):
            out[name] = module
    return out


def supported_dtypes(module: nn.Module) -> tuple[str, ...]:
    """The dtypes this host/backend can run for this layer."""
    supported = ["fp32", "fp16", "bf16", "int8"]
    if isinstance(module, nn.Linear) and module.in_features % INT4_GROUP == 0:
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
    validate_assignment(layers, assignment)
    return {name: _value(assignment.get(name, default)) for name in layers}


# ------------------------------------------------------------- wrappers
def _cast_tree(x: Any, dtype: torch.dtype) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(dtype) if x.is_floating_point() else x
    if isinstance(x, tuple):
        return tuple(_cast_tree(v, dtype) for v in x)
    if isinstance(x, list):
        return [_cast_tree(v, dtype) for v in x]
    return x


class Int4WeightLinear(nn.Module):
    """nn.Linear with packed symmetric int4 weights (group-wise fp32 scales)."""

    def __init__(self, linear: nn.Linear, group: int = INT4_GROUP):
        super().__init__()
        w = linear.weight.detach().float()
        out_f, in_f = w.shape
        if in_f % group:
            raise ValueError(f"int4 needs in_features divisible by {group}, got {in_f}")
        groups = w.reshape(out_f, in_f // group, group)
        scale = groups.abs().amax(dim=2, keepdim=True).clamp_min(1e-12) / 7
        q = torch.round(groups / scale).clamp(-8, 7).to(torch.int16).reshape(out_f, in_f) + 8  # 0..15
        # "weight" in the name: the size report counts integer tensors as stored weights only
        # when named so (a uint8 "packed" buffer was left out: 1.41 bits/param for int4+int8).
        self.register_buffer("packed_weight", (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8))
        self.register_buffer("scale", scale.reshape(out_f, in_f // group))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(),
                                                                   requires_grad=False)
        self.in_features, self.out_features, self.group = in_f, out_f, group

    def weight_fp32(self) -> torch.Tensor:
        p = self.packed_weight.to(torch.int16)
        q = torch.stack((p & 15, p >> 4), dim=2).reshape(self.out_features, self.in_features) - 8
        groups = q.to(torch.float32).reshape(self.out_features, -1, self.group)
        return (groups * self.scale.unsqueeze(2)).reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight_fp32(), self.bias)


class CastWrapper(nn.Module):
    """Runs ``module`` in a float dtype: inputs cast in, outputs cast back to fp32."""

    def __init__(self, module: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.module = module.to(dtype)
        self.dtype_name = {torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
        self._dtype = dtype

    def forward(self, *args):
        out = self.module(*_cast_tree(args, self._dtype))
        return _cast_tree(out, torch.float32)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _static_qconfig(reduce_range: bool):
    from torch.ao.quantization import QConfig
    from torch.ao.quantization.observer import (
        HistogramObserver,
        PerChannelMinMaxObserver,
    )

    return QConfig(activation=HistogramObserver.with_args(dtype=torch.quint8, reduce_range=reduce_range),
                   weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8,
                                                             qscheme=torch.per_channel_symmetric))


def _reduced(qconfig: Any) -> Any:
    """``qconfig`` with 7-bit activations (``reduce_range``)."""
    from torch.ao.quantization import QConfig

    return QConfig(activation=qconfig.activation.with_args(reduce_range=True), weight=qconfig.weight)


def saturating_layers(model: nn.Module, names: Iterable[str], inputs: tuple[torch.Tensor, ...],
                      max_steps: int = 4, max_share: float = 0.01) -> dict[str, float]:
    """Static int8 layers whose kernel output departs from exact int8 arithmetic.

    For every ``QuantWrapper`` in ``names`` the converted kernel's output is compared
    with the same layer computed in fp32 from its own int8 input, int8 weights and
    output scale (what the kernel should return, up to rounding). x86 int8 kernels
    that sum u8*s8 pairs in 16 bits (vpmaddubsw) saturate when activations use all
    8 bits. The method picks 8-bit activations only on VNNI CPUs (32-bit sums); this
    check verifies that per layer instead of assuming it. Measured with 8-bit
    activations forced on an AVX2 host (engine x86/fbgemm), on the CNN's conv1,
    whose input is raw pixels: logit KL vs fp32 7.2e-3, against 3.6e-6 for the
    exact computation (engine onednn, or 7-bit activations: 9.2e-6).
    Exact kernels differ from the fp32 recomputation by rounding only (x86 here: at
    most 2 quantization steps; onednn: a few outputs by up to 6); saturation moves
    many outputs far (conv1: 6.7% of its outputs off by more than 4 steps, up to 51).
    Returns {layer: share of outputs off by more than ``max_steps`` steps} for the
    layers where that share is above ``max_share``."""
    import torch.ao.nn.quantized as nnq
    from torch.nn import functional as F

    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = []
    for name in names:
        wrapper = model.get_submodule(name)
        inner = getattr(wrapper, "module", None)
        if not isinstance(inner, (nnq.Linear, nnq.Conv1d, nnq.Conv2d, nnq.Conv3d)):
            continue

        def hook(_m, args, out, name=name):
            seen[name] = (args[0], out)
        hooks.append((inner, hook))
    forward_with_hooks(model, hooks, inputs)
    bad = {}
    for name, (x, out) in seen.items():
        inner = model.get_submodule(name).module
        w, b = inner.weight().dequantize(), inner.bias()
        if isinstance(inner, nnq.Linear):
            ref = F.linear(x.dequantize(), w, b)
        else:
            conv = {nnq.Conv1d: F.conv1d, nnq.Conv2d: F.conv2d, nnq.Conv3d: F.conv3d}[type(inner)]
            if inner.padding_mode != "zeros":
                continue
            ref = conv(x.dequantize(), w, b, inner.stride, inner.padding, inner.dilation, inner.groups)
        ref = torch.quantize_per_tensor(ref, float(inner.scale), int(inner.zero_point), torch.quint8)
        diff = (out.int_repr().int() - ref.int_repr().int()).abs()
        share = float((diff > max_steps).float().mean())
        if share > max_share:
            bad[name] = share
    return bad


def build_mixed(model: nn.Module, assignment: Mapping[str, Any], calibration: Split | None,
                reduce_range: bool = True, batch_size: int = 32, qconfig: Any = None,
                report: dict[str, Any] | None = None) -> nn.Module:
    """A copy of ``model`` in which every layer runs in its assigned dtype.
    ``assignment`` must name every layer it changes; unnamed layers stay fp32.

    Static int8 layers are built with full 8-bit activations unless ``reduce_range``;
    a layer whose kernel then saturates (``saturating_layers``, checked on the first
    calibration batch) is rebuilt with 7-bit activations. ``report`` (a dict) receives
    ``reduce_range_layers``: {layer: share of saturated outputs before the rebuild}."""
    fallback: dict[str, float] = {}
    built = _build_mixed(model, assignment, calibration, reduce_range, batch_size, qconfig, set())
    static = [n for n, d in assignment.items() if _value(d) == "int8"]
    if static and not reduce_range and calibration is not None:
        first = next(iter(calibration.batches(batch_size)))[0]
        fallback = saturating_layers(built, static, first)
        if fallback:
            built = _build_mixed(model, assignment, calibration, reduce_range, batch_size, qconfig,
                                 set(fallback))
    if report is not None:
        report["reduce_range_layers"] = fallback
    return built


def _build_mixed(model: nn.Module, assignment: Mapping[str, Any], calibration: Split | None,
                 reduce_range: bool, batch_size: int, qconfig: Any, reduced: set[str]) -> nn.Module:
    from torch.ao.quantization import (
        QuantWrapper,
        convert,
        default_dynamic_qconfig,
        prepare,
        quantize_dynamic,
    )

    model = copy.deepcopy(model).eval()
    layers = assignable_layers(model)
    validate_assignment(layers, assignment)
    assignment = {k: _value(v) for k, v in assignment.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao deprecation warnings
        # 1. dynamic int8 recurrent layers (no calibration needed)
        dynamic = {n for n, d in assignment.items() if d == "int8" and isinstance(layers[n], RECURRENT)}
        if dynamic:
            quantize_dynamic(model, {n: default_dynamic_qconfig for n in dynamic}, dtype=torch.qint8,
                             inplace=True)
        # 2. float casts and int4 weights: before calibration, so the int8 observers
        # see the activations the mixed model really produces.
        for name, dtype in assignment.items():
            if dtype in TORCH_FLOAT:
                _set(model, name, CastWrapper(model.get_submodule(name), TORCH_FLOAT[dtype]))
            elif dtype == "int4":
                _set(model, name, Int4WeightLinear(model.get_submodule(name)))
        # 3. static int8 Linear/Conv: QuantStub -> int8 kernel -> DeQuantStub
        static = [n for n, d in assignment.items() if d == "int8" and n not in dynamic]
        if static:
            if calibration is None:
                raise ValueError("static int8 layers need a calibration set")
            qconfig = qconfig or _static_qconfig(reduce_range)
            for name in static:
                wrapper = QuantWrapper(model.get_submodule(name))
                wrapper.qconfig = _reduced(qconfig) if name in reduced else qconfig
                _set(model, name, wrapper)
            prepare(model, inplace=True)
            with torch.no_grad():
                batches = calibration.batches(batch_size)
                for inputs, _ in track(batches, "calibration", total=-(-len(calibration) // batch_size)):
                    model(*inputs)
            convert(model, inplace=True)
    return model.eval()


# ------------------------------------------------------------ read back
def _module_dtype(module: nn.Module) -> str:
    import torch.ao.nn.quantized as nnq
    import torch.ao.nn.quantized.dynamic as nnqd
    from torch.ao.quantization import QuantWrapper

    if isinstance(module, CastWrapper):
        return module.dtype_name
    if isinstance(module, QuantWrapper):
        inner = module.module
        if isinstance(inner, (nnq.Linear, nnq.Conv1d, nnq.Conv2d, nnq.Conv3d)):
            return "int8"
        return "fp32"
    if isinstance(module, (nnqd.LSTM, nnqd.GRU, nnqd.Linear)):
        return "int8"
    if isinstance(module, Int4WeightLinear):
        return "int4"
    weight = getattr(module, "weight", None)
    if weight is not None and isinstance(weight, torch.Tensor):
        return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(weight.dtype, "fp32")
    return "fp32"


def layer_dtypes(model: nn.Module, names: Iterable[str],
                 example: tuple[torch.Tensor, ...] | None = None) -> list[dict[str, Any]]:
    """Per layer: the dtype its module says it runs in, and (with ``example``) the
    dtype of the tensor that actually reached the compute kernel in a forward pass
    (quint8 for static int8, fp16/bf16 for cast layers)."""
    from torch.ao.quantization import QuantWrapper

    rows, seen, hooks = [], {}, []
    for name in names:
        module = model.get_submodule(name)
        compute = module.module if isinstance(module, (CastWrapper, QuantWrapper)) else module
        rows.append({"layer": name, "type": type(compute).__name__, "runs_in": _module_dtype(module)})

        def hook(_m, inputs, _out, name=name):
            t = inputs[0] if inputs else None
            if isinstance(t, torch.Tensor):
                seen[name] = str(t.dtype).removeprefix("torch.")
        hooks.append((compute, hook))
    if example is not None:
        forward_with_hooks(model, hooks, example)
        for row in rows:
            row["kernel_input_dtype"] = seen.get(row["layer"], "not called")
    return rows


# ------------------------------------------------------------------ size
def layer_weight_bytes(module: nn.Module, dtype: str) -> float:
    """Bytes this layer's parameters take stored in ``dtype`` (int8: per-channel fp32
    scales + fp32 bias; int4: one fp32 scale per group of 32 + fp32 bias)."""
    total = 0.0
    for pname, p in module.named_parameters():
        is_weight = "weight" in pname
        if dtype in ("fp16", "bf16") or (dtype in ("fp32",)):
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
