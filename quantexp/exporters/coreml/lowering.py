"""torch.ao int8 model -> an equivalent float graph that coremltools turns into an
int8 Core ML program, keeping the method's own numbers.

coremltools cannot convert torch.ao quantized modules (fbgemm/oneDNN packed
params, quantized tensors). It does convert the *decomposed* quantization ops:

- ``quantized_decomposed.dequantize_per_channel/per_tensor`` of an int8 weight
  buffer becomes a ``constexpr_affine_dequantize`` (iOS16/17) or
  ``constexpr_blockwise_shift_scale`` (iOS18) op holding the **same int8 values
  and scales** (an int8-weight package, not re-quantized by Core ML);
- ``quantize_per_tensor`` -> ``dequantize_per_tensor`` on an activation becomes a
  MIL ``quantize``/``dequantize`` pair with the **method's calibrated scale and
  zero point** (the W8A8 form ``linear_quantize_activations`` would produce, but
  without running Core ML predictions, so it works on Linux).

``lower_torch_ao`` rewrites a copy of the model accordingly: every quantized
Linear/Conv (static, fused ReLU, dynamic) becomes a float module computing with
its dequantized int8 weight (and re-quantizing its output with the module's own
output scale for static modules), ``Quantize``/``torch.quantize_per_tensor``
become activation quantize/dequantize pairs, ``DeQuantize`` becomes identity.
Dynamic LSTM/GRU become float LSTM/GRU with their int8 weights dequantized (Core ML's
recurrent ops take no int8 weights). Anything else from torch.ao is refused with its
name (``ExportError``).
Dynamic quantization (activations quantized per batch at run time) has no Core ML
form: those layers keep int8 weights and compute on float activations.
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from quantexp.exporters.base import ExportError

# quantized dtype -> (storage dtype, quant_min, quant_max)
_QRANGE = {torch.quint8: (torch.uint8, 0, 255), torch.qint8: (torch.int8, -128, 127)}
# torch.ao modules that hold packed params for their parent or act as identity.
_PASSIVE = frozenset({"LinearPackedParams", "Dropout"})
_AO_PREFIXES = ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized", "torch.nn.quantized",
                "torch.nn.intrinsic.quantized")


def _decomposed():
    import torch.ao.quantization.fx._decomposed

    return torch.ops.quantized_decomposed


def is_torch_ao_quantized(model: nn.Module) -> bool:
    """True if ``model`` holds torch.ao quantized modules or quantize ops (FX)."""
    if any(type(m).__module__.startswith(_AO_PREFIXES) for m in model.modules()):
        return True
    graph = getattr(model, "graph", None)
    return graph is not None and any(n.op == "call_function" and n.target is torch.quantize_per_tensor
                                     for n in graph.nodes)


class ActivationQDQ(nn.Module):
    """Quantize then dequantize an activation with fixed (calibrated) qparams."""

    def __init__(self, scale: float, zero_point: int, qdtype: torch.dtype):
        super().__init__()
        if qdtype not in _QRANGE:
            raise ExportError(f"exporter=coreml cannot lower activations of dtype {qdtype}")
        self.scale, self.zero_point = float(scale), int(zero_point)
        self.dtype, self.qmin, self.qmax = _QRANGE[qdtype]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qd = _decomposed()
        q = qd.quantize_per_tensor(x, self.scale, self.zero_point, self.qmin, self.qmax, self.dtype)
        return qd.dequantize_per_tensor(q, self.scale, self.zero_point, self.qmin, self.qmax,
                                        self.dtype)


class Int8Weight(nn.Module):
    """An int8 weight stored as int8 values + scales; ``forward()`` dequantizes it."""

    def __init__(self, qweight: torch.Tensor):
        super().__init__()
        if not qweight.is_quantized:  # fp16 dynamic Linear: a plain float weight
            self.register_buffer("value", qweight.detach().float().clone())
            self.scheme = "float"
            return
        storage, self.qmin, self.qmax = _QRANGE[qweight.dtype]
        self.storage = storage
        self.register_buffer("int_repr", qweight.int_repr().clone())
        scheme = qweight.qscheme()
        if scheme in (torch.per_channel_affine, torch.per_channel_symmetric):
            self.scheme, self.axis = "per_channel", int(qweight.q_per_channel_axis())
            self.register_buffer("scales", qweight.q_per_channel_scales().float().clone())
            self.register_buffer("zero_points",
                                 qweight.q_per_channel_zero_points().to(torch.int32).clone())
        elif scheme in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            self.scheme = "per_tensor"
            self.scale, self.zero_point = float(qweight.q_scale()), int(qweight.q_zero_point())
        else:
            raise ExportError(f"exporter=coreml cannot lower weights quantized with {scheme}")

    def forward(self) -> torch.Tensor:
        if self.scheme == "float":
            return self.value
        qd = _decomposed()
        if self.scheme == "per_channel":
            return qd.dequantize_per_channel(self.int_repr, self.scales, self.zero_points, self.axis,
                                             self.qmin, self.qmax, self.storage)
        return qd.dequantize_per_tensor(self.int_repr, self.scale, self.zero_point, self.qmin,
                                        self.qmax, self.storage)


class LoweredLayer(nn.Module):
    """A quantized Linear/Conv as float math on its dequantized int8 weight; static
    modules re-quantize their output with their own output scale/zero point."""

    def __init__(self, kind: str, qweight: torch.Tensor, bias: torch.Tensor | None, relu: bool,
                 out: ActivationQDQ | None, conv_args: dict[str, Any] | None = None):
        super().__init__()
        self.kind, self.relu, self.conv_args = kind, relu, conv_args or {}
        self.weight = Int8Weight(qweight)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(),
                                                           requires_grad=False)
        self.out = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight()
        if self.kind == "linear":
            y = F.linear(x, w, self.bias)
        else:
            y = getattr(F, self.kind)(x, w, self.bias, **self.conv_args)
        if self.relu:
            y = torch.relu(y)
        return self.out(y) if self.out is not None else y


def _lower_module(name: str, m: nn.Module) -> nn.Module | None:
    """The float replacement of torch.ao module ``m`` (None: not a torch.ao module)."""
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.intrinsic.quantized.dynamic as nniqd
    import torch.ao.nn.quantized as nnq
    import torch.ao.nn.quantized.dynamic as nnqd

    if isinstance(m, nnq.Quantize):
        return ActivationQDQ(m.scale.item(), m.zero_point.item(), m.dtype)
    if isinstance(m, nnq.DeQuantize):
        return nn.Identity()
    if isinstance(m, (nnqd.LSTM, nnqd.GRU)):
        # No int8 recurrent weights in Core ML's lstm/gru ops: the int8 values are
        # dequantized exactly and stored at the package's compute precision.
        rnn = (nn.LSTM if isinstance(m, nnqd.LSTM) else nn.GRU)(
            m.input_size, m.hidden_size, m.num_layers, bias=m.bias, batch_first=m.batch_first,
            dropout=float(m.dropout), bidirectional=m.bidirectional)
        weights = m._weight_bias()
        with torch.no_grad():
            for key, t in {**weights["weight"], **weights["bias"]}.items():
                getattr(rnn, key).copy_(t.dequantize() if t.is_quantized else t.float())
        return rnn.eval()
    if isinstance(m, (nnqd.Linear, nniqd.LinearReLU)):  # check dynamic first: it subclasses nnq.Linear
        return LoweredLayer("linear", m.weight(), m.bias(), isinstance(m, nniqd.LinearReLU), None)
    if isinstance(m, (nnq.Linear, nniq.LinearReLU)) and type(m) in (nnq.Linear, nniq.LinearReLU):
        out = ActivationQDQ(m.scale, m.zero_point, torch.quint8)
        return LoweredLayer("linear", m.weight(), m.bias(), isinstance(m, nniq.LinearReLU), out)
    convs = {nnq.Conv1d: "conv1d", nnq.Conv2d: "conv2d", nnq.Conv3d: "conv3d",
             nniq.ConvReLU1d: "conv1d", nniq.ConvReLU2d: "conv2d", nniq.ConvReLU3d: "conv3d"}
    if type(m) in convs:
        if m.padding_mode != "zeros":
            raise ExportError(f"exporter=coreml cannot lower {type(m).__name__} at {name!r} "
                              f"(padding_mode={m.padding_mode})")
        out = ActivationQDQ(m.scale, m.zero_point, torch.quint8)
        args = {"stride": m.stride, "padding": m.padding, "dilation": m.dilation, "groups": m.groups}
        relu = type(m).__name__.startswith("ConvReLU")
        return LoweredLayer(convs[type(m)], m.weight(), m.bias(), relu, out, args)
    if type(m).__module__.startswith(_AO_PREFIXES) and type(m).__name__ not in _PASSIVE:
        raise ExportError(f"exporter=coreml (torch.ao lowering) cannot lower op "
                          f"'{type(m).__module__}.{type(m).__name__}' at {name!r} to Core ML; "
                          "supported: quantized Linear/Conv (static, fused ReLU, dynamic), "
                          "dynamic LSTM/GRU, Quantize/DeQuantize")
    return None


def lower_torch_ao(model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    """A float copy of torch.ao-quantized ``model`` (see the module docstring) and
    facts about the rewrite."""
    lowered = copy.deepcopy(model).eval()
    kinds: Counter[str] = Counter()
    activation_qdq = 0
    dynamic = 0
    rnn = 0
    import torch.ao.nn.quantized.dynamic as nnqd

    def walk(parent: nn.Module, prefix: str) -> None:
        nonlocal activation_qdq, dynamic, rnn
        for leaf, m in list(parent.named_children()):
            name = f"{prefix}{leaf}"
            new = _lower_module(name, m)
            if new is None:
                walk(m, name + ".")  # not torch.ao: look inside
                continue
            setattr(parent, leaf, new)  # a replaced module's own children go with it
            kinds[type(m).__name__] += 1
            activation_qdq += isinstance(new, ActivationQDQ) or (
                isinstance(new, LoweredLayer) and new.out is not None)
            dynamic += isinstance(m, nnqd.Linear)
            rnn += isinstance(m, (nnqd.LSTM, nnqd.GRU))

    walk(lowered, "")

    graph = getattr(lowered, "graph", None)
    if graph is not None:  # an FX GraphModule from convert_fx
        activation_qdq += _rewrite_fx(lowered)
    leftover = [type(m).__name__ for m in lowered.modules()
                if type(m).__module__.startswith(_AO_PREFIXES)
                and type(m).__name__ not in _PASSIVE]
    if leftover:
        raise ExportError(f"exporter=coreml (torch.ao lowering) left torch.ao modules it cannot "
                          f"lower: {', '.join(sorted(set(leftover)))}")
    info = {
        "lowered_modules": dict(kinds),
        "int8_weights": sum(isinstance(m, Int8Weight) and m.scheme != "float"
                            for m in lowered.modules()),
        "activation_quantize_points": activation_qdq,
        "dynamic_layers": dynamic,
        "rnn_layers_dequantized": rnn,
    }
    return lowered, info


def _rewrite_fx(gm: torch.fx.GraphModule) -> int:
    """Replace ``torch.quantize_per_tensor`` nodes by ActivationQDQ modules, drop
    ``x.dequantize()`` (identity on floats), refuse quantized functional ops."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target is torch.quantize_per_tensor:
            x, scale, zero_point, dtype = (list(node.args) + [None] * 4)[:4]
            dtype = node.kwargs.get("dtype", dtype)
            scale = _attr_value(gm, scale)
            zero_point = _attr_value(gm, zero_point)
            name = f"coreml_act_qdq_{count}"
            gm.add_submodule(name, ActivationQDQ(scale, zero_point, dtype))
            with gm.graph.inserting_after(node):
                new = gm.graph.call_module(name, (x,))
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
            count += 1
        elif node.op == "call_method" and node.target == "dequantize":
            # identity on the float tensors this graph now carries; coremltools has
            # no converter for aten.dequantize on a float tensor
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
        elif node.op == "call_function" and (
                getattr(node.target, "__module__", "") == "torch._ops.quantized"
                or str(node.target).startswith("quantized.")):
            raise ExportError(f"exporter=coreml (torch.ao lowering) cannot lower op "
                              f"'{node.target}' to Core ML")
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return count


def _attr_value(gm: torch.fx.GraphModule, arg: Any) -> float | int:
    if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
        value = gm
        for part in arg.target.split("."):
            value = getattr(value, part)
        return value.item() if isinstance(value, torch.Tensor) else value
    if isinstance(arg, torch.Tensor):
        return arg.item()
    if isinstance(arg, (int, float)):
        return arg
    raise ExportError(f"exporter=coreml (torch.ao lowering) cannot read quantization parameter {arg!r}")


__all__ = ["ActivationQDQ", "LoweredLayer", "is_torch_ao_quantized", "lower_torch_ao"]
