"""A Core ML package as a runtime: ``MLModel.predict`` with the chosen compute units.

macOS only (Core ML itself runs the model; coremltools' ``predict`` raises
elsewhere), so the Core ML exporter builds this only when ``sys.platform ==
"darwin"``. NOT EXERCISED BY THIS PROJECT'S TEST SUITE: it was written on Linux,
where it cannot run. Kept deliberately small.

Batches: a package with a static batch B (the ANE-friendly default, B=1) is fed
in chunks of B items (the last chunk padded by repeating its final item, padded
rows dropped from the output); a flexible-batch package gets the whole batch.
Integer inputs are passed as int32 (Core ML has no int64 inputs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from quantexp.runtimes.base import Runtime

COMPUTE_UNITS = {"all": "ALL", "cpu_only": "CPU_ONLY", "cpu_and_gpu": "CPU_AND_GPU",
                 "cpu_and_ne": "CPU_AND_NE"}


class CoreMLRuntime(Runtime):
    kind = "coreml"

    def __init__(self, artifact: Path, compute_units: str, summary):
        super().__init__(artifact)
        import coremltools as ct

        self.compute_units = compute_units
        # Compiles the package for this machine and loads it on the chosen units.
        self.model = ct.models.MLModel(str(artifact),
                                       compute_units=getattr(ct.ComputeUnit,
                                                             COMPUTE_UNITS[compute_units]))
        self.input_names = [i.name for i in summary.inputs]
        self.input_dtypes = [np.int32 if i.dtype.startswith("INT") else np.float32
                             for i in summary.inputs]
        first = summary.inputs[0]
        static = first.flexible is None and first.shape and first.shape[0] is not None
        self.static_batch = int(first.shape[0]) if static else None
        self.output_name = summary.outputs[0].name

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        arrays = [x.detach().cpu().numpy().astype(dtype)
                  for x, dtype in zip(inputs, self.input_dtypes)]
        n = arrays[0].shape[0]
        step = self.static_batch or n
        out = []
        for start in range(0, n, step):
            chunk = [a[start:start + step] for a in arrays]
            real = chunk[0].shape[0]
            if real < step:  # pad a static-batch package's last chunk
                chunk = [np.concatenate([c, np.repeat(c[-1:], step - real, axis=0)]) for c in chunk]
            result = self.model.predict(dict(zip(self.input_names, chunk)))
            out.append(np.asarray(result[self.output_name], dtype=np.float32)[:real])
        return torch.from_numpy(np.concatenate(out))

    def describe(self) -> dict[str, str]:
        return {**super().describe(), "compute_units": self.compute_units}
