"""The transformer family: a local pretrained text encoder + a linear head.

Owns: resolving ``model.path`` (a directory, or ``package:<module>/<subdir>`` inside
an installed package), the sha256 checks of every file that defines the model
(weights, config, tokenizer: ``model.sha256``, ``model.files_sha256``), tokenisation,
``TextClassifier`` (masked mean pooling + linear head), and head-only training on
features of the frozen encoder. transformers is imported inside functions so that
importing ``quantexp.models`` stays light.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from quantexp.config import ConfigError
from quantexp.models.base import Split
from quantexp.models.datasets import TEXT, RawDataset, check_kind, make_splits
from quantexp.models.training import fit
from quantexp.models.transformer.config import TransformerConfig
from quantexp.progress import track

PACKAGE_PREFIX = "package:"
WEIGHTS_FILE = "model.safetensors"
# Besides the weights, the files transformers reads to build the encoder and tokenizer.
DEFINING_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                  "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model",
                  "sentencepiece.bpe.model", "tokenizer.model")


class ModelSourceError(ConfigError):
    """A model directory that is missing, incomplete or not the expected one."""


# ---------------------------------------------------------------- the files
def resolve_path(path: str) -> Path:
    """``model.path`` -> an existing HuggingFace model directory (has config.json)."""
    if path.startswith(PACKAGE_PREFIX):
        module, _, subdir = path[len(PACKAGE_PREFIX):].partition("/")
        try:
            spec = importlib.util.find_spec(module) if module else None
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise ModelSourceError(f"model.path {path!r}: no installed package named {module!r}")
        directory = Path(spec.submodule_search_locations[0]) / subdir
    else:
        directory = Path(path).expanduser()
    if not directory.is_dir():
        raise ModelSourceError(f"model.path {path!r}: directory {directory} does not exist")
    if not (directory / "config.json").is_file():
        raise ModelSourceError(f"model.path {path!r}: {directory} has no config.json "
                               "(not a HuggingFace model directory)")
    return directory


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:  # streamed: weights can be larger than memory allows
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def defining_files(directory: Path) -> tuple[list[Path], list[Path]]:
    """(weights files, every other file that changes what AutoModel/AutoTokenizer load).
    README, .gitattributes and sentence-transformers' pooling files are not among them:
    TextClassifier pools by itself."""
    weights = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin"))
    others = [directory / name for name in DEFINING_FILES if (directory / name).is_file()]
    return weights, others


def verify_sha256(directory: Path, expected: str | None, expected_files: Mapping[str, str] | None,
                  fingerprint: Mapping[str, Mapping[str, str]]) -> None:
    """``model.sha256`` (the weights file) and ``model.files_sha256`` (every other
    defining file, by name) against ``files_fingerprint(directory)``; one line names
    the first file that differs, is missing, or is present but not listed."""
    found_files = fingerprint["files_sha256"]
    found = {**fingerprint["weights_sha256"], **found_files}
    if expected:
        if WEIGHTS_FILE not in found:
            raise ModelSourceError(f"model.sha256 is set but {directory} has no {WEIGHTS_FILE} to check")
        if found[WEIGHTS_FILE] != expected.strip().lower():
            raise ModelSourceError(f"sha256 mismatch for {directory / WEIGHTS_FILE}: expected {expected}, "
                                   f"got {found[WEIGHTS_FILE]}")
    if expected_files:
        for name, digest in expected_files.items():
            if name not in found:
                raise ModelSourceError(f"model.files_sha256 lists {name} but {directory} has no such file")
            if found[name] != str(digest).strip().lower():
                raise ModelSourceError(f"sha256 mismatch for {directory / name}: expected {digest}, "
                                       f"got {found[name]} (model.files_sha256)")
        unlisted = sorted(set(found_files) - set(expected_files))
        if unlisted:
            raise ModelSourceError(f"{directory} has {', '.join(unlisted)}, which model.files_sha256 "
                                   "does not list: the model it defines is not the one that was checked")


def files_fingerprint(directory: Path) -> dict[str, dict[str, str]]:
    """sha256 of every defining file, so cached heads are never reused on top of an
    encoder whose weights, config or tokenizer changed (``model.sha256`` may be null
    for user models). Weights and the rest in two keys; results.json carries both."""
    weights, others = defining_files(directory)
    return {"weights_sha256": {f.name: sha256_file(f) for f in weights},
            "files_sha256": {f.name: sha256_file(f) for f in others}}


# ------------------------------------------------------------------ network
class TextClassifier(nn.Module):
    """(input_ids, attention_mask) [B, L] -> [B, num_classes] logits: encoder, mean
    of the token states that the mask keeps, linear head."""

    def __init__(self, encoder: nn.Module, hidden_size: int, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(hidden_size, num_classes)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        # clamp: an all-padding row would otherwise divide by zero
        return (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(input_ids, attention_mask))


@torch.no_grad()
def pooled_features(model: TextClassifier, split: Split, batch_size: int, desc: str) -> torch.Tensor:
    model.eval()
    batches = track(split.batches(batch_size), f"{desc} features", total=-(-len(split) // batch_size))
    return torch.cat([model.features(*inputs) for inputs, _ in batches])


# ------------------------------------------------------------------- family
class TransformerFamily:
    family = "transformer"
    kind = TEXT
    input_names = ("input_ids", "attention_mask")

    def __init__(self, cfg: TransformerConfig):
        check_kind(cfg.dataset, self.family, self.kind)  # before the slow part
        self.cfg = cfg
        self.directory = resolve_path(cfg.path)
        self._fingerprint = files_fingerprint(self.directory)
        verify_sha256(self.directory, cfg.sha256, cfg.files_sha256, self._fingerprint)
        from transformers import AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.directory, local_files_only=True)
        except (OSError, ValueError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelSourceError(f"model.path {cfg.path!r}: cannot load its tokenizer: {reason}") from exc

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(list(texts), padding="max_length", truncation=True,
                             max_length=self.cfg.max_length, return_tensors="pt")
        return enc["input_ids"].long(), enc["attention_mask"].long()

    def data(self) -> tuple[Split, Split, RawDataset]:
        return make_splits(self.cfg, self.family, self.kind, encode=self.encode)

    def build(self, num_classes: int) -> TextClassifier:
        from transformers import AutoModel

        try:
            encoder = AutoModel.from_pretrained(self.directory, local_files_only=True,
                                                dtype=torch.float32)
        except (OSError, ValueError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelSourceError(f"model.path {self.cfg.path!r}: cannot load the encoder: {reason}") from exc
        encoder.requires_grad_(False).eval()  # frozen: only the head is trained
        return TextClassifier(encoder, encoder.config.hidden_size, num_classes).eval()

    def fit(self, model: TextClassifier, train: Split, seed: int) -> list[dict]:
        cfg = self.cfg
        # The encoder is frozen, so its features are computed once, not every epoch.
        features = pooled_features(model, train, cfg.batch_size, cfg.name)
        history = fit(model.head, Split((features,), train.labels, train.ids),
                      epochs=cfg.head_epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                      seed=seed, desc=f"{cfg.name} head")
        model.eval()
        return history

    def persisted(self, model: TextClassifier) -> nn.Module:
        """Only the head is cached: the encoder is reloaded from its (checked) files."""
        return model.head

    def fingerprint(self) -> dict:
        return self._fingerprint
