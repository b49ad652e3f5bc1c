"""exporter=coreml: coremltools ML Program packages; ``lowering`` (torch.ao int8 ->
Core ML W8A8), ``mlprogram`` and ``ane_report`` (package inspection and the Neural
Engine report), ``runtime`` (prediction, macOS only)."""
