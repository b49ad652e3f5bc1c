"""exporter=tflite: litert-torch conversion, ai-edge-quantizer, the LiteRT interpreter."""
