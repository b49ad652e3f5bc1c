"""The small CNN family: two conv blocks + an MLP head on 28x28 MNIST digits.

Owns: ``SmallCNN`` and the ``cnn`` family entry. The network is built only from
modules (``nn.ReLU``, not functional calls) with no data-dependent control flow, so
torch.fx can trace it (FX graph-mode quantization) and it exports to ONNX.
"""

from __future__ import annotations

import torch
from torch import nn

from quantexp.models.cnn.config import CNNConfig
from quantexp.models.datasets import IMAGE
from quantexp.models.training import SupervisedFamily


class SmallCNN(nn.Module):
    """[B, 1, 28, 28] pixels -> [B, num_classes] logits."""

    def __init__(self, channels: list[int] | tuple[int, int], hidden: int, num_classes: int = 10):
        super().__init__()
        if len(channels) != 2:
            raise ValueError(f"SmallCNN needs exactly 2 channel counts, got {list(channels)}")
        c0, c1 = channels
        self.conv1, self.relu1, self.pool1 = nn.Conv2d(1, c0, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        self.conv2, self.relu2, self.pool2 = nn.Conv2d(c0, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1, self.relu3 = nn.Linear(c1 * 7 * 7, hidden), nn.ReLU()  # two 2x pools: 28 -> 7
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(pixels)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.relu3(self.fc1(self.flatten(x)))
        return self.fc2(x)


class CNNFamily(SupervisedFamily):
    family = "cnn"
    kind = IMAGE
    input_names = ("pixels",)
    cfg: CNNConfig

    def build(self, num_classes: int) -> nn.Module:
        return SmallCNN(self.cfg.channels, self.cfg.hidden, num_classes)
