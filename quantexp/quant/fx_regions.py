"""Static int8 regions of a mixed-precision model, in torch.fx graph mode.

Eager mode wraps every int8 layer in its own quantize -> int8 kernel -> dequantize, so
two adjacent int8 layers round-trip through fp32 between them. In FX graph mode the
quantized tensor flows on: ``build_fx`` gives a qconfig to the static int8 layers and
to every module that consumes an int8 region (a ReLU fused into the conv before it, a
max-pool that runs on quint8), and none to the rest (global qconfig None), so
quantize/dequantize pairs appear only where an int8 region starts or ends. The other
dtypes are swapped in first and kept out of tracing (``non_traceable_module_classes``).

Measured on the CNN (conv1..fc2 all int8): quantize -> conv1+relu -> pool ->
conv2+relu -> pool -> dequantize -> flatten -> quantize -> fc1+relu -> fc2 ->
dequantize: the one round trip left is around ``nn.Flatten``, which torch.ao 2.13
does not run on quantized tensors (the same graph as ptq_static's).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from quantexp.quant.fx_tracing import fx_graph_mode

if TYPE_CHECKING:
    from quantexp.models.base import Split


def _non_traceable() -> list[type]:
    import torch.ao.nn.quantized as nnq
    import torch.ao.nn.quantized.dynamic as nnqd

    from quantexp.quant.layer_kernels import CastWrapper, Int4Embedding, Int4WeightLinear, Int8Embedding

    return [CastWrapper, Int4WeightLinear, Int4Embedding, Int8Embedding, nnq.Embedding, nnq.EmbeddingBag,
            nnqd.LSTM, nnqd.GRU]


def int8_region_modules(model: nn.Module, int8_layers: set[str], layers: set[str],
                        leaf_types: list[type]) -> list[str]:
    """The static int8 layers plus every call_module node other than an assignable
    layer (``layers``) whose first input comes from an int8 region (propagated in graph
    order), from a symbolic trace of ``model``."""
    import torch.fx as fx

    class Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return isinstance(m, tuple(leaf_types)) or super().is_leaf_module(m, qualname)

    graph = Tracer().trace(model)
    in_region: set[fx.Node] = set()
    names: list[str] = []
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        target = str(node.target)
        if target in int8_layers:
            in_region.add(node)
            names.append(target)
        elif target not in layers and node.args and isinstance(node.args[0], fx.Node) \
                and node.args[0] in in_region:
            in_region.add(node)
            names.append(target)
    return names


def build_fx(model: nn.Module, assignment: Mapping[str, str], calibration: Split, batch_size: int,
             qconfig: Any, swap: Callable[[nn.Module, Mapping[str, str]], None]) -> tuple[nn.Module, int]:
    """(the converted GraphModule, quantize + dequantize calls in its graph). Raises
    whatever torch.fx raises on a model it cannot trace."""
    from torch.ao.quantization import QConfigMapping
    from torch.ao.quantization.fx.custom_config import PrepareCustomConfig
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    from quantexp.quant.mixed_layers import assignable_layers, calibrate, is_static_int8

    model = copy.deepcopy(model).eval()
    layers = assignable_layers(model)
    static = {n for n, d in assignment.items() if is_static_int8(layers[n], d)}
    leaf_types = _non_traceable()
    with fx_graph_mode():
        swap(model, assignment)
        mapping = QConfigMapping().set_global(None)
        for name in int8_region_modules(model, static, set(layers), leaf_types):
            mapping.set_module_name(name, qconfig)
        example = next(iter(calibration.batches(batch_size)))[0]
        custom = PrepareCustomConfig().set_non_traceable_module_classes(leaf_types)
        prepared = prepare_fx(model, mapping, example_inputs=example, prepare_custom_config=custom)
        calibrate(prepared, calibration, batch_size)
        converted = convert_fx(prepared)
    boundaries = sum(1 for node in converted.graph.nodes
                     if node.target in (torch.quantize_per_tensor, "dequantize")
                     or (node.op == "call_method" and node.target == "dequantize"))
    return converted.eval(), boundaries


def graph_mode_possible(model: nn.Module) -> bool:
    """Whether torch.fx can trace ``model`` (with the mixed layers kept whole): the
    mixed model will then be built with int8 regions."""
    try:
        int8_region_modules(model, set(), set(), _non_traceable())
    except Exception:  # noqa: BLE001 - whatever torch.fx raises on untraceable control flow
        return False
    return True


__all__ = ["build_fx", "graph_mode_possible", "int8_region_modules"]
