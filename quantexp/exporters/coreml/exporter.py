"""``exporter=coreml``: an ML Program ``.mlpackage`` made by coremltools.

Conversion: ``torch.export`` (graph kept as exported; if coremltools has no
converter for one of its ATen ops, the core-ATen decompositions are tried once)
-> ``coremltools.convert(convert_to="mlprogram")`` with the configured compute
precision and deployment target. Where ``torch.export`` itself fails (data-
dependent Python control flow), ``torch.jit.trace`` is used instead and the
reason is recorded (``coreml.convert_from``). An op coremltools cannot convert
ends the run with one line naming the op and the exporter (``ExportError``).

What gets converted:
- the fp32 reference (``model is bundle.model``): as is, no weight compression;
- a float model from a method (method=fp32): as is, then ``weight_compression``
  with ``coremltools.optimize.coreml`` (int8 per-channel linear, 4-bit k-means
  palettization, 4-bit block-wise linear for iOS18/macOS15 targets);
- a torch.ao int8 model (ptq_static, ptq_dynamic, qat...): coremltools cannot
  convert torch.ao modules, so it is lowered first (``lowering``): the
  package keeps the method's own int8 weight values and scales, and for static
  methods its calibrated activation scales as quantize/dequantize ops (W8A8).

Validation on any OS: the saved package is reloaded as a spec, its op and weight
dtypes are checked against what was asked (fp16/fp32 weights, constexpr
decompression ops holding int8/uint4/int4 data), op counts and compressed bytes
are recorded, bits/param comes from the stored weights, and an ANE
compatibility report is written next to the package. Prediction needs Core ML
itself, i.e. macOS: elsewhere the Exported has no runtime and says why.

coremltools is imported inside functions only (it takes seconds and prints
warnings about its tested torch version).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantexp.exporters.base import Exported, Exporter, ExportError
from quantexp.exporters.coreml.config import (
    COREML_HARDWARE_UNITS,
    ComputePrecision,
    ConvertFrom,
    WeightCompression,
)
from quantexp.files import atomic_path

OUTPUT_NAME = "logits"
# Unsupported-op messages of coremltools 9 (torch.export and TorchScript frontends).
_UNSUPPORTED = [re.compile(r"Unsupported fx node \S+, kind (\S+)"),
                re.compile(r"convert function for op '([^']+)' not implemented"),
                re.compile(r"[Uu]nsupported op(?:eration)?:? '?([\w.:]+)")]


class CoreMLValidationError(RuntimeError):
    """A saved package whose ops or weight dtypes are not what the exporter asked for."""


@contextlib.contextmanager
def _quiet():
    """coremltools prints progress bars and version warnings on every convert."""
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _ct():
    with _quiet():
        import coremltools as ct
    return ct


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


class CoreMLExporter(Exporter):
    # ------------------------------------------------------------ settings
    @property
    def compute_units(self) -> str:
        """The configured compute units, or the hardware target's (cpu -> cpu_only,
        mps -> cpu_and_gpu, ane -> cpu_and_ne)."""
        if self.cfg.compute_units is not None:
            return self.cfg.compute_units.value
        return COREML_HARDWARE_UNITS.get(self.host.target, "all")

    # -------------------------------------------------------------- export
    def export(self, model, bundle, out_dir: Path, tag: str, calibration=None) -> Exported:
        from quantexp.exporters.coreml.lowering import is_torch_ao_quantized, lower_torch_ao

        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{tag}.mlpackage"
        if path.exists():
            shutil.rmtree(path)
        info: dict[str, Any] = {"format": "mlprogram (.mlpackage)",
                                "coreml.compute_precision": self.cfg.compute_precision.value,
                                "coreml.deployment_target": self.cfg.deployment_target.value,
                                "coreml.compute_units": self.compute_units,
                                "coreml.static_batch": None if self.cfg.flexible_batch
                                else self.cfg.batch_size}
        _ct()  # the one-time coremltools import (seconds) is not conversion time
        start = time.perf_counter()
        compression = WeightCompression.none
        source, expect_int8 = model, False
        if model is bundle.model:
            info["coreml.source"] = "fp32 reference model, uncompressed"
        elif is_torch_ao_quantized(model):
            source, lowering = lower_torch_ao(model)
            expect_int8 = lowering["int8_weights"] > 0
            static = lowering["activation_quantize_points"] > 0
            info["coreml.source"] = (
                f"method={tag} torch.ao quantized model, lowered (torch.ao modules do not "
                "convert): " + ("its int8 weight values and scales kept as constexpr dequantize ops"
                                if expect_int8 else "its float16 weights kept at compute precision")
                + ("; its calibrated activation scales kept as quantize/dequantize ops (W8A8)"
                   if static else "")
                + (f"; {lowering['rnn_layers_dequantized']} dynamic LSTM/GRU layers' int8 weights "
                   f"dequantized to {self.cfg.compute_precision.value} (Core ML's recurrent ops "
                   "take no int8 weights)" if lowering["rnn_layers_dequantized"] else ""))
            info["coreml.activation_quantization"] = (
                "int8, the method's calibrated scales" if static else
                "none: torch.ao dynamic quantization (per-batch activation scales) has no Core ML "
                "form; activations compute in " + self.cfg.compute_precision.value)
            info.update({f"coreml.lowering.{k}": v for k, v in lowering.items()})
            info["coreml.lowering.max_abs_diff"] = _max_abs_diff(model, source, bundle)
        else:
            compression = self.cfg.weight_compression
            info["coreml.source"] = f"method={tag} float model"
            info["coreml.activation_quantization"] = (
                "none (activation quantization with coremltools.optimize.coreml."
                "linear_quantize_activations calibrates by running Core ML predictions, "
                "which need macOS; not applied)" if compression != WeightCompression.none else "none")
        info["coreml.weight_compression"] = compression.value
        mlmodel, how = self._convert(source, bundle, info)
        info["coreml.convert_from"] = how
        converted = time.perf_counter()
        info["coreml.convert_s"] = converted - start
        if compression != WeightCompression.none:
            mlmodel = self._compress(mlmodel, compression)
            info["coreml.compress_s"] = time.perf_counter() - converted
        with _quiet():
            with atomic_path(path, is_dir=True) as tmp:  # an .mlpackage is a directory
                mlmodel.save(str(tmp))
        saved = time.perf_counter()
        exported = self._load(path, compression, expect_int8=expect_int8, info=info)
        exported.export_time_s = saved - start
        return exported

    def load(self, path: Path) -> Exported:
        return self._load(Path(path), None, expect_int8=False, info={"format": "mlprogram (.mlpackage)"})

    # --------------------------------------------------------------- steps
    def _example(self, bundle) -> tuple[torch.Tensor, ...]:
        batch = 2 if self.cfg.flexible_batch else self.cfg.batch_size
        n = int(bundle.test.inputs[0].shape[0])
        index = torch.arange(batch) % n
        return tuple(x[index] for x in bundle.test.inputs)

    def _input_types(self, ct, bundle, example, with_shapes: bool):
        types = []
        for name, x in zip(bundle.input_names, example):
            dtype = np.float32 if x.is_floating_point() else np.int32  # Core ML has no int64 inputs
            if not with_shapes:
                types.append(ct.TensorType(name=name, dtype=dtype))
                continue
            shape = list(x.shape)
            if self.cfg.flexible_batch:
                shape[0] = ct.RangeDim(lower_bound=1, upper_bound=self.cfg.max_batch,
                                       default=self.cfg.batch_size)
            types.append(ct.TensorType(name=name, shape=ct.Shape(shape), dtype=dtype))
        return types

    def _convert(self, model, bundle, info: dict[str, Any]):
        ct = _ct()
        model = model.eval()
        example = self._example(bundle)
        what = f"{bundle.name} ({bundle.family})"
        kwargs = {"convert_to": "mlprogram", "skip_model_load": True,
                  "compute_precision": (ct.precision.FLOAT16
                                        if self.cfg.compute_precision == ComputePrecision.fp16
                                        else ct.precision.FLOAT32),
                  "minimum_deployment_target": getattr(ct.target,
                                                       self.cfg.deployment_target.value),
                  "outputs": [ct.TensorType(name=OUTPUT_NAME)]}
        source, how, export_error = None, "", None
        if self.cfg.convert_from == ConvertFrom.torch_export:
            try:
                dynamic = None
                if self.cfg.flexible_batch:
                    batch = torch.export.Dim("batch", min=1, max=self.cfg.max_batch)
                    dynamic = tuple({0: batch} for _ in example)
                with _quiet(), torch.no_grad():
                    source = torch.export.export(model, example, dynamic_shapes=dynamic)
                how = "torch.export"
            except Exception as exc:  # noqa: BLE001 - fall back to tracing, and say why
                export_error = f"{type(exc).__name__}: {_first_line(exc)}"
        if source is None:
            with _quiet(), torch.no_grad():
                try:
                    source = torch.jit.trace(model, example, check_trace=False)
                except Exception as exc:
                    raise ExportError(f"exporter=coreml cannot trace {what} with torch.jit.trace: "
                                      f"{_first_line(exc)}"
                                      + (f" (torch.export failed too: {export_error})"
                                         if export_error else "")) from exc
            how = "jit.trace" + (f" (torch.export failed: {export_error})" if export_error else "")
            kwargs["inputs"] = self._input_types(ct, bundle, example, with_shapes=True)
            return self._ct_convert(ct, source, kwargs, how, what), how
        kwargs["inputs"] = self._input_types(ct, bundle, example, with_shapes=False)
        try:  # the exported graph as it is first (aten.linear stays one Core ML linear op)
            return self._ct_convert(ct, source.run_decompositions({}), kwargs, how, what), how
        except ExportError as exc:
            if "Unsupported fx node" not in str(exc.__cause__):
                raise
            missing = getattr(exc, "op", "?")
        # An ATen op with no coremltools converter may decompose into ones that have one.
        # aten.linear stays whole: as one Core ML linear op (also over a constexpr int8
        # weight) rather than transpose + matmul + add.
        table = torch.export.default_decompositions()
        table.pop(torch.ops.aten.linear.default, None)
        how += f" + core ATen decompositions (without them: no converter for {missing})"
        return self._ct_convert(ct, source.run_decompositions(table), kwargs, how, what), how

    def _ct_convert(self, ct, source, kwargs, how: str, what: str):
        try:
            with _quiet():
                return ct.convert(source, **kwargs)
        except Exception as exc:
            op = _unsupported_op(exc)
            if op is None:
                raise ExportError(f"exporter=coreml (coremltools {ct.__version__}, from {how}) "
                                  f"cannot convert {what}: {type(exc).__name__}: "
                                  f"{_first_line(exc)}") from exc
            error = ExportError(f"exporter=coreml (coremltools {ct.__version__}, from {how}) cannot "
                                f"convert op '{op}' of {what}: no Core ML conversion for it")
            error.op = op
            raise error from exc

    def _compress(self, mlmodel, compression: WeightCompression):
        with _quiet():
            import coremltools.optimize.coreml as cto

            threshold = self.cfg.weight_threshold
            if compression == WeightCompression.int8:
                op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8",
                                                 granularity="per_channel", weight_threshold=threshold)
                return cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(global_config=op))
            if compression == WeightCompression.int4_block:
                op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4",
                                                 granularity="per_block",
                                                 block_size=self.cfg.block_size,
                                                 weight_threshold=threshold)
                return cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(global_config=op))
            op = cto.OpPalettizerConfig(mode="kmeans", nbits=4, granularity="per_tensor",
                                        weight_threshold=threshold)
            return cto.palettize_weights(mlmodel, cto.OptimizationConfig(global_config=op))

    # ---------------------------------------------------------------- load
    def _load(self, path: Path, compression: WeightCompression | None, expect_int8: bool,
              info: dict[str, Any]) -> Exported:
        from quantexp.exporters.coreml.ane_report import ane_report
        from quantexp.exporters.coreml.mlprogram import inspect_package

        start = time.perf_counter()
        ct = _ct()
        with _quiet():
            spec = ct.utils.load_spec(str(path))  # the saved package, read back from disk
        summary = inspect_package(path, spec)
        info = dict(info)
        info.update(validate_package(summary, self.cfg.compute_precision, compression, expect_int8))
        runtime, not_measured = None, self.cfg.unmeasurable_reason()
        if not_measured is None:  # macOS: Core ML itself compiles and loads with the compute units
            from quantexp.exporters.coreml.runtime import CoreMLRuntime

            runtime = CoreMLRuntime(path, self.compute_units, summary)
        else:
            info["runtime"] = "coreml (not run)"
        loaded = time.perf_counter()
        report = ane_report(summary, self.compute_units, self.cfg.compute_precision.value,
                            self.cfg.deployment_target.value,
                            not_placed_reason=not_measured)
        reports = report.write(path.with_suffix(""))
        info.update({"ane.verdict": report.verdict, "ane.compute_ops": report.compute_ops,
                     "ane.ops_flagged": report.ops_flagged,
                     "ane.findings": sorted(report.checks())})
        return Exported(runtime, path, export_time_s=0.0, load_time_s=loaded - start, info=info,
                        param_bits=float(summary.param_bits), not_measured=not_measured,
                        reports=reports)


# ------------------------------------------------------------------ helpers
def _unsupported_op(exc: BaseException) -> str | None:
    text = str(exc)
    for pattern in _UNSUPPORTED:
        match = pattern.search(text)
        if match:
            return match.group(1).removesuffix(".default")
    return None


def _max_abs_diff(model, lowered, bundle, n: int = 16) -> float:
    """Largest |logit| difference between the torch.ao model and its lowered float
    graph on a few test items (the lowering should be exact up to int8 kernel rounding)."""
    inputs = tuple(x[:n] for x in bundle.test.inputs)
    with torch.inference_mode():
        return float((model(*inputs) - lowered(*inputs)).abs().max())


# Decompression ops and the dtypes their stored data may have, per compression.
_EXPECTED = {
    WeightCompression.int8: ({"constexpr_affine_dequantize", "constexpr_blockwise_shift_scale"},
                             {"INT8", "UINT8"}),
    WeightCompression.int4_block: ({"constexpr_blockwise_shift_scale"}, {"INT4", "UINT4"}),
    # iOS16/17 palettes pack indices into UINT8 bytes; iOS18 stores them as UINT4.
    WeightCompression.palettize4: ({"constexpr_lut_to_dense"}, {"UINT4", "UINT8"}),
}
_DATA_ROLES = {"quantized_data", "data", "indices"}


def validate_package(summary, precision: ComputePrecision,
                     compression: WeightCompression | None, expect_int8: bool) -> dict[str, Any]:
    """Check the reloaded package against what was asked; raise CoreMLValidationError
    on a mismatch, return the facts (op counts, dtypes, bytes) otherwise."""
    problems = []
    float_dtype = "FLOAT16" if precision == ComputePrecision.fp16 else "FLOAT32"
    wrong = [v for v in summary.dense_float_weights if v.dtype != float_dtype]
    if wrong:
        problems.append(f"{len(wrong)} float weights are not {float_dtype} (e.g. {wrong[0].op}: "
                        f"{wrong[0].dtype})")
    ops = summary.decompression_ops
    data = [v for v in summary.compressed_values if v.role in _DATA_ROLES]
    if compression is not None and compression != WeightCompression.none:
        kinds, dtypes = _EXPECTED[compression]
        if not ops:
            problems.append(f"weight_compression={compression.value} left no compressed weight "
                            "(every weight below weight_threshold, or none compressible)")
        if any(op.type not in kinds for op in ops):
            problems.append(f"unexpected decompression ops {sorted({op.type for op in ops})} for "
                            f"{compression.value}")
        bad = [v for v in data if v.dtype not in dtypes]
        if bad:
            problems.append(f"{compression.value} data stored as {bad[0].dtype} ({bad[0].op})")
        if compression == WeightCompression.palettize4:
            luts = [v for v in summary.compressed_values if v.role == "lut"]
            if not luts or any(16 not in v.shape[-2:] for v in luts):
                problems.append("palettize4 look-up tables do not have 16 entries")
    elif compression == WeightCompression.none and ops and not expect_int8:
        problems.append(f"{len(ops)} compressed weights in a package exported without compression")
    if expect_int8:
        bad = [v for v in data if v.dtype not in ("INT8", "UINT8")]
        if not ops or bad:
            problems.append("the method's int8 weights are not stored as int8 constexpr data")
    if problems:
        raise CoreMLValidationError(f"{summary.path.name}: " + "; ".join(problems))
    d = summary.to_dict()
    return {
        "coreml.validated": True,
        "coreml.spec_version": d["spec_version"],
        "coreml.opset": ",".join(sorted(set(d["opsets"].values()))),
        "coreml.op_counts": d["op_counts"],
        "coreml.weight_op_counts": d["weight_op_counts"],
        "coreml.compute_op_output_dtypes": d["compute_op_output_dtypes"],
        "coreml.param_bytes_by_dtype": d["param_bytes_by_dtype"],
        "coreml.compressed_weights": d["compressed_weights"],
        "coreml.compressed_bytes": d["compressed_bytes"],
        "coreml.dense_float_weights": d["dense_float_weights"],
        "coreml.weight_file_bytes": d["weight_file_bytes"],
        "coreml.inputs": d["inputs"],
    }


__all__ = ["CoreMLExporter", "CoreMLValidationError", "validate_package"]
