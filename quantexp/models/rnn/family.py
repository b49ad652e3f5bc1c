"""The recurrent family: an LSTM reading each MNIST digit row by row.

Owns: ``LSTMClassifier`` and the ``rnn`` family entry (28 time steps of 28
features; the last step's output feeds a linear classifier).
"""

from __future__ import annotations

import torch
from torch import nn

from quantexp.models.datasets import ROWS
from quantexp.models.rnn.config import RNNConfig
from quantexp.models.training import SupervisedFamily


class LSTMClassifier(nn.Module):
    """[B, T, input_size] rows -> [B, num_classes] logits."""

    def __init__(self, input_size: int = 28, hidden: int = 64, layers: int = 1, num_classes: int = 10):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(rows)
        return self.fc(out[:, -1])


class RNNFamily(SupervisedFamily):
    family = "rnn"
    kind = ROWS
    input_names = ("rows",)
    cfg: RNNConfig

    def build(self, num_classes: int) -> nn.Module:
        return LSTMClassifier(28, self.cfg.hidden, self.cfg.layers, num_classes)
