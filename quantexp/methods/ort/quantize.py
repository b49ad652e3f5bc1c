"""What ``ort_dynamic`` and ``ort_static`` share: ONNX Runtime quantization of the
exported fp32 ONNX model (``stage = "artifact"``), evaluated and timed in an ORT
session - the file a user deploys, not a PyTorch stand-in.

Steps (``OrtMethod.quantize_artifact``):
1. pre-process the fp32 file (``quant_pre_process``: symbolic + ONNX shape inference, then ORT graph
   optimization at ``method.graph_optimization``);
2. resolve the op types to quantize (``method.op_types`` or the family default,
   ``DEFAULT_OP_TYPES``) and refuse a list that matches no node of this graph;
3. quantize (the subclass: ``quantize_dynamic`` / calibration + ``quantize_static``);
4. refuse a result without any quantized node (never an fp32 file labelled int8);
5. per-node output error vs the fp32 graph (``layer_error``): SQNR dB, cosine and max |error| of every
   quantized compute node's output, on calibration items;
6. move the checked file into place (staged in a work folder: never half a graph in ``out_dir``).

CPU-dependent defaults (``default_reduce_range``): on x86 CPUs without VNNI, ORT's u8 x s8 kernels use
VPMADDUBSW, which adds two u8*s8 products into a *saturating* int16 (255*127*2 = 64770 > 32767); 7-bit
weights (``reduce_range``) keep the pair sum in range (255*63*2 = 32130). VNNI (VPDPBUSD) accumulates
into int32, so full 8-bit weights are safe there; ARM kernels have no such limit either.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from quantexp.config import ConfigError
from quantexp.methods.base import QuantizationMethod
from quantexp.quant.layer_error import summarize
from quantexp.quant.onnx_graph import describe_graph, iter_nodes, quantized_op, silenced_stdio

if TYPE_CHECKING:
    import onnx

    from quantexp.hardware import HostInfo
    from quantexp.methods.ort.config import OrtQuantConfig
    from quantexp.models.base import ModelBundle, Split
    from quantexp.runtimes.base import Exported

# Per method kind and model family: the op types quantized when method.op_types is
# null (None: every op type ONNX Runtime's quantizer handles).
# - dynamic cnn: MatMul only (Gemm layers are rewritten as MatMul). ConvInteger (the
#   dynamic Conv) loads and runs on ORT 1.32's CPU provider but has no fast kernel:
#   SmallCNN with it took 14.5 ms per batch of 16 vs 0.72 ms in fp32 (20x slower).
# - static transformer: MatMul/Gemm (weights) and Gather (embedding tables: MiniLM 58.7 ->
#   22.9 MB, 20.6 -> 8.0 bits/param like ort_dynamic; on the 2,000 test items accuracy
#   vs fp32 -0.75 [-1.65, +0.25] points vs -0.25 [-1.20, +0.70] without Gather, fp32
#   agreement 95.2% vs 95.5%). Quantizing every op ORT knows (Add,
#   LayerNormalization, Softmax, Where, ... each wrapped in QDQ) cost MiniLM ~23 points
#   of accuracy (0.73 -> 0.48-0.50) and was not faster (1.04x).
DEFAULT_OP_TYPES: dict[str, dict[str, list[str] | None]] = {
    "dynamic": {"cnn": ["MatMul"], "rnn": None, "transformer": None},
    "static": {"cnn": None, "rnn": None, "transformer": ["MatMul", "Gemm", "Gather"]},
}

# ort_static: op types whose outputs are not quantized, per family (method.float_output_op_types
# null). Transformers: a quantized MatMul output only feeds float ops (bias Add, GELU,
# LayerNorm), so ORT ran QLinearMatMul -> DequantizeLinear; left float, it fuses
# DequantizeLinear + MatMul into MatMulIntegerToFloat. MiniLM, A/B vs ORT fp32 on this
# host: 1.09x -> 1.26-1.29x, fp32 agreement 93.2% -> 94.4% (500 test items).
DEFAULT_FLOAT_OUTPUTS: dict[str, list[str]] = {"transformer": ["MatMul", "Gemm"]}

# Ops whose output error only mirrors their input's (data movement, pooling,
# activations ORT folds into the producer's quantization range): no table row.
_NO_ROW_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "MaxPool",
                         "AveragePool", "Split", "Slice", "Pad", "Concat", "Resize", "Relu", "Clip",
                         "LeakyRelu", "GatherElements", "TopK", "ArgMax", "CumSum", "Where"})
_FOLDED_ACTIVATIONS = ("Relu", "Clip")
_DQ_SUFFIX = "_DequantizeLinear_Output"  # onnxruntime.quantization.quant_utils.DEQUANT_OUTPUT_SUFFIX
_Q_SUFFIX = "_quantized"                 # ... TENSOR_NAME_QUANT_SUFFIX (QOperator outputs)
LAYER_ERROR_BATCH = 8


def default_reduce_range(host: HostInfo) -> bool:
    """7-bit weights on x86 without VNNI (see the module docstring), else 8-bit."""
    return host.cpu.arch in ("x86_64", "AMD64", "i386", "i686") and not host.cpu.has_vnni


def input_dtypes(model: onnx.ModelProto) -> dict[str, np.dtype]:
    """Graph input name -> numpy dtype, in graph order (initializers excluded)."""
    from onnx.helper import tensor_dtype_to_np_dtype

    inits = {i.name for i in model.graph.initializer}
    return {i.name: np.dtype(tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type))
            for i in model.graph.input if i.name not in inits}


def _calibration_reader_base():
    from onnxruntime.quantization import CalibrationDataReader

    return CalibrationDataReader


class SplitReader(_calibration_reader_base()):
    """Feeds a ``Split`` to ORT: one ``{input name: numpy batch}`` per batch, named and typed as the ONNX
    graph declares its inputs (float32 pixels, int64 token ids)."""

    def __init__(self, split: Split, dtypes: dict[str, np.dtype], batch_size: int):
        if len(dtypes) != len(split.inputs):
            raise ValueError(f"the ONNX model takes {len(dtypes)} inputs ({', '.join(dtypes)}), "
                             f"the data has {len(split.inputs)}")
        self.split, self.dtypes, self.batch_size = split, dtypes, batch_size
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def batches(self) -> Iterator[dict[str, np.ndarray]]:
        for inputs, _ in self.split.batches(self.batch_size):
            yield {name: np.ascontiguousarray(x.numpy().astype(dtype, copy=False))
                   for (name, dtype), x in zip(self.dtypes.items(), inputs)}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = self.batches()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)


class OneBatch(_calibration_reader_base()):
    """A reader of one batch: the calibrator sees the set batch by batch (histogram methods hold one)."""

    def __init__(self, feeds: dict[str, np.ndarray]):
        self.feeds: dict[str, np.ndarray] | None = feeds

    def get_next(self):
        feeds, self.feeds = self.feeds, None
        return feeds


def preprocess(src: Path, dst: Path, level: str, threads: int) -> None:
    """``quant_pre_process`` (shape inference + basic optimization); ``extended``
    adds ORT's extended fusions (written out by an ORT session), ``disabled`` skips
    optimization (shape inference only)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with silenced_stdio():  # symbolic shape inference prints every unknown dim
        quant_pre_process(str(src), str(dst), skip_optimization=level != "basic")
    if level == "extended":
        import onnxruntime as ort

        from quantexp.runtimes.onnx_runtime import session_options

        options = session_options(threads, "extended")
        options.optimized_model_filepath = str(dst)
        ort.InferenceSession(str(dst), options, providers=["CPUExecutionProvider"])


