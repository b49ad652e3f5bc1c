"""Schema of the transformer model family (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, Optional

from omegaconf import MISSING

from quantexp.config import Family, ModelConfig, require_positive


@dataclass
class TransformerConfig(ModelConfig):
    """A pretrained text encoder (local files only) + a linear classifier head
    trained on its frozen, mean-pooled features."""

    family: Family = Family.transformer
    implementation: ClassVar[str] = "quantexp.models.transformer.family:TransformerFamily"
    # Local HuggingFace model directory; "package:<module>/<subdir>" resolves a
    # directory shipped inside an installed Python package.
    path: str = MISSING
    # Expected sha256 of the weights file (model.safetensors); null skips the check.
    sha256: Optional[str] = None
    # Expected sha256 of every file that defines the model besides the weights (config,
    # tokenizer files), by file name; a defining file not listed is refused. null: unchecked.
    files_sha256: Optional[Dict[str, str]] = None
    max_length: int = 64
    head_epochs: int = 30

    def validate(self) -> None:
        super().validate()
        require_positive(self, "max_length", "head_epochs")
