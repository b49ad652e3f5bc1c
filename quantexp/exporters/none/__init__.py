"""exporter=none: the PyTorch module itself, saved as TorchScript and loaded back."""
