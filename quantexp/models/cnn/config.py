"""Schema of the cnn model family (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from quantexp.config import Family, ModelConfig


@dataclass
class CNNConfig(ModelConfig):
    family: Family = Family.cnn
    implementation: ClassVar[str] = "quantexp.models.cnn.family:CNNFamily"
    channels: list[int] = field(default_factory=lambda: [16, 32])
    hidden: int = 64
