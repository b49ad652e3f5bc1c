"""``exporter=tflite``: a ``.tflite`` file run by the LiteRT interpreter.

Conversion: litert-torch (``torch.export`` -> StableHLO -> TFLite flatbuffer, no
TensorFlow) converts the **fp32** model. torch.ao int8 modules (what ptq_static /
ptq_dynamic hand over) do not convert, so int8 TFLite is made by the TFLite
toolchain itself: ai-edge-quantizer rewrites the converted fp32 graph

* ``dynamic_int8`` (method=ptq_dynamic): int8 weights of every supported op
  (FULLY_CONNECTED, CONV_2D, EMBEDDING_LOOKUP, ...), activations quantized at run
  time by the kernels;
* ``full_int8`` (method=ptq_static): int8 weights and int8 activations with
  ranges from min/max calibration on the method's calibration set (the same
  seeded draw ptq_static used), int8 graph inputs/outputs. EMBEDDING_LOOKUP has
  no static int8 kernel; its table gets dynamic-range int8 (token ids are not
  activations to calibrate).

Which quantization an export gets: the fp32 reference (``model is bundle.model``)
is always fp32; the method's export gets ``cfg.quantization`` (``auto`` is resolved
from the method by ``TFLiteExporterConfig.check`` before any model loads).
``Exported.info`` says exactly what ran (``tflite.*``), including that the torch.ao
module from the method is not what is deployed.

Every artifact is loaded back into ``LiteRTRuntime`` and compared with the
in-memory fp32 PyTorch model on held-out test items (``parity.*``); an fp32
artifact outside ``fp32_tolerance`` is refused as a broken conversion.
``param_bits`` is read from the flatbuffer's constant buffers.

litert-torch imports jax, torchao and ai-edge-quantizer (~10-30 s): everything
heavy is imported inside functions, only when this exporter converts.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantexp.config import ConfigError, Granularity
from quantexp.exporters.base import Exported, Exporter, ExportError
from quantexp.exporters.tflite.config import TFLiteQuantization
from quantexp.exporters.tflite.runtime import LiteRTRuntime
from quantexp.files import atomic_path

# Unsupported op in litert-torch's lowering (torch 2.13 / litert-torch 0.10 wording).
_LOWERING = re.compile(r"Lowering not found:\s*(\S+)")
_EXECUTING = re.compile(r"target=(?:torch\.ops\.)?([\w.]+)")
# Ops the interpreter has no kernel for.
_RUNTIME_OP = [re.compile(r"unresolved custom op:\s*([\w.]+)", re.IGNORECASE),
               re.compile(r"Didn't find op for builtin opcode '(\w+)'"),
               re.compile(r"Op builtin_code out of range: (\d+)")]


class TFLiteExporter(Exporter):
    def __init__(self, cfg, host):
        super().__init__(cfg, host)
        # The fp32 .tflite of bundle.model, converted once per run: the fp32 reference
        # export and the int8 export both start from it.
        self._converted: dict[str, Any] | None = None

    # ------------------------------------------------------------------ export
    def export(self, model, bundle, out_dir: Path, tag: str, calibration=None) -> Exported:
        scheme = TFLiteQuantization.none if model is bundle.model else self.cfg.quantization
        if scheme == TFLiteQuantization.auto:
            raise ConfigError("exporter.quantization=auto is resolved from the method by "
                              "check_compatibility; pass none|dynamic_int8|full_int8 when "
                              "calling the exporter directly")
        if scheme == TFLiteQuantization.full_int8 and calibration is None:
            raise ConfigError("exporter=tflite quantization=full_int8 needs the method's "
                              "calibration set (method=ptq_static draws one)")
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{tag}.tflite"
        # Quantized schemes start from the fp32 model: torch.ao modules do not convert.
        source = model if scheme == TFLiteQuantization.none else bundle.model
        with _quiet():
            import litert_torch  # noqa: F401 - its first import (jax, torchao: 10-30 s) is not conversion time
        start = time.perf_counter()
        float_path, convert_s, reused = self._convert(source, bundle, out_dir,
                                                      path if scheme == TFLiteQuantization.none
                                                      else out_dir / f"{tag}.float.tflite")
        info: dict[str, Any] = {
            "format": "tflite",
            "tflite.quantization": scheme.value,
            "tflite.converter": f"litert-torch {_version('litert-torch')} (torch.export, no TensorFlow)",
            "tflite.static_batch": self.cfg.batch_size,
            "tflite.convert_s": convert_s,
        }
        quantize_s = 0.0
        if scheme != TFLiteQuantization.none:
            info["tflite.convert_reused"] = reused
            info["tflite.deployed_from"] = (
                "the fp32 model, converted by litert-torch and quantized by ai-edge-quantizer; "
                f"the PyTorch module that method={tag} produced is not what is deployed")
            q_start = time.perf_counter()
            info.update(self._quantize(float_path, path, scheme, calibration, bundle))
            quantize_s = time.perf_counter() - q_start
            info["tflite.quantize_s"] = quantize_s
        saved = time.perf_counter()
        runtime = load_runtime(path, self.host.threads, bundle.name)
        loaded = time.perf_counter()
        info.update(describe_graph(runtime))
        parity = compare_with_fp32(runtime, bundle, self.cfg.parity_items)
        info.update(parity)
        if scheme == TFLiteQuantization.none:
            self._validate_fp32(parity, bundle)
        # Conversion time of this artifact: its conversion (measured when it ran, also
        # when the fp32 conversion is reused) plus quantization and saving.
        export_s = convert_s + quantize_s if reused else saved - start
        return Exported(runtime, path, export_time_s=export_s, load_time_s=loaded - saved,
                        info=info, param_bits=tflite_param_bits(path))

    def load(self, path: Path) -> Exported:
        start = time.perf_counter()
        runtime = load_runtime(Path(path), self.host.threads, Path(path).stem)
        return Exported(runtime, Path(path), export_time_s=0.0,
                        load_time_s=time.perf_counter() - start,
                        info={"format": "tflite", **describe_graph(runtime)},
                        param_bits=tflite_param_bits(Path(path)))

    # --------------------------------------------------------------- steps
    def _convert(self, model, bundle, out_dir: Path, target: Path) -> tuple[Path, float, bool]:
        """fp32 .tflite of ``model`` at ``target``; a second request for the same model
        and batch reuses the first file (and reports its conversion time)."""
        done = self._converted
        if (done is not None and done["model"] is model and done["batch"] == self.cfg.batch_size
                and done["path"].exists()):
            return done["path"], done["seconds"], True
        example = batch_of(bundle.test.inputs, self.cfg.batch_size)
        start = time.perf_counter()
        convert_to_tflite(model, example, target, what=f"{bundle.name} ({bundle.family})")
        seconds = time.perf_counter() - start
        self._converted = {"model": model, "batch": self.cfg.batch_size, "path": target,
                           "seconds": seconds}
        return target, seconds, False

    def _quantize(self, src: Path, dst: Path, scheme: TFLiteQuantization, calibration,
                  bundle) -> dict[str, Any]:
        from ai_edge_quantizer import qtyping, quantizer

        ops = qtyping.TFLOperationName
        granularity = (qtyping.QuantGranularity.TENSORWISE
                       if self.cfg.granularity == Granularity.per_tensor
                       else qtyping.QuantGranularity.CHANNELWISE)
        q = quantizer.Quantizer(str(src))
        info: dict[str, Any] = {
            "tflite.quantizer": f"ai-edge-quantizer {_version('ai-edge-quantizer')}",
            "tflite.weight_granularity": granularity.value.lower(),
        }
        try:
            with _quiet():
                if scheme == TFLiteQuantization.dynamic_int8:
                    q.add_dynamic_config(".*", ops.ALL_SUPPORTED, 8, granularity)
                    info["tflite.recipe"] = "dynamic_wi8_afp32 (int8 weights, float activations "\
                                            "quantized at run time)"
                    result = q.quantize(enable_progress_report=False, enable_progress_bar=False)
                else:
                    q.add_static_config(".*", ops.ALL_SUPPORTED, 8, 8, granularity)
                    q.add_dynamic_config(".*", ops.EMBEDDING_LOOKUP, 8, granularity)
                    samples = calibration_samples(src, calibration, self.cfg.batch_size)
                    qsvs = q.calibrate(samples, num_threads=self.host.threads)
                    result = q.quantize(qsvs, enable_progress_report=False, enable_progress_bar=False)
                    info["tflite.recipe"] = ("static_wi8_ai8 (int8 weights, int8 activations per "
                                             "tensor, min/max calibration) + dynamic-range int8 "
                                             "EMBEDDING_LOOKUP")
                    info["tflite.calibration_items"] = len(calibration)
                    info["tflite.calibration_batches"] = len(next(iter(samples.values())))
                result.export_model(str(dst), overwrite=True)
        except Exception as exc:  # noqa: BLE001 - one line naming exporter, model and step
            raise ExportError(f"exporter=tflite cannot quantize {bundle.name} to {scheme.value} "
                              f"with ai-edge-quantizer: {_first_line(exc)}") from exc
        return info

    def _validate_fp32(self, parity: dict[str, Any], bundle) -> None:
        limit = self.cfg.fp32_tolerance * max(1.0, parity["parity.ref_max_abs"])
        if not parity["parity.max_abs_err"] <= limit:
            raise ExportError(
                f"exporter=tflite: the fp32 artifact of {bundle.name} disagrees with the PyTorch "
                f"model (max |logit error| {parity['parity.max_abs_err']:.3g} > {limit:.3g} on "
                f"{parity['parity.items']} test items): broken conversion")


# ------------------------------------------------------------------ helpers
def batch_of(inputs: tuple[torch.Tensor, ...], batch: int) -> tuple[torch.Tensor, ...]:
    """The first ``batch`` items (repeated if the set is smaller): the example the
    static-batch graph is traced with."""
    n = int(inputs[0].shape[0])
    index = torch.arange(batch) % n
    return tuple(x[index] for x in inputs)


def convert_to_tflite(model: torch.nn.Module, example: tuple[torch.Tensor, ...], path: Path,
                      what: str = "the model") -> None:
    """litert-torch conversion of ``model`` traced with ``example``, written to ``path``;
    any failure becomes a one-line ``ExportError`` naming the unsupported op."""
    with _quiet():
        import litert_torch

        try:
            with torch.no_grad():
                edge = litert_torch.convert(model.eval(), example)
            with atomic_path(path) as tmp:
                edge.export(str(tmp))
        except Exception as exc:
            raise ExportError(f"exporter=tflite cannot convert {what}: {conversion_reason(exc)}"
                              f" [litert-torch {_version('litert-torch')}]") from exc


def conversion_reason(exc: BaseException) -> str:
    """The op (and cause) from a litert-torch / torch.export failure, in one line."""
    text = str(exc)
    if match := _LOWERING.search(text):
        return f"op {match.group(1)} has no LiteRT lowering"
    first = _first_line(exc)
    if match := _EXECUTING.search(text):
        return f"{first} (while converting op {match.group(1)})"
    return first


def load_runtime(path: Path, threads: int, what: str) -> LiteRTRuntime:
    try:
        return LiteRTRuntime(path, threads)
    except Exception as exc:
        text = str(exc)
        for pattern in _RUNTIME_OP:
            if match := pattern.search(text):
                raise ExportError(f"exporter=tflite: the LiteRT interpreter has no kernel for op "
                                  f"{match.group(1)} in {what} ({path.name})") from exc
        raise ExportError(f"exporter=tflite: the LiteRT interpreter cannot load {path.name}: "
                          f"{_first_line(exc)}") from exc


def calibration_samples(float_path: Path, calibration, batch: int) -> dict[str, list[dict]]:
    """The calibration Split as ai-edge-quantizer wants it: per signature, a list of
    {input name: array} batches of the graph's static batch (the last one padded
    with repeats of its own items, which leaves min/max unchanged)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(float_path))
    (key,) = interpreter.get_signature_list()
    details = interpreter.get_signature_runner(key).get_input_details()
    names = sorted(details, key=lambda n: int(n.rsplit("_", 1)[-1]) if n.startswith("args_") else 0)
    samples = []
    for inputs, _ in calibration.batches(batch):
        padded = batch_of(inputs, batch)
        samples.append({name: x.numpy().astype(details[name]["dtype"])
                        for name, x in zip(names, padded)})
    return {key: samples}


