"""The default experiment's pair for benchmarks that time it in a bare process: the CNN
quantized with ptq_static, both models saved as TorchScript as the pipeline's ``none``
exporter does and loaded back, and one timing batch. Imported by the scripts beside it
(a script's own folder is on its import path)."""

from __future__ import annotations

import io
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def default_pair():
    """(bundle, fp32, int8, batch, exp): the model bundle, the two loaded TorchScript
    modules, a tuple of inputs of ``bench.batch_size`` items, and the composed config."""
    import torch

    from quantexp.api import compose, validate
    from quantexp.hardware.probe import probe_host
    from quantexp.methods import get_method
    from quantexp.models import load_model
    from quantexp.quant.calibration import draw_calibration

    exp = validate(compose([]))
    host = probe_host(exp.hardware)
    bundle = load_model(exp.model, exp.seed, ROOT / ".cache" / "quantexp")
    calibration = draw_calibration(bundle.train, bundle.test, exp.method.calibration.size, exp.seed)
    quantized = get_method("ptq_static")(exp.method, exp.precision, host).quantize(bundle, calibration)

    def scripted(module):
        buffer = io.BytesIO()
        torch.jit.save(torch.jit.trace(module.eval(), bundle.example_inputs(2), check_trace=False), buffer)
        buffer.seek(0)
        return torch.jit.load(buffer)

    return bundle, scripted(bundle.model), scripted(quantized.model), bundle.example_inputs(exp.bench.batch_size), exp
