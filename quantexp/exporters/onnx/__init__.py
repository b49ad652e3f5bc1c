"""exporter=onnx: torch.onnx.export + an ONNX Runtime session, with a parity check."""
