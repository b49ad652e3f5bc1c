"""``ort_dynamic``: ONNX Runtime dynamic quantization of the exported fp32 ONNX model.

``onnxruntime.quantization.quantize_dynamic``: weights stored as int8 (or uint8),
activations quantized to uint8 per batch at run time (DynamicQuantizeLinear ->
MatMulInteger / ConvInteger / DynamicQuantizeLSTM -> rescale). No calibration: the
drawn calibration items only feed the per-node error table. Only ``MatMul`` nodes
whose second input is a weight are quantized (``MatMulConstBOnly``, ORT's dynamic
default): an activation x activation MatMul (attention scores) would need both sides
quantized per batch for no storage gain.
"""

from __future__ import annotations

from quantexp.methods.ort.quantize import OrtMethod


class OrtDynamic(OrtMethod):
    kind = "dynamic"

    def _quantize(self, pre, out, op_types, bundle, calibration, work):
        from onnxruntime.quantization import QuantType, quantize_dynamic

        weight_type = QuantType.QInt8 if self.cfg.weight_type.value == "s8" else QuantType.QUInt8
        quantize_dynamic(str(pre), str(out), op_types_to_quantize=op_types,
                         per_channel=self.cfg.per_channel, reduce_range=self.reduce_range,
                         weight_type=weight_type, extra_options={"MatMulConstBOnly": True})
        return {"activation_type": "u8 (dynamic)"}
