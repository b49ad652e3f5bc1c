"""A PyTorch module as a runtime (eager execution, inference mode) on CPU, CUDA or MPS."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from quantexp.runtimes.base import Runtime

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class TorchRuntime(Runtime):
    kind = "torch"

    def __init__(self, module: nn.Module, artifact: Path | None = None, device: str = "cpu",
                 dtype: str | None = None):
        super().__init__(artifact)
        self.module = module.eval()
        self.device = device
        self.dtype = _DTYPES.get(dtype) if dtype else None
        if device == "mps":
            # Apple GPU (macOS only; NOT EXERCISED BY THIS PROJECT'S TESTS, which run on
            # Linux where hardware=mps is refused up front). Apple silicon has unified
            # memory: .to("mps") places weights and inputs in the memory the CPU shares,
            # and the timed call includes that input copy, as a user's call would.
            self.module = self.module.to("mps", dtype=self.dtype)
        elif device == "cuda":
            # Weights live on the GPU; a module quantized there (bitsandbytes) is
            # already on it and .to() leaves its packed weights as they are.
            self.module = self.module.to("cuda")

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if self.device != "cpu":
                inputs = tuple(x.to(self.device, dtype=self.dtype)
                               if self.dtype is not None and x.is_floating_point()
                               else x.to(self.device, non_blocking=True) for x in inputs)
            out = self.module(*inputs)
            if self.device == "mps":
                torch.mps.synchronize()  # MPS runs asynchronously: time the finished work
                out = out.float()
            # CUDA: no synchronisation here. The harness times CUDA calls with events
            # (call_timer), and a caller that reads the logits (.cpu()) waits for them.
            return out

    def call_timer(self):
        if self.device == "cuda":
            from quantexp.bench.latency import cuda_event_timer

            return cuda_event_timer()
        return None

    def state_dict(self) -> dict:
        return self.module.state_dict()
