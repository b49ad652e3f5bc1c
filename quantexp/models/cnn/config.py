"""Schema of the cnn model family (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from quantexp.config import ConfigError, Family, ModelConfig, require_positive


@dataclass
class CNNConfig(ModelConfig):
    family: Family = Family.cnn
    implementation: ClassVar[str] = "quantexp.models.cnn.family:CNNFamily"
    channels: list[int] = field(default_factory=lambda: [16, 32])
    hidden: int = 64

    def validate(self) -> None:
        super().validate()
        # SmallCNN is two conv blocks: exactly two channel counts, each >= 1
        if len(self.channels) != 2 or any(c < 1 for c in self.channels):
            raise ConfigError(f"model.channels must be two channel counts >= 1 (two conv blocks), got {list(self.channels)}")
        require_positive(self, "hidden")
