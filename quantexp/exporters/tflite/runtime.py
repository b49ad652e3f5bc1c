"""A ``.tflite`` file run by the LiteRT interpreter (``ai_edge_litert``, XNNPACK on CPU).

Batch handling. litert-torch exports a graph with a *static* batch: the batch is
baked into the graph's constants (the CNN's flatten is a RESHAPE to [B, 1568]),
and dynamic-batch export needs the TensorFlow-based converter (not installed).
``resize_tensor_input`` therefore fails for most exported graphs (XNNPACK cannot
re-plan the RESHAPE). So the artifact is exported with ``batch`` = the benchmark
batch size, and this runtime runs any number of items as consecutive batches of
exactly ``batch``, padding the last one with copies of its first item and
dropping the padded rows from the output:

* timing (``bench.batch_size`` items per call) is one ``invoke()`` of exactly the
  benchmarked batch, nothing padded;
* evaluation (``eval.batch_size`` items per call, the whole test set) is correct
  for every item: rows never interact in these models, padding rows are real
  inputs (no all-padding sentences or NaNs) and are discarded.

Quantized inputs/outputs (a full-integer int8 model has int8 I/O) are quantized
and dequantized here with the tensors' own scale/zero point, so callers always
pass and receive float/int tensors exactly as for the PyTorch model. 64-bit
integer inputs (token ids) are fed as the graph's int32.

Only ``ai_edge_litert`` is imported (0.4 s), never litert-torch/jax.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from quantexp.runtimes.base import Runtime


class LiteRTRuntime(Runtime):
    kind = "litert"

    def __init__(self, artifact: Path, threads: int):
        super().__init__(artifact)
        from ai_edge_litert.interpreter import Interpreter

        self.threads = threads
        # XNNPACK is applied by default on CPU (the "Created ... XNNPACK delegate" line).
        self.interpreter = Interpreter(model_path=str(artifact), num_threads=threads)
        self.interpreter.allocate_tensors()
        self.inputs = _ordered_inputs(self.interpreter)
        self.output = self.interpreter.get_output_details()[0]
        self.batch = int(self.inputs[0]["shape"][0])
        for detail in self.inputs:
            if int(detail["shape"][0]) != self.batch:
                raise ValueError(f"{artifact}: inputs disagree on the batch dimension "
                                 f"({[list(d['shape']) for d in self.inputs]})")

    # ------------------------------------------------------------------ calls
    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if len(inputs) != len(self.inputs):
            raise ValueError(f"{self.artifact} takes {len(self.inputs)} inputs, got {len(inputs)}")
        arrays = [self._encode(x, d) for x, d in zip(inputs, self.inputs)]
        n = arrays[0].shape[0]
        outs = []
        for start in range(0, n, self.batch):
            chunk = [a[start:start + self.batch] for a in arrays]
            real = chunk[0].shape[0]
            if real < self.batch:  # pad with copies of the chunk's first item
                chunk = [np.concatenate([c, np.repeat(c[:1], self.batch - real, axis=0)]) for c in chunk]
            outs.append(self._invoke(chunk)[:real])
        return torch.from_numpy(np.concatenate(outs) if outs else np.empty((0,), np.float32))

    def _invoke(self, arrays: list[np.ndarray]) -> np.ndarray:
        for array, detail in zip(arrays, self.inputs):
            self.interpreter.set_tensor(detail["index"], np.ascontiguousarray(array))
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self.output["index"])
        scale, zero_point = self.output["quantization"]
        if out.dtype in (np.int8, np.uint8, np.int16) and scale:
            return (out.astype(np.float32) - zero_point) * np.float32(scale)
        return out.astype(np.float32, copy=False)

    @staticmethod
    def _encode(x: torch.Tensor, detail: dict) -> np.ndarray:
        """A torch input -> the dtype the graph wants (quantizing float -> int8 I/O)."""
        array = x.detach().cpu().numpy()
        dtype = detail["dtype"]
        scale, zero_point = detail["quantization"]
        if np.issubdtype(array.dtype, np.floating) and dtype in (np.int8, np.uint8, np.int16) and scale:
            info = np.iinfo(dtype)
            q = np.round(array / np.float32(scale)) + zero_point
            return np.clip(q, info.min, info.max).astype(dtype)
        return array.astype(dtype, copy=False)

    # ------------------------------------------------------------ introspection
    def describe(self) -> dict[str, str]:
        return {**super().describe(), "threads": str(self.threads), "static_batch": str(self.batch),
                "input_dtypes": ",".join(np.dtype(d["dtype"]).name for d in self.inputs),
                "output_dtype": np.dtype(self.output["dtype"]).name}


def _ordered_inputs(interpreter) -> list[dict]:
    """Input details in the order of the PyTorch forward's arguments.

    litert-torch names signature inputs ``args_0, args_1, ...``; the interpreter's
    flat input list is not guaranteed to follow that order, so the signature's
    names are mapped back to tensor indices."""
    details = interpreter.get_input_details()
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        return details
    key = next(iter(signatures))
    by_name = interpreter.get_signature_runner(key).get_input_details()
    names = list(by_name)

    def position(name: str) -> tuple[int, str]:
        match = re.fullmatch(r"args_(\d+)", name)
        return (int(match.group(1)) if match else len(names) + names.index(name), name)

    index_of = {d["index"]: d for d in details}
    ordered = [index_of.get(by_name[name]["index"]) for name in sorted(names, key=position)]
    return ordered if all(d is not None for d in ordered) else details