def graph_op_types(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in iter_nodes(model.graph)}


def quantized_initializer_bits(model: onnx.ModelProto) -> dict[str, int]:
    """Count of int8/uint8/int32 initializers (quantized weights / biases)."""
    import onnx

    names = {onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8",
             onnx.TensorProto.INT32: "int32"}
    counts: dict[str, int] = {}
    for init in model.graph.initializer:
        if init.data_type in names and len(init.dims) and int(np.prod(init.dims)) > 1:
            key = f"{names[init.data_type]}_weight_tensors"
            counts[key] = counts.get(key, 0) + 1
    return counts


# -------------------------------------------------------------- layer error
def match_outputs(fp32: onnx.ModelProto, quant: onnx.ModelProto,
                  op_types: set[str]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Pair every fp32 compute node of ``op_types`` with the tensor that carries its
    output in the quantized graph. Naming follows onnxruntime.quantization:
    - QDQ: the float output keeps its name; ``<name>_DequantizeLinear_Output`` is the
      value after its QuantizeLinear/DequantizeLinear pair (what the next node reads).
      A folded Relu/Clip leaves the producer writing the activation's tensor name;
    - QOperator: ``<name>_quantized`` (int8/uint8) with ``<name>_scale`` and
      ``<name>_zero_point`` initializers; a fused Relu is compared with relu(fp32);
    - dynamic (integer ops): the float output keeps its name.
    Returns (pairs, unmatched {node: reason})."""
    import onnx

    consumers: dict[str, list] = {}
    for node in fp32.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph = fp32.graph
    elem = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.output, *graph.input]}
    produced = {o for n in iter_nodes(quant.graph) for o in n.output} | {
        i.name for i in quant.graph.input}
    inits = {i.name: i for i in quant.graph.initializer}
    pairs, unmatched = [], {}
    for index, node in enumerate(fp32.graph.node):
        if node.op_type not in op_types or node.op_type in _NO_ROW_OPS or not node.output:
            continue
        out = node.output[0]
        if elem.get(out) != onnx.TensorProto.FLOAT:
            continue  # shape/index arithmetic (Shape, Gather on shapes): not a quantized value
        after = consumers.get(out, [])
        folded = (after[0].output[0] if len(after) == 1 and after[0].op_type in _FOLDED_ACTIVATIONS
                  else None)
        name = node.name or f"{node.op_type}_{index}"
        pair = {"layer": name, "type": node.op_type}
        if folded and folded + _DQ_SUFFIX in produced:
            pair.update(ref=folded, q=folded + _DQ_SUFFIX, compared=f"after QDQ (+{after[0].op_type})")
        elif out + _DQ_SUFFIX in produced:
            pair.update(ref=out, q=out + _DQ_SUFFIX, compared="after QDQ")
        elif out + _Q_SUFFIX in produced and out + "_scale" in inits and out + "_zero_point" in inits:
            ref = folded if folded and folded not in produced else out
            pair.update(ref=ref, q=out + _Q_SUFFIX, scale=out + "_scale", zero_point=out + "_zero_point",
                        compared="dequantized int8 output" + (f" (+{after[0].op_type})" if ref != out else ""))
        elif out in produced:
            pair.update(ref=out, q=out, compared="output")
        elif folded and folded in produced:
            pair.update(ref=folded, q=folded, compared=f"output (+{after[0].op_type})")
        else:
            unmatched[name] = "its output is not in the quantized graph"
            continue
        pairs.append(pair)
    return pairs, unmatched


def _with_outputs(model: onnx.ModelProto, names: dict[str, int]) -> bytes:
    import onnx

    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    existing = {o.name for o in augmented.graph.output}
    for name, elem in names.items():
        if name not in existing:
            augmented.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
    return augmented.SerializeToString()


def layer_error(fp32_path: Path, quant_path: Path, split: Split, op_types: set[str],
                max_items: int, threads: int, graph_optimization: str) -> dict[str, Any]:
    """``{"tables": {"layer_error": rows}, <summary facts>}``: per quantized compute node,
    SQNR dB = 10 log10(sum ref^2 / sum (ref - q)^2), cosine and max |ref - q| of its
    output in the quantized graph vs the fp32 graph, on the first ``max_items`` items.
    Both graphs run with those tensors as extra outputs; ORT does not fuse a node away
    whose output is a graph output, so a QDQ group may run as DequantizeLinear -> float
    op -> QuantizeLinear here: the same quantized values, float accumulation."""
    import onnx
    import onnxruntime as ort

    from quantexp.runtimes.onnx_runtime import session_options

    fp32, quant = onnx.load(str(fp32_path)), onnx.load(str(quant_path))
    pairs, unmatched = match_outputs(fp32, quant, op_types)
    if not pairs:
        return {"layer_error": "not measured: no quantized node output matched the fp32 graph",
                **summarize([], unmatched)}
    inits = {i.name: i for i in quant.graph.initializer}
    f = onnx.TensorProto.FLOAT
    q_outputs = {p["q"]: (inits[p["zero_point"]].data_type if "scale" in p else f) for p in pairs}
    ref_outputs = {p["ref"]: f for p in pairs}
    options = session_options(threads, graph_optimization)
    providers = ["CPUExecutionProvider"]
    ref_sess = ort.InferenceSession(_with_outputs(fp32, ref_outputs), options, providers=providers)
    q_sess = ort.InferenceSession(_with_outputs(quant, q_outputs), options, providers=providers)
    qparams = {p["q"]: (onnx.numpy_helper.to_array(inits[p["scale"]]).astype(np.float64),
                        onnx.numpy_helper.to_array(inits[p["zero_point"]]).astype(np.float64))
               for p in pairs if "scale" in p}
    ref_names, q_names = list(ref_outputs), list(q_outputs)
    acc = {p["layer"]: np.zeros(6) for p in pairs}  # signal, noise, dot, q_sq, max_abs, elements
    subset = split.subset(list(range(min(max_items, len(split)))))
    reader = SplitReader(subset, input_dtypes(fp32), LAYER_ERROR_BATCH)
    for feeds in reader.batches():
        refs = dict(zip(ref_names, ref_sess.run(ref_names, feeds)))
        outs = dict(zip(q_names, q_sess.run(q_names, feeds)))
        for p in pairs:
            ref = refs[p["ref"]].astype(np.float64)
            got = outs[p["q"]].astype(np.float64)
            if p["q"] in qparams:
                scale, zero_point = qparams[p["q"]]
                got = (got - zero_point) * scale
            if ref.shape != got.shape:
                unmatched[p["layer"]] = f"shape {got.shape} vs fp32 {ref.shape}"
                continue
            err = ref - got
            a = acc[p["layer"]]
            a[0] += (ref * ref).sum()
            a[1] += (err * err).sum()
            a[2] += (ref * got).sum()
            a[3] += (got * got).sum()
            a[4] = max(a[4], float(np.abs(err).max()) if err.size else 0.0)
            a[5] += err.size
    rows = []
    for p in pairs:
        if p["layer"] in unmatched:
            continue
        signal, noise, dot, q_sq, max_abs, elements = acc[p["layer"]]
        sqnr = math.inf if noise == 0 else (-math.inf if signal == 0 else 10 * math.log10(signal / noise))
        cosine = (1.0 if signal == q_sq else 0.0) if signal == 0 or q_sq == 0 else dot / math.sqrt(signal * q_sq)
        rows.append({"layer": p["layer"], "type": p["type"], "tensor": p["ref"], "compared": p["compared"],
                     "sqnr_db": sqnr, "cosine": cosine, "max_abs_err": max_abs, "elements": int(elements)})
    return {"tables": {"layer_error": rows}, "layer_error_items": len(subset),
            **summarize(rows, unmatched)}


# ------------------------------------------------------------------ method
class OrtMethod(QuantizationMethod):
    """Template for the ORT methods: pre-process, resolve op types, quantize (subclass), check, measure."""

    stage = "artifact"
    # ort_static calibrates on it; ort_dynamic uses it only for the layer-error table.
    needs_calibration = True
    kind: ClassVar[str] = "abstract"  # "dynamic" | "static"
    cfg: OrtQuantConfig

    @property
    def reduce_range(self) -> bool:
        return default_reduce_range(self.host) if self.cfg.reduce_range is None else self.cfg.reduce_range

    def op_types(self, family: str, present: set[str]) -> list[str] | None:
        """The op types to quantize (None: all ORT handles); refuses a list that matches no node of this
        graph, naming the graph's quantizable ones."""
        from quantexp.methods.ort.config import ORT_DYNAMIC_OP_TYPES, ORT_QDQ_OP_TYPES

        chosen = self.cfg.op_types if self.cfg.op_types is not None else DEFAULT_OP_TYPES[self.kind][family]
        handled = ORT_DYNAMIC_OP_TYPES if self.kind == "dynamic" else ORT_QDQ_OP_TYPES
        if not (set(chosen or handled) & present):
            raise ConfigError(
                f"method.op_types={sorted(chosen or handled)} matches no node of this model; "
                f"its op types that method={self.cfg.name} can quantize: "
                f"{', '.join(sorted(present & handled)) or 'none'}")
        return list(chosen) if chosen is not None else None

    def _quantize(self, pre: Path, out: Path, op_types: list[str] | None, bundle: ModelBundle,
                  calibration: Split | None, work: Path) -> dict[str, Any]:
        raise NotImplementedError

    def quantize_artifact(self, fp32: Exported, bundle: ModelBundle, calibration: Split | None,
                          out_dir: Path) -> tuple[Path, dict[str, Any]]:
        import onnx

        out_dir.mkdir(parents=True, exist_ok=True)
        out = out_dir / f"{self.cfg.name}.onnx"
        level = getattr(self.cfg.graph_optimization, "value", self.cfg.graph_optimization)
        with tempfile.TemporaryDirectory(prefix=".quantexp-ort-", dir=out_dir) as tmp:  # same filesystem
            work = Path(tmp)
            pre = work / "fp32_preprocessed.onnx"
            start = time.perf_counter()
            preprocess(Path(fp32.artifact), pre, level, self.host.threads)
            preprocess_s = time.perf_counter() - start
            present = graph_op_types(onnx.load(str(pre)))
            if self.kind == "dynamic" and "Gemm" in present:
                present.add("MatMul")  # quantize_dynamic rewrites every Gemm as MatMul + Add
            op_types = self.op_types(bundle.family, present)
            start = time.perf_counter()
            staged = work / out.name  # step 6 renames it to out (atomic: same filesystem) once checked
            with silenced_stdio():  # ORT's calibrators and quantizers print progress
                info = self._quantize(pre, staged, op_types, bundle, calibration, work)
            quantize_s = time.perf_counter() - start
            quantized = onnx.load(str(staged))
            graph = describe_graph(quantized)
            if graph["quantized_nodes"] == 0:
                raise ConfigError(f"method={self.cfg.name} quantized no node of this model "
                                  f"(op types {op_types or 'all'}); refusing to report an fp32 graph "
                                  "as int8")
            q_ops = sorted({n.op_type for n in iter_nodes(quantized.graph) if quantized_op(n.op_type)})
            info = {
                "path": f"onnxruntime.quantization ({self.kind})",
                "preprocess_graph_optimization": level,
                "op_types": ",".join(op_types) if op_types else "all",
                "per_channel": self.cfg.per_channel,
                "weight_type": getattr(self.cfg.weight_type, "value", self.cfg.weight_type),
                "reduce_range": self.reduce_range,
                "reduce_range_auto": self.cfg.reduce_range is None,
                "host_vnni": self.host.cpu.has_vnni,
                "quantized_nodes": graph["quantized_nodes"],
                "quantized_op_types": ",".join(q_ops),
                **quantized_initializer_bits(quantized),
                "preprocess_s": preprocess_s,
                "ort_quantize_s": quantize_s,
                **info,
            }
            if self.cfg.layer_error_items > 0:
                if calibration is None:
                    info["layer_error"] = "not measured: no calibration inputs"
                else:
                    from quantexp.methods.ort.config import ORT_DYNAMIC_OP_TYPES, ORT_QDQ_OP_TYPES

                    handled = ORT_DYNAMIC_OP_TYPES if self.kind == "dynamic" else ORT_QDQ_OP_TYPES
                    targets = set(op_types) if op_types else set(present) & handled
                    if self.kind == "dynamic" and "MatMul" in targets:
                        targets.add("Gemm")  # quantized as MatMul (see op_types)
                    runtime = getattr(fp32, "runtime", None)
                    info.update(layer_error(pre, staged, calibration, targets, self.cfg.layer_error_items,
                                            self.host.threads,
                                            getattr(runtime, "graph_optimization", "all")))
            os.replace(staged, out)
        return out, info
