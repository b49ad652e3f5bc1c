"""ONNX graph facts read by both the ONNX exporter and the ONNX Runtime methods:
which ops are quantized, every node (subgraphs included), the stored bits of a
graph's parameters, a short description, and a guard that silences the C++ logs
torch's exporter and ORT's quantizer print."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx


def quantized_op(op_type: str) -> bool:
    """Ops that carry int8 data or compute: QDQ pairs, QOperator ops (QLinear*, QGemm,
    QAttention), integer ops (MatMulInteger, ConvInteger, DynamicQuantize*)."""
    return (op_type in ("QuantizeLinear", "DequantizeLinear", "QGemm", "QAttention")
            or op_type.startswith(("QLinear", "DynamicQuantize"))
            or "Integer" in op_type)


def iter_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node, including those of subgraphs (If/Loop/Scan bodies)."""
    import onnx

    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from iter_nodes(g)


def _tensor_bits(tensor: onnx.TensorProto) -> int:
    import numpy as np
    import onnx

    numel = int(np.prod(tensor.dims)) if len(tensor.dims) else 1
    four_bit = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1")
                if hasattr(onnx.TensorProto, n)}
    if tensor.data_type in four_bit:
        return numel * 4
    return numel * 8 * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize


def onnx_param_bits(model: onnx.ModelProto) -> int:
    """Stored bits of the parameters of an ONNX graph: initializers and ``Constant``
    node tensors (the TorchScript exporter puts int8 weights in Constant nodes).

    Counted: every floating, int8/uint8 (quantized weights) and int32 (quantized
    biases) tensor that some node reads, plus every scale/zero point a
    QuantizeLinear/DequantizeLinear reads (quantization overhead counts). Not
    counted: int64/bool tensors (shapes, axes, indices) and scalar constants that
    are not quantization parameters (graph arithmetic such as 1/sqrt(d)), so an
    fp32 export stores exactly 32 bits per parameter - per parameter the graph uses:
    parameters the forward pass never reads are not exported (MiniLM's BERT pooler,
    147,840 parameters, is unused by mean pooling: 31.79 bits/param). Each named
    tensor counts once however many nodes read it."""
    import onnx

    P = onnx.TensorProto
    counted_types = {P.FLOAT, P.FLOAT16, P.BFLOAT16, P.DOUBLE, P.INT8, P.UINT8, P.INT32, P.INT16,
                     P.UINT16}
    counted_types |= {getattr(P, n) for n in ("INT4", "UINT4", "FLOAT8E4M3FN", "FLOAT4E2M1")
                      if hasattr(P, n)}
    tensors: dict[str, onnx.TensorProto] = {}

    def collect(graph: onnx.GraphProto) -> None:
        for init in graph.initializer:
            tensors[init.name] = init
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for attr in node.attribute:
                    if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                        tensors[node.output[0]] = attr.t
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    collect(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        collect(g)

    collect(model.graph)
    # Constant -> Identity chains (the exporter shares qparams this way) keep the source name.
    qparams: set[str] = set()
    used: set[str] = set()
    alias = {n.output[0]: n.input[0] for n in iter_nodes(model.graph)
             if n.op_type == "Identity" and n.input and n.input[0] in tensors}
    for node in iter_nodes(model.graph):
        names = [alias.get(i, i) for i in node.input if i]
        used.update(names)
        if node.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"):
            qparams.update(names[1:])
    bits = 0
    for name, tensor in tensors.items():
        if name not in used or tensor.data_type not in counted_types:
            continue
        if all(d == 1 for d in tensor.dims) and name not in qparams:
            continue  # a scalar that is not a quantization parameter: graph arithmetic
        bits += _tensor_bits(tensor)
    return bits


def describe_graph(model: onnx.ModelProto) -> dict[str, Any]:
    nodes = list(iter_nodes(model.graph))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"format": "onnx", "opset": opset, "nodes": len(nodes),
            "quantized_nodes": sum(quantized_op(n.op_type) for n in nodes),
            "producer": f"{model.producer_name} {model.producer_version}".strip()}


@contextlib.contextmanager
def silenced_stdio() -> Iterator[None]:
    """Send file descriptors 1 and 2 to a scratch file. torch's TorchScript exporter
    always enables its C++ ONNX log (``setup_onnx_logging`` tests the function object
    ``_jit_is_onnx_log_enabled``, which is truthy) and prints the whole Torch IR graph
    to stdout when a conversion fails; the one-line ExportError says what matters."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
