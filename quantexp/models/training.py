"""Supervised training of the fp32 models, and their accuracy.

Owns: the one training loop every family uses (Adam, cross-entropy, seeded
shuffling; a transformer trains only its head with it), seeded construction of an
architecture, batched accuracy over a ``Split``, and ``SupervisedFamily``, the
shared behaviour of the families that train end to end (cnn, rnn).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn
from torch.nn import functional as F

from quantexp.config import ConfigError, ModelConfig
from quantexp.models.base import Split
from quantexp.models.datasets import RawDataset, check_kind, make_splits
from quantexp.progress import track

log = logging.getLogger(__name__)

M = TypeVar("M", bound=nn.Module)


class TrainingDiverged(ConfigError):
    """fp32 training that produced no usable model (non-finite loss or weights, or a
    model that predicts one class for everything). A ConfigError: the remedy is in the
    config (a lower ``model.lr``, more epochs), and the run ends with this one line.
    Such a model is never cached."""


def seeded(seed: int, build: Callable[[], M]) -> M:
    """``build()`` with torch's global RNG seeded, so initial weights depend only on
    ``seed``; the caller's RNG state is restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def fit(module: nn.Module, data: Split, *, epochs: int, batch_size: int, lr: float,
        seed: int, desc: str = "train") -> list[dict]:
    """Train ``module`` on ``data`` in place; returns one dict per epoch.

    The shuffle order comes from a generator seeded with ``seed`` and nothing else
    draws random numbers, so the same module + data + seed gives bit-identical
    weights on the CPU."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    history = []
    module.train()
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(data), generator=generator)
        total_loss, correct = 0.0, 0
        for start in track(range(0, len(data), batch_size), f"{desc} epoch {epoch}/{epochs}"):
            index = order[start:start + batch_size]
            inputs = tuple(x[index] for x in data.inputs)
            labels = data.labels[index]
            logits = module(*inputs)
            loss = F.cross_entropy(logits, labels)
            if not torch.isfinite(loss):
                # stop now: every later step only spreads the NaN/inf through the weights
                raise TrainingDiverged(f"{desc}: training diverged (loss {loss.item()} at epoch {epoch}, "
                                       f"step {start // batch_size + 1}, lr {lr:g}); lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(index)
            correct += int((logits.argmax(dim=1) == labels).sum())
        entry = {"epoch": epoch, "loss": total_loss / len(data), "train_accuracy": correct / len(data)}
        history.append(entry)
        log.info("%s epoch %d/%d: loss %.4f, train accuracy %.4f",
                 desc, epoch, epochs, entry["loss"], entry["train_accuracy"])
    module.eval()
    return history


@torch.no_grad()
def predict(module: nn.Module, split: Split, batch_size: int = 256) -> torch.Tensor:
    """Logits of ``module`` over every item of ``split``, in order (eval mode)."""
    was_training = module.training
    module.eval()
    try:
        return torch.cat([module(*inputs) for inputs, _ in split.batches(batch_size)])
    finally:
        module.train(was_training)


def check_converged(module: nn.Module, test: Split, what: str, lr: float, history: list[dict]) -> float:
    """Test accuracy of a freshly trained ``module``, or ``TrainingDiverged`` when it is
    not a model: weights or logits that are not finite, or the collapse a diverged run
    ends in - one class predicted for every test item *and* a last-epoch training loss
    worse than uniform guessing (2 ln C). Both are needed: a weak but stable model
    (a tiny head after two epochs) may well predict the majority class, at a loss
    near ln C; only a run that blew up ends far above it."""
    if not all(torch.isfinite(p).all() for p in module.parameters()):
        raise TrainingDiverged(f"{what}: training diverged (non-finite weights, lr {lr:g}); lower the learning rate")
    logits = predict(module, test)
    if not torch.isfinite(logits).all():
        raise TrainingDiverged(f"{what}: training diverged (non-finite outputs, lr {lr:g}); lower the learning rate")
    predicted = logits.argmax(dim=1)
    acc = float((predicted == test.labels).float().mean())
    final_loss = history[-1]["loss"] if history else 0.0
    uniform_loss = math.log(logits.shape[1])
    if predicted.unique().numel() == 1 and test.labels.unique().numel() > 1 and final_loss > 2 * uniform_loss:
        raise TrainingDiverged(f"{what}: training diverged: one class predicted for all {len(test)} test items "
                               f"(accuracy {100 * acc:.1f}%, chance level) at a training loss of {final_loss:.3g} "
                               f"(uniform guessing: {uniform_loss:.3g}; lr {lr:g}); lower the learning rate")
    return acc


def accuracy(module: nn.Module, split: Split, batch_size: int = 256) -> float:
    """Fraction of ``split`` whose arg-max logit is the label."""
    logits = predict(module, split, batch_size)
    return float((logits.argmax(dim=1) == split.labels).float().mean())


class SupervisedFamily:
    """A family whose whole network trains on the task (cnn, rnn). Subclasses set
    ``family``, ``kind`` (the data kind they read), ``input_names`` and ``build``."""

    family: str
    kind: str
    input_names: tuple[str, ...]

    def __init__(self, cfg: ModelConfig):
        check_kind(cfg.dataset, self.family, self.kind)
        self.cfg = cfg

    def data(self) -> tuple[Split, Split, RawDataset]:
        return make_splits(self.cfg, self.family, self.kind)

    def build(self, num_classes: int) -> nn.Module:
        raise NotImplementedError

    def fit(self, model: nn.Module, train: Split, seed: int) -> list[dict]:
        cfg = self.cfg
        return fit(model, train, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                   seed=seed, desc=cfg.name)

    def persisted(self, model: nn.Module) -> nn.Module:
        """The part of the model whose weights the cache stores: all of it."""
        return model

    def fingerprint(self) -> dict:
        """What the trained weights depend on beyond the config and seed: nothing."""
        return {}
