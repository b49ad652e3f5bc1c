"""A PyTorch module as a runtime (eager execution, inference mode)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from quantexp.runtimes.base import Runtime


class TorchRuntime(Runtime):
    kind = "torch"

    def __init__(self, module: nn.Module, artifact: Path | None = None, device: str = "cpu"):
        super().__init__(artifact)
        self.module = module.eval()
        self.device = device

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if self.device != "cpu":
                inputs = tuple(x.to(self.device) for x in inputs)
            return self.module(*inputs)

    def state_dict(self) -> dict:
        return self.module.state_dict()