@torch.no_grad()
def compare_with_fp32(runtime: LiteRTRuntime, bundle, items: int) -> dict[str, Any]:
    """Artifact vs the in-memory fp32 PyTorch model on the first ``items`` test items
    (held out from training and calibration)."""
    n = min(items, len(bundle.test))
    inputs = tuple(x[:n] for x in bundle.test.inputs)
    reference = bundle.model.eval()(*inputs).float()
    output = runtime(*inputs).float()
    err = (output - reference).abs()
    cosine = torch.nn.functional.cosine_similarity(output, reference, dim=-1)
    return {
        "parity.items": n,
        "parity.max_abs_err": float(err.max()),
        "parity.mean_abs_err": float(err.mean()),
        "parity.cosine_mean": float(cosine.mean()),
        "parity.cosine_min": float(cosine.min()),
        "parity.top1_agreement": float((output.argmax(-1) == reference.argmax(-1)).float().mean()),
        "parity.ref_max_abs": float(reference.abs().max()),
    }


def describe_graph(runtime: LiteRTRuntime) -> dict[str, Any]:
    """Facts read from the loaded interpreter: I/O dtypes, tensor dtypes, op counts."""
    interpreter = runtime.interpreter
    dtypes = Counter(np.dtype(d["dtype"]).name for d in interpreter.get_tensor_details())
    info: dict[str, Any] = {
        "tflite.io": "{} -> {}".format(",".join(np.dtype(d["dtype"]).name for d in runtime.inputs),
                                      np.dtype(runtime.output["dtype"]).name),
        "tflite.tensor_dtypes": ",".join(f"{k}:{v}" for k, v in sorted(dtypes.items())),
        "tflite.threads": runtime.threads,
    }
    try:  # private API of the interpreter; op counts are a nice-to-have
        ops = Counter(op["op_name"] for op in interpreter._get_ops_details())
        info["tflite.ops"] = ",".join(f"{k}:{v}" for k, v in ops.most_common())
    except Exception:
        pass
    return info


