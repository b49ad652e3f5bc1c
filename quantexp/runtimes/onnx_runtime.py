"""An ONNX model in an ONNX Runtime ``InferenceSession`` as a runtime.

The session is configured from the hardware target: ``intra_op_num_threads`` =
the run's thread count (the same number torch uses, so fp32-vs-int8 and
torch-vs-ORT comparisons share one thread budget), one inter-op thread
(sequential execution: our graphs are chains, parallel branches buy nothing and
would oversubscribe the cores), and the graph optimization level of
``exporter.graph_optimization``. Providers: CPU, or CUDA first when the target is
``cuda`` (the CUDA provider must exist in this onnxruntime build; see
``providers_for``).

Inputs are torch tensors, passed by position in the order of the session's inputs
(the exporter names them after ``bundle.input_names``); the first output comes
back as a torch tensor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from quantexp.hardware.probe import HardwareUnavailable
from quantexp.runtimes.base import Runtime

#: exporter.graph_optimization value -> ORT level name
LEVELS = {
    "disabled": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}

# ONNX tensor type strings -> numpy dtypes of the feeds we build.
_ONNX_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
}


class ProviderUnavailable(HardwareUnavailable):
    """The execution provider the hardware target needs is not in this onnxruntime build."""


def providers_for(hardware: str) -> list[str]:
    """Execution providers for a hardware target, best first; raises when the target
    needs a provider this onnxruntime build lacks (never a silent CPU fallback,
    which would report CPU numbers under a GPU label)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if hardware == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise ProviderUnavailable(
                "hardware=cuda with exporter=onnx needs onnxruntime's CUDAExecutionProvider "
                "(the onnxruntime-gpu package); this onnxruntime "
                f"{ort.__version__} offers: {', '.join(available)}")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session_options(threads: int, graph_optimization: str, inter_op: int = 1, execution_mode: str = "sequential"):
    """``inter_op`` / ``execution_mode``: the host's choice (``quantexp.hardware.engine.ort_settings``)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = inter_op
    options.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if execution_mode == "parallel"
                              else ort.ExecutionMode.ORT_SEQUENTIAL)
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[graph_optimization])
    # ORT logs every unused initializer / optimizer note at WARNING; errors still surface.
    options.log_severity_level = 3
    return options


class OnnxRuntime(Runtime):
    kind = "onnxruntime"

    def __init__(self, artifact: Path, threads: int, graph_optimization: str = "all",
                 hardware: str = "cpu", inter_op: int = 1, execution_mode: str = "sequential"):
        import onnxruntime as ort

        super().__init__(artifact)
        self.providers = providers_for(hardware)
        self.graph_optimization = graph_optimization
        self.session = ort.InferenceSession(str(artifact), session_options(threads, graph_optimization, inter_op, execution_mode),
                                            providers=self.providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self._dtypes = [_ONNX_TO_NUMPY.get(i.type) for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name

    def feeds(self, *inputs: torch.Tensor) -> dict[str, np.ndarray]:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"{self.artifact} takes {len(self.input_names)} inputs "
                             f"({', '.join(self.input_names)}), got {len(inputs)}")
        feeds = {}
        for name, dtype, x in zip(self.input_names, self._dtypes, inputs):
            array = x.detach().cpu().numpy()
            feeds[name] = np.ascontiguousarray(array if dtype is None else array.astype(dtype, copy=False))
        return feeds

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        out = self.session.run([self.output_name], self.feeds(*inputs))[0]
        return torch.from_numpy(out)

    def describe(self) -> dict[str, str]:
        return {**super().describe(), "providers": ",".join(self.session.get_providers()),
                "graph_optimization": self.graph_optimization}
