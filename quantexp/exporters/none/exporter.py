"""``exporter=none``: deploy the PyTorch model itself, as TorchScript.

TorchScript (``torch.jit.trace`` + ``torch.jit.save``) is how eager/FX-quantized
PyTorch models are deployed (C++/mobile runtimes), and it serialises FX graph
modules, which plain pickling cannot. The saved file is loaded back and the
loaded copy is what gets evaluated and timed, so size on disk and behaviour
both come from the artifact. A model that cannot be traced is saved whole with
``torch.save`` instead, and the report says so. The trace is made on the device the
artifact will run on (``hardware.device``): tracing records device constants (an
LSTM's zero initial state), so a CPU trace would not run on a GPU.
"""

from __future__ import annotations

import copy
import itertools
import time
import warnings
from pathlib import Path

import torch

from quantexp.bench.size import storage_bits
from quantexp.exporters.base import Exported, Exporter
from quantexp.files import atomic_write
from quantexp.runtimes.torch_runtime import TorchRuntime


class TorchArtifact(Exporter):
    def export(self, model, bundle, out_dir: Path, tag: str, calibration=None) -> Exported:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{tag}.pt"
        start = time.perf_counter()
        try:
            with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
                warnings.simplefilter("ignore")  # tracer warnings on shape-dependent Python code
                device = self.host.device
                example = tuple(x.to(device) for x in bundle.example_inputs(2))
                scripted = torch.jit.trace(_on_device(model, device).eval(), example, check_trace=False)
            atomic_write(path, lambda f: torch.jit.save(scripted, f))
            fmt, load = "torchscript", lambda: torch.jit.load(str(path))
        except Exception as exc:  # noqa: BLE001 - any tracer failure: fall back, and say why
            atomic_write(path, lambda f: torch.save(model, f))
            fmt = f"torch.save pickle (trace failed: {type(exc).__name__})"
            # weights_only=False: the artifact is a whole module this run just wrote.
            load = lambda: torch.load(path, weights_only=False)  # noqa: E731
        saved = time.perf_counter()
        loaded = load()
        loaded_at = time.perf_counter()
        return Exported(TorchRuntime(loaded, artifact=path, device=self.host.device,
                                    dtype=self.host.dtype), path,
                        export_time_s=saved - start, load_time_s=loaded_at - saved,
                        info={"format": fmt}, param_bits=storage_bits(model.state_dict()).param_bits)

    def load(self, path: Path) -> Exported:
        """An artifact this exporter wrote: TorchScript, or the whole-module pickle it
        falls back to (which this project wrote itself, hence weights_only=False)."""
        path = Path(path)
        start = time.perf_counter()
        try:
            loaded, fmt = torch.jit.load(str(path), map_location=self.host.device), "torchscript"
        except RuntimeError:  # not a TorchScript archive: the pickle fallback
            loaded, fmt = torch.load(path, weights_only=False, map_location=self.host.device), "torch.save pickle"
        return Exported(TorchRuntime(loaded, artifact=path, device=self.host.device, dtype=self.host.dtype),
                        path, export_time_s=0.0, load_time_s=time.perf_counter() - start, info={"format": fmt},
                        param_bits=storage_bits(loaded.state_dict()).param_bits)


def _on_device(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """``model`` on ``device``: itself when it is already there (a model bitsandbytes
    quantized on the GPU), else a copy, so the caller's model stays where it is."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    if first is None or first.device.type == device:
        return model
    return copy.deepcopy(model).to(device)
