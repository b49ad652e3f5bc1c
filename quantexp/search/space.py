"""The Optuna search space of a mixed-precision search, generated from the model.

``hydra.sweeper.custom_search_space: quantexp.search.space.mixed_precision_space``
makes the Optuna sweeper call ``mixed_precision_space(cfg, trial)`` for every
trial: it lists the model's assignable layers (Linear/Conv/LSTM/GRU, built from
the model config - no training, no data) and suggests one dtype per layer among
``search.choices`` that the layer supports on this backend. Each suggestion is
the override ``++method.assignment.<layer>=<dtype>`` of that trial's job.

With ``search.kernel_filter`` (default true) a layer is offered only the dtypes this
host runs fast (``quantexp.quant.kernels``: ISA check, then a micro-benchmark of each
candidate kernel on the layer's real input at ``bench.batch_size``, interleaved
against the fp32 layer, cached under ``<cache_dir>/kernels/``): on an AVX2 CPU no
fp16/bf16 layer, no int4 layer slower than fp32. The timing needs the model's input
shapes, so the data set is loaded once per sweep process (the weights are not needed).

With ``search.sensitivity_table`` (a sensitivity.csv written by a
``method=mixed method.sensitivity=true`` run) and a ``search.budget.max_accuracy_drop``,
dtypes whose single-layer drop already exceeds the budget are left out: the
analysis prunes the space before the search spends trials on it.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path
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


@functools.lru_cache(maxsize=8)
def _offered(family: str, model_yaml: str, wanted: tuple[str, ...], batch_size: int, threads: int | None,
             cache_dir: str) -> dict[str, tuple[str, ...]]:
    """{layer: dtypes this host runs fast} (``quantexp.quant.kernels``), on an untrained
    copy of the model and the first test inputs at the timed batch size."""
    import torch

    from quantexp.config import schemas
    from quantexp.hardware.cpu import read_cpu_info
    from quantexp.hardware.probe import select_quantized_engine
    from quantexp.models.training import seeded
    from quantexp.models.zoo import family_builder
    from quantexp.quant.fx_regions import graph_mode_possible
    from quantexp.quant.kernels import kernel_table

    cpu = read_cpu_info()
    torch.set_num_threads(threads or cpu.usable_cores)
    engine = select_quantized_engine(list(torch.backends.quantized.supported_engines), cpu)
    if engine != "none":
        torch.backends.quantized.engine = engine
    node = OmegaConf.merge(OmegaConf.structured(schemas("model")[family]), OmegaConf.create(model_yaml))
    builder = family_builder(OmegaConf.to_object(node))
    _, test, raw = builder.data()
    module = seeded(0, lambda: builder.build(raw.num_classes)).eval()
    example = tuple(x[:batch_size] for x in test.inputs)
    table = kernel_table(module, example, wanted, cache_dir=Path(cache_dir), isa=cpu.isa,
                         threads=torch.get_num_threads(), engine=engine, graph=graph_mode_possible(module))
    names = [r.layer for r in table.rows]
    return {k: tuple(v) for k, v in table.choices(dict.fromkeys(names)).items()}


def _model_key(cfg: DictConfig) -> tuple[str, str]:
    family = OmegaConf.select(cfg, "model.family")
    return str(getattr(family, "value", family)), OmegaConf.to_yaml(cfg.model, resolve=True)


def layer_choices(cfg: DictConfig) -> dict[str, list[str]]:
    """{layer: [dtypes the search may give it]} for the composed config ``cfg``."""
    family, model_yaml = _model_key(cfg)
    layers = _layer_dtypes(family, model_yaml)
    wanted = [str(getattr(c, "value", c)) for c in OmegaConf.select(cfg, "search.choices")]
    pruned = _pruned(cfg)
    offered = None
    if OmegaConf.select(cfg, "search.kernel_filter", default=True):
        cache = OmegaConf.select(cfg, "cache_dir", default=None) or Path.cwd() / ".cache" / "quantexp"
        offered = _offered(family, model_yaml, tuple(wanted), int(OmegaConf.select(cfg, "bench.batch_size", default=16)),
                           OmegaConf.select(cfg, "hardware.threads", default=None), str(Path(str(cache)).expanduser()))
    out = {}
    for name, supported in layers:
        options = [d for d in wanted if d in supported and (name, d) not in pruned
                   and (offered is None or d == "fp32" or d in offered.get(name, ()))]
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


def _earlier_space(trial: Any) -> dict[str, tuple[str, ...]]:
    """{param: choices} of the study's earlier trials. Optuna refuses a categorical
    whose choices change within a study, and the kernel filter's verdicts can change
    between processes (a noisy timing is re-measured, not cached): a resumed or
    distributed study keeps the space its first trial was given (and where two
    processes start it together, ``mixed_precision_space`` takes the choices of
    whichever wrote a parameter first)."""
    study = getattr(trial, "study", None)
    if study is None:
        return {}
    space: dict[str, tuple[str, ...]] = {}
    for earlier in study.get_trials(deepcopy=False):
        for name, dist in earlier.distributions.items():
            choices = getattr(dist, "choices", None)
            if name.startswith(PARAM_PREFIX) and choices is not None:
                space.setdefault(name, tuple(choices))
    return space


def mixed_precision_space(cfg: DictConfig, trial: Any) -> None:
    earlier = _earlier_space(trial)
    current = None  # this process's own choices (kernel timings): only where the study has none
    for layer, _ in _layer_dtypes(*_model_key(cfg)):
        key = PARAM_PREFIX + layer
        if key not in earlier and current is None:
            current = layer_choices(cfg)
        try:
            trial.suggest_categorical(key, list(earlier[key]) if key in earlier else current[layer])
        except ValueError as exc:
            # Two processes starting one study together both found it empty, and the
            # other one wrote this parameter first, with the choices its own kernel
            # timings gave: the study keeps those (the storage refused ours, unwritten).
            stored = _earlier_space(trial).get(key) if "dynamic value space" in str(exc) else None
            if stored is None:
                raise
            trial.suggest_categorical(key, list(stored))


def assignment_of(params: dict[str, Any]) -> dict[str, str]:
    """Trial params -> {layer: dtype}."""
    return {k.removeprefix(PARAM_PREFIX): v for k, v in params.items() if k.startswith(PARAM_PREFIX)}


__all__ = ["PARAM_PREFIX", "assignment_of", "layer_choices", "mixed_precision_space"]