# Bits per element of the TFLite tensor types that hold parameters.
_TYPE_BITS = {"FLOAT32": 32, "FLOAT16": 16, "BFLOAT16": 16, "FLOAT64": 64, "INT8": 8, "UINT8": 8,
              "INT16": 16, "INT32": 32, "INT64": 64, "INT4": 4, "UINT4": 4, "INT2": 2, "BOOL": 8}
_FLOAT_TYPES = {"FLOAT32", "FLOAT16", "BFLOAT16", "FLOAT64"}


def tflite_param_bits(path: Path) -> int:
    """Stored bits of the parameters in a .tflite file, read from its flatbuffer.

    Counted: every constant tensor (one with a non-empty buffer) that is float, or
    that carries quantization parameters (int8 weights, int32 biases), plus those
    scales (float32) and zero points (int64). Not counted: unquantized integer/bool
    constants - shapes, permutations, slice bounds, index tables - which are graph
    structure, as ``storage_bits`` leaves index buffers out of a state_dict's
    parameters. Buffers shared by several tensors count once; constants the
    converter duplicated (e.g. a bias per unrolled LSTM step) count each time,
    because the file really stores them."""
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    data = path.read_bytes()
    model = schema.Model.GetRootAs(data, 0)
    seen: set[int] = set()
    bits = 0
    for g in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(g)
        for i in range(subgraph.TensorsLength()):
            tensor = subgraph.Tensors(i)
            index = tensor.Buffer()
            if index == 0 or index in seen:  # buffer 0 is the empty sentinel
                continue
            buffer = model.Buffers(index)
            nbytes = buffer.DataLength() or buffer.Size()  # Size: >2 GB external buffers
            if not nbytes:
                continue
            type_name = names.get(tensor.Type(), "?")
            quant = tensor.Quantization()
            n_scales = quant.ScaleLength() if quant is not None else 0
            if type_name not in _FLOAT_TYPES and not n_scales:
                continue
            if type_name not in _TYPE_BITS:
                raise ValueError(f"{path.name}: constant tensor {tensor.Name()!r} has type "
                                 f"{type_name}, which tflite_param_bits cannot account for")
            seen.add(index)
            bits += nbytes * 8 + n_scales * 32 + (quant.ZeroPointLength() if quant else 0) * 64
    return bits


@contextlib.contextmanager
def _quiet():
    """litert-torch's progress console off while this exporter works (it reads the
    variable on every message)."""
    saved = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = saved


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"
