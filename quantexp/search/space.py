"""The Optuna search space of a mixed-precision search, generated from the model.

``hydra.sweeper.custom_search_space: quantexp.search.space.mixed_precision_space``
makes the Optuna sweeper call ``mixed_precision_space(cfg, trial)`` for every
trial: it lists the model's assignable layers (Linear/Conv/LSTM/GRU, built from
the model config - no training, no data) and suggests one dtype per layer among
``search.choices`` that the layer supports on this backend. Each suggestion is
the override ``++method.assignment.<layer>=<dtype>`` of that trial's job.

With ``search.sensitivity_table`` (a sensitivity.csv written by a
``method=mixed method.sensitivity=true`` run) and a ``search.budget.max_accuracy_drop``,
dtypes whose single-layer drop already exceeds the budget are left out: the
analysis prunes the space before the search spends trials on it.
"""

from __future__ import annotations

import csv
import functools
from typing import Any

from omegaconf import DictConfig, OmegaConf

PARAM_PREFIX = "++method.assignment."


@functools.lru_cache(maxsize=8)
def _layer_dtypes(family: str, model_yaml: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    from quantexp.config import schemas
    from quantexp.models.zoo import family_builder
    from quantexp.quant.mixed_layers import assignable_layers, supported_dtypes

    node = OmegaConf.merge(OmegaConf.structured(schemas("model")[family]), OmegaConf.create(model_yaml))
    model_cfg = OmegaConf.to_object(node)
    module = family_builder(model_cfg).build(10)
    return tuple((name, supported_dtypes(m)) for name, m in assignable_layers(module).items())


def layer_choices(cfg: DictConfig) -> dict[str, list[str]]:
    """{layer: [dtypes the search may give it]} for the composed config ``cfg``."""
    family = str(getattr(OmegaConf.select(cfg, "model.family"), "value", OmegaConf.select(cfg, "model.family")))
    layers = _layer_dtypes(family, OmegaConf.to_yaml(cfg.model, resolve=True))
    wanted = [str(getattr(c, "value", c)) for c in OmegaConf.select(cfg, "search.choices")]
    pruned = _pruned(cfg)
    out = {}
    for name, supported in layers:
        options = [d for d in wanted if d in supported and (name, d) not in pruned]
        out[name] = options or ["fp32"]
    return out


def _pruned(cfg: DictConfig) -> set[tuple[str, str]]:
    path = OmegaConf.select(cfg, "search.sensitivity_table", default=None)
    limit = OmegaConf.select(cfg, "search.budget.max_accuracy_drop", default=None)
    if not path or limit is None:
        return set()
    with open(path, newline="") as fh:
        return {(r["layer"], r["dtype"]) for r in csv.DictReader(fh)
                if r["dtype"] != "fp32" and float(r["accuracy_drop_points"]) > float(limit)}


def mixed_precision_space(cfg: DictConfig, trial: Any) -> None:
    for layer, options in layer_choices(cfg).items():
        trial.suggest_categorical(PARAM_PREFIX + layer, options)


def assignment_of(params: dict[str, Any]) -> dict[str, str]:
    """Trial params -> {layer: dtype}."""
    return {k.removeprefix(PARAM_PREFIX): v for k, v in params.items() if k.startswith(PARAM_PREFIX)}


__all__ = ["PARAM_PREFIX", "assignment_of", "layer_choices", "mixed_precision_space"]
