"""``ort_static``: ONNX Runtime static quantization of the exported fp32 ONNX model.

Weights and activations int8; activation ranges come from running the fp32 graph on
the calibration set (``method.calibration``: size, seed, batch_size), read batch by
batch through ``SplitReader`` in the graph's input names and dtypes. The calibration
runs here (``create_calibrator``), not inside ``quantize_static``, for two reasons:
- memory: the histogram methods (entropy, percentile) keep every intermediate tensor
  of what they are fed; fed one batch at a time they hold one batch;
- entropy: ``quantize_static`` builds its entropy calibrator with 128 histogram bins
  and 128 quantized bins, which leaves exactly one candidate threshold (the full
  range): MinMax under another name (measured: identical models). Here it searches
  ``ENTROPY_BINS`` bins for the KL-optimal threshold (MiniLM, 256 items: ~25 s more
  than MinMax).
The ranges go to ``quantize_static`` through its calibration cache file.

Format: QDQ (default; ORT fuses DequantizeLinear -> op -> QuantizeLinear into int8
kernels when the session's graph optimization is extended or all) or QOperator
(QLinearConv, QLinearMatMul, ... written into the file).
"""

from __future__ import annotations

from pathlib import Path

from quantexp.methods.ort.quantize import (
    DEFAULT_FLOAT_OUTPUTS,
    OneBatch,
    OrtMethod,
    SplitReader,
    input_dtypes,
)

# Histogram bins of the entropy search (the KL search tries every symmetric
# threshold from 128 quantized bins up to all bins: (ENTROPY_BINS - 128) / 2 + 1 of them).
ENTROPY_BINS = 512
ENTROPY_QUANTIZED_BINS = 128


class OrtStatic(OrtMethod):
    kind = "static"

    def _quantize(self, pre, out, op_types, bundle, calibration, work):
        import onnx
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.calibrate import (
            create_calibrator,
            save_tensors_data,
        )

        cfg = self.cfg
        qtype = {"s8": QuantType.QInt8, "u8": QuantType.QUInt8}
        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[cfg.calibrate_method.value]
        extra: dict = {}
        if method == CalibrationMethod.Entropy:
            extra = {"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS}
        elif method == CalibrationMethod.Percentile and cfg.percentile is not None:
            extra = {"percentile": cfg.percentile}
        reader = SplitReader(calibration, input_dtypes(onnx.load(str(pre))), cfg.calibration.batch_size)
        calibrator = create_calibrator(Path(pre), op_types or [],
                                       augmented_model_path=str(work / "augmented.onnx"),
                                       calibrate_method=method, providers=["CPUExecutionProvider"],
                                       extra_options=extra)
        for feeds in reader.batches():
            calibrator.collect_data(OneBatch(feeds))
        ranges = calibrator.compute_data()
        cache = work / "calibration.json"
        save_tensors_data(ranges, cache)
        del calibrator
        fmt = QuantFormat.QDQ if cfg.quant_format.value == "qdq" else QuantFormat.QOperator
        float_outputs = list(cfg.float_output_op_types if cfg.float_output_op_types is not None
                             else DEFAULT_FLOAT_OUTPUTS.get(bundle.family, []))
        # The QDQ quantizer ignores ORT's MatMulConstBOnly option: exclude those nodes by name.
        excluded = activation_matmuls(onnx.load(str(pre))) if cfg.matmul_const_b_only else []
        quantize_static(str(pre), str(out), calibration_data_reader=None, quant_format=fmt,
                        op_types_to_quantize=op_types, per_channel=cfg.per_channel,
                        reduce_range=self.reduce_range, activation_type=qtype[cfg.activation_type.value],
                        weight_type=qtype[cfg.weight_type.value], calibrate_method=method,
                        calibration_cache_path=cache, nodes_to_exclude=excluded,
                        extra_options={"MatMulConstBOnly": cfg.matmul_const_b_only,
                                       "OpTypesToExcludeOutputQuantization": float_outputs})
        return {"quant_format": cfg.quant_format.value, "activation_type": cfg.activation_type.value,
                "calibrate_method": cfg.calibrate_method.value, "matmul_const_b_only": cfg.matmul_const_b_only,
                "float_output_op_types": ",".join(float_outputs) or "none",
                "activation_matmuls_kept_float": len(excluded),
                "calibration_items": len(calibration), "calibrated_tensors": len(ranges.data)}


def activation_matmuls(model) -> list[str]:
    """Names of MatMul nodes whose second input is not a stored weight."""
    weights = {i.name for i in model.graph.initializer}
    weights |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] not in weights]
