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

import re
import time
import warnings
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from quantexp.exporters.base import Exported, Exporter, ExportError
from quantexp.files import atomic_path
from quantexp.quant.onnx_graph import describe_graph, onnx_param_bits, silenced_stdio
from quantexp.runtimes.onnx_runtime import (
    OnnxRuntime,
    ProviderUnavailable,
    providers_for,
)

if TYPE_CHECKING:

    from quantexp.exporters.onnx.config import OnnxExporterConfig
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
            with atomic_path(path) as tmp:
                torch.onnx.export(model.eval(), example, str(tmp), input_names=list(input_names),
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


# --------------------------------------------------------------- exporter
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
                                  graph_optimization=self.graph_optimization, hardware=self.host.target,
                                  inter_op=self.host.ort_inter_op, execution_mode=self.host.ort_execution_mode)
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
