"""ONNX Runtime methods: ``dynamic`` (method=ort_dynamic) and ``static``
(method=ort_static), which rewrite the exported fp32 ONNX file; ``quantize`` holds
what both share (pre-processing, calibration readers, the per-node error table)."""
