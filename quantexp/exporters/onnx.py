"""``exporter=onnx``: the model as an ONNX file, run by ONNX Runtime.

Export uses ``torch.onnx.export(..., dynamo=False)`` (the TorchScript-based
exporter) with a dynamic batch axis, so evaluation batches of any size run.
Why not the dynamo exporter (torch 2.13's default): ``torch.export`` cannot
trace torch.ao's packed int8 parameters (``LinearPackedParamsBase`` /
``Conv2dPackedParamsBase`` are TorchScript classes), so it fails on every
PyTorch int8 model; it is also ~15x slower on the fp32 CNN (15 s vs 1 s).

What the TorchScript exporter does with PyTorch's quantized models (torch 2.13):
- ``ptq_static`` (FX or eager int8 with quant/dequant stubs): exported as a QDQ
  graph - int8 weights in ``DequantizeLinear`` nodes, activations through
  ``QuantizeLinear``/``DequantizeLinear`` pairs with the calibrated scales. ORT
  runs it and matches the PyTorch int8 model (CNN: max |diff| 0.008, top-1 100%).
- ``ptq_dynamic``: ``quantized::linear_dynamic`` has no ONNX symbolic: refused by
  the compatibility check (``PTQDynamicConfig.exporters``), and here as well.
- bitsandbytes layers: no ONNX symbolic for their kernels: refused.
An int8 model is never exported as an fp32 graph: if the PyTorch model holds
quantized state and the ONNX graph has no quantized op, export fails.

Every artifact is checked (``onnx.checker``) and loaded into an ORT session
(``OnnxRuntime``); the loaded session is what the pipeline evaluates and times.
After export, a parity check runs the in-memory PyTorch model and the ORT
session on the first ``parity_items`` test items (never used for training or
calibration) and reports max |diff|, cosine and top-1 agreement of the logits.

Conversion failures (an operator without an ONNX symbolic), a missing file, a
file that is not ONNX or that ORT cannot load end with ``ExportError``: one line
naming the exporter and the operator or file, not the exporter's stack trace.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from quantexp.exporters.base import Exported, Exporter, ExportError, register
from quantexp.runtimes.onnx_runtime import (
    OnnxRuntime,
    ProviderUnavailable,
    providers_for,
)

if TYPE_CHECKING:
    import onnx

    from quantexp.config import OnnxExporterConfig
    from quantexp.models.base import ModelBundle, Split

EXPORTER = "torch.onnx.export (TorchScript-based, dynamo=False)"
OUTPUT_NAME = "logits"

# Module namespaces whose layers hold quantized state.
_QUANTIZED_MODULES = ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized", "torch.nn.quantized",
                      "torch.ao.nn.sparse.quantized")
_UNEXPORTABLE_MODULES = {"bitsandbytes": "bitsandbytes layers have no ONNX symbolic for their kernels"}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    # ORT prefixes its errors with "[ONNXRuntimeError] : 1 : FAIL : "
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    return (text.splitlines() or [type(exc).__name__])[0][:400]


# ------------------------------------------------------------- graph facts
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


# ------------------------------------------------------------ model facts
def quantized_state(model: nn.Module) -> str | None:
    """Where ``model`` holds quantized state (a layer or tensor name), or None."""
    for name, module in model.named_modules():
        if type(module).__module__.startswith(_QUANTIZED_MODULES):
            return f"{name or 'model'} ({type(module).__name__})"
    for name, t in chain(model.named_parameters(), model.named_buffers()):
        subclass = type(t) not in (torch.Tensor, nn.Parameter)  # torchao quantized tensors
        if t.is_quantized or t.dtype in (torch.int8, torch.uint8) or (
                subclass and type(t).__module__.startswith("torchao")):
            return name
    return None


def refuse_unexportable(model: nn.Module, what: str = "the model") -> None:
    for name, module in model.named_modules():
        root = type(module).__module__.split(".")[0]
        if root in _UNEXPORTABLE_MODULES:
            raise ExportError(f"exporter=onnx cannot convert {what}: {name} "
                              f"({type(module).__name__}): {_UNEXPORTABLE_MODULES[root]}; "
                              "use exporter=none")


# ----------------------------------------------------------------- parity
@torch.inference_mode()
def parity(model: nn.Module, runtime: OnnxRuntime, inputs: tuple[torch.Tensor, ...]) -> dict[str, float]:
    """Logits of the in-memory model (the one exported: int8 for ptq_static) vs the
    ORT session on the same inputs. ``parity.cosine`` is over all logits of the batch."""
    ref = model.eval()(*inputs).float()
    got = runtime(*inputs).float()
    if ref.shape != got.shape:
        raise ExportError(f"the ONNX model returns logits of shape {tuple(got.shape)}, "
                          f"the PyTorch model {tuple(ref.shape)}")
    err = (ref - got).abs()
    cosine = torch.nn.functional.cosine_similarity(ref.flatten(), got.flatten(), dim=0)
    return {
        "parity.items": int(ref.shape[0]),
        "parity.max_abs_err": float(err.max()),
        "parity.mean_abs_err": float(err.mean()),
        "parity.cosine": float(cosine),
        "parity.top1_agreement": float((ref.argmax(-1) == got.argmax(-1)).float().mean()),
        "parity.ref_max_abs": float(ref.abs().max()),
    }


# --------------------------------------------------------------- exporter
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


def refuse_dynamic_int8(model: nn.Module, what: str) -> None:
    """PyTorch's dynamic int8 modules run ops torch.onnx cannot convert; say which
    before tracing (the LSTM's failure would otherwise be an opaque ScriptObject error)."""
    ops = {"Linear": "quantized::linear_dynamic", "LSTM": "quantized::quantized_lstm",
           "GRU": "quantized::quantized_gru"}
    for name, module in model.named_modules():
        if type(module).__module__.startswith("torch.ao.nn.quantized.dynamic"):
            op = ops.get(type(module).__name__, f"dynamic {type(module).__name__}")
            raise ExportError(
                f"exporter=onnx cannot convert {what}: operator {op!r} of {name} (torch.ao dynamic "
                f"int8 {type(module).__name__}) has no ONNX symbolic in {EXPORTER}; use "
                "method=ort_dynamic to quantize the ONNX model with ONNX Runtime instead")


def torch_to_onnx(model: nn.Module, example: tuple[torch.Tensor, ...], input_names: list[str],
                  path: Path, opset: int, what: str = "the model") -> None:
    """``torch.onnx.export`` with a dynamic batch axis; conversion failures become
    one-line ``ExportError``s naming the model (``what``), the exporter and the operator."""
    from torch.onnx.errors import UnsupportedOperatorError

    refuse_dynamic_int8(model, what)
    names = [*input_names, OUTPUT_NAME]
    try:
        with warnings.catch_warnings(), torch.no_grad(), silenced_stdio():
            warnings.simplefilter("ignore")  # tracer / deprecation warnings
            torch.onnx.export(model.eval(), example, str(path), input_names=list(input_names),
                              output_names=[OUTPUT_NAME], opset_version=opset, dynamo=False,
                              do_constant_folding=True,
                              dynamic_axes={name: {0: "batch"} for name in names})
    except UnsupportedOperatorError as exc:
        match = re.search(r"operator '([^']+)'", str(exc))
        op = match.group(1) if match else _first_line(exc)
        raise ExportError(f"exporter=onnx cannot convert {what}: operator {op!r} has no ONNX "
                          f"symbolic at opset {opset} in {EXPORTER}") from exc
    except Exception as exc:
        raise ExportError(f"exporter=onnx cannot convert {what} with {EXPORTER} at opset {opset}: "
                          f"{type(exc).__name__}: {_first_line(exc)}") from exc


@register("onnx")
class OnnxExporter(Exporter):
    cfg: OnnxExporterConfig

    def __init__(self, cfg, host):
        super().__init__(cfg, host)
        providers_for(host.target)  # hardware=cuda without the CUDA provider: refused now
        self.input_names: list[str] | None = None

    @property
    def graph_optimization(self) -> str:
        level = self.cfg.graph_optimization
        return getattr(level, "value", str(level))

    def export(self, model: nn.Module, bundle: ModelBundle, out_dir: Path, tag: str,
               calibration: Split | None = None) -> Exported:
        refuse_unexportable(model, f"{bundle.name} ({bundle.family}, {tag})")
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{tag}.onnx"
        self.input_names = list(bundle.input_names)
        start = time.perf_counter()
        torch_to_onnx(model, bundle.example_inputs(2), self.input_names, path, self.cfg.opset,
                      what=f"{bundle.name} ({bundle.family}, {tag})")
        export_time = time.perf_counter() - start
        exported = self.load(path)
        exported.export_time_s = export_time
        where = quantized_state(model)
        if where is not None and exported.info["quantized_nodes"] == 0:
            raise ExportError(f"exporter=onnx produced an fp32 graph for a quantized model "
                              f"(quantized state in {where}); refusing to report it as int8")
        if self.cfg.parity_items > 0:
            facts = parity(model, exported.runtime, bundle.example_inputs(self.cfg.parity_items))
            exported.info.update(facts)
            limit = self.cfg.fp32_tolerance * max(1.0, facts["parity.ref_max_abs"])
            # A float graph must reproduce the float model; an int8 graph (ORT's integer
            # kernels vs fbgemm's requantization rounding) is compared, not gated.
            if where is None and not facts["parity.max_abs_err"] <= limit:
                raise ExportError(
                    f"exporter=onnx: the ONNX model of {tag} does not reproduce the PyTorch model "
                    f"(max |logit error| {facts['parity.max_abs_err']:.3g} > {limit:.3g} on "
                    f"{facts['parity.items']} test items): broken conversion")
        return exported

    def load(self, path: Path) -> Exported:
        """Check, load into ORT, describe; any failure is one ``ExportError`` line."""
        import onnx

        path = Path(path)
        if not path.is_file():
            raise ExportError(f"ONNX model {path} does not exist")
        try:
            proto = onnx.load(str(path))
        except Exception as exc:
            raise ExportError(f"{path} is not a readable ONNX model: "
                              f"{type(exc).__name__}: {_first_line(exc)}") from exc
        try:
            onnx.checker.check_model(proto)
        except Exception as exc:
            raise ExportError(f"{path} fails the ONNX checker: {_first_line(exc)}") from exc
        start = time.perf_counter()
        try:
            runtime = OnnxRuntime(path, threads=self.host.threads,
                                  graph_optimization=self.graph_optimization, hardware=self.host.target)
        except ProviderUnavailable:
            raise
        except Exception as exc:
            raise ExportError(f"ONNX Runtime cannot load {path}: {_first_line(exc)}") from exc
        load_time = time.perf_counter() - start
        if self.input_names is not None and runtime.input_names != self.input_names:
            raise ExportError(f"{path} takes inputs {runtime.input_names}; the model's inputs are "
                              f"{self.input_names}")
        info = {**describe_graph(proto), "providers": ",".join(runtime.session.get_providers()),
                "graph_optimization": self.graph_optimization}
        return Exported(runtime, path, export_time_s=0.0, load_time_s=load_time, info=info,
                        param_bits=onnx_param_bits(proto))
