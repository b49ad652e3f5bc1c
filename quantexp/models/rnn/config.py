"""Schema of the rnn model family (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from quantexp.config import Family, ModelConfig, require_positive


@dataclass
class RNNConfig(ModelConfig):
    family: Family = Family.rnn
    implementation: ClassVar[str] = "quantexp.models.rnn.family:RNNFamily"
    hidden: int = 64
    layers: int = 1

    def validate(self) -> None:
        super().validate()
        require_positive(self, "hidden", "layers")
