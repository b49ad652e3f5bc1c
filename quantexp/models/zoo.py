"""``load_model``: the one entry point from a model config to a ready fp32 model.

Owns: ``family_builder`` (the builder a model family's schema names, in
``quantexp/models/<family>/config.py``) and the load sequence every family shares: build the data, build the architecture under the experiment seed,
then either load cached weights or train, measure test accuracy and cache them.
"""

from __future__ import annotations

import logging
import time
from enum import Enum
from pathlib import Path
from typing import Protocol

from torch import nn

from quantexp.config import ConfigError, ModelConfig
from quantexp.models import cache
from quantexp.models.base import ModelBundle, Split
from quantexp.models.datasets import RawDataset
from quantexp.models.training import check_converged, seeded

log = logging.getLogger(__name__)


class FamilyBuilder(Protocol):
    """What a family provides to ``load_model`` (built from the model config)."""

    input_names: tuple[str, ...]

    def data(self) -> tuple[Split, Split, RawDataset]: ...
    def build(self, num_classes: int) -> nn.Module: ...  # untrained; the caller seeds torch
    def fit(self, model: nn.Module, train: Split, seed: int) -> list[dict]: ...
    def persisted(self, model: nn.Module) -> nn.Module: ...  # the part whose weights are cached
    def fingerprint(self) -> dict: ...  # source files the weights depend on, beyond the config


def family_builder(cfg: ModelConfig) -> FamilyBuilder:
    """The builder of ``cfg``'s family (the class its schema names), built from ``cfg``."""
    from quantexp.config import implementation_of, schemas

    family = family_name(cfg)
    known = schemas("model")
    if family not in known:
        raise ConfigError(f"unknown model family {family!r}; valid families: {', '.join(sorted(known))}")
    return implementation_of(known[family])(cfg)


def family_name(cfg: ModelConfig) -> str:
    return cfg.family.value if isinstance(cfg.family, Enum) else str(cfg.family)


def load_model(cfg: ModelConfig, seed: int, cache_dir: Path) -> ModelBundle:
    """The fp32 model of ``cfg`` trained with ``seed`` (from the cache when it has
    it), in eval mode on the CPU, with its train and test splits."""
    start = time.perf_counter()
    family = family_name(cfg)
    builder = family_builder(cfg)
    train, test, raw = builder.data()
    model = seeded(seed, lambda: builder.build(raw.num_classes))
    fingerprint = builder.fingerprint()

    # Jobs running at once (parallel launchers) take turns on one entry: one trains it.
    with cache.entry_lock(Path(cache_dir), cfg, seed):
        entry = cache.load(Path(cache_dir), cfg, seed, fingerprint)
        if entry is not None:
            try:
                builder.persisted(model).load_state_dict(entry.state_dict)
            except RuntimeError as exc:  # stale entry: the code changed, CACHE_VERSION did not
                log.warning("cache entry %s does not fit the model (%s); retraining",
                            entry.path, str(exc).splitlines()[0])
                entry = None
                # A failed load may have copied some tensors: start again from a clean init.
                model = seeded(seed, lambda: builder.build(raw.num_classes))
        if entry is not None:
            meta, train_time, entry_path = entry.meta, None, entry.path
            log.info("%s: fp32 weights from cache %s", cfg.name, entry_path)
        else:
            t0 = time.perf_counter()
            history = builder.fit(model, train, seed)
            train_time = time.perf_counter() - t0
            # a diverged model raises here, before anything is cached
            fp32_accuracy = check_converged(model.eval(), test, cfg.name, cfg.lr, history)
            meta = {"train_time_s": train_time, "history": history, "fp32_test_accuracy": fp32_accuracy}
            entry_path = cache.save(Path(cache_dir), cfg, seed, builder.persisted(model).state_dict(),
                                    meta, fingerprint)
            log.info("%s: trained in %.1f s, fp32 test accuracy %.4f, cached in %s",
                     cfg.name, train_time, meta["fp32_test_accuracy"], entry_path)
    model.eval()

    info = {
        "fp32_test_accuracy": meta["fp32_test_accuracy"],
        "history": meta["history"],
        "dataset": raw.name,
        "n_train": len(train),
        "n_test": len(test),
        "cache_path": str(entry_path),
        "cache_key": cache.cache_key(cfg, seed),
        # On a hit, how long the original training took (train_time_s is None then).
        "trained_in_s": meta["train_time_s"],
        **fingerprint,
    }
    return ModelBundle(model=model, name=cfg.name, family=family, train=train, test=test,
                       num_classes=raw.num_classes, input_names=list(builder.input_names),
                       load_time_s=time.perf_counter() - start, train_time_s=train_time,
                       from_cache=entry is not None, info=info)
