"""The compatibility check (method x model family x precision x hardware x exporter)
and ``build``: composed DictConfig -> validated ``ExperimentConfig``.

The check holds no tables about methods or exporters: it asks each schema what it
accepts (ClassVars ``families``, ``precisions``, ``hardware``, ``exporters`` of a
method; ``hardware`` of an exporter) and lets each run its own cross-group rules
(``check``), which return the values they resolve instead of mutating the config.
"""

from __future__ import annotations

import dataclasses
import difflib
from enum import Enum
from typing import Any

from omegaconf import DictConfig, OmegaConf

from quantexp.config.errors import ConfigError
from quantexp.config.experiment import ExperimentConfig


def check_compatibility(cfg: ExperimentConfig) -> dict[str, dict[str, Any]]:
    """Refuse an impossible combination with one line, before any model loads;
    returns what the method's and exporter's own rules resolved:
    ``{"method": {field: value}, "exporter": {field: value}}``."""
    from quantexp.config.registry import schemas

    method, model = cfg.method, cfg.model
    precision, hardware, exporter = cfg.precision.name, cfg.hardware.name, cfg.exporter.name

    def refuse(what: str, value: str, allowed: frozenset[str]) -> None:
        raise ConfigError(
            f"method={method.name} cannot run with {what}={value}; "
            f"valid {what} values for {method.name}: {', '.join(sorted(allowed))}"
        )

    family = model.family.value if isinstance(model.family, Enum) else str(model.family)
    if family not in method.families:
        refuse("model family", family, method.families)
    if precision not in method.precisions:
        refuse("precision", precision, method.precisions)
    if hardware not in method.hardware:
        refuse("hardware", hardware, method.hardware)
    if exporter not in method.exporters:
        refuse("exporter", exporter, method.exporters)
    # The exporter's schema by name: a config may carry a plain ExporterConfig.
    exporter_schemas = schemas("exporter")
    if exporter not in exporter_schemas or hardware not in exporter_schemas[exporter].hardware:
        allowed = sorted(name for name, schema in exporter_schemas.items() if hardware in schema.hardware)
        raise ConfigError(
            f"hardware={hardware} cannot deploy with exporter={exporter}; "
            f"valid exporters for {hardware}: {', '.join(allowed) or 'none'}"
        )
    return {"exporter": cfg.exporter.check(cfg), "method": cfg.method.check(cfg)}


def resolve(exp: ExperimentConfig, resolved: dict[str, dict[str, Any]]) -> ExperimentConfig:
    """A copy of ``exp`` with the resolved values in place (the input is untouched)."""
    groups = {group: dataclasses.replace(getattr(exp, group), **values)
              for group, values in resolved.items() if values}
    return dataclasses.replace(exp, **groups) if groups else exp


def refuse_unknown_keys(node: DictConfig, prefix: str = "") -> None:
    """A key that no schema field holds is refused, with the nearest valid key. Hydra's
    ``+key=value`` adds keys even to a structured config, and ``OmegaConf.to_object``
    keeps them silently: ``+model.epoch=10`` (for ``epochs``) would run and be ignored."""
    schema = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(schema):
        return
    valid = [f.name for f in dataclasses.fields(schema)]
    for key in node.keys():
        name = f"{prefix}{key}"
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(valid)}"
            raise ConfigError(f"unknown config key {name!r}{hint}")
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            refuse_unknown_keys(child, f"{name}.")


def build(cfg: DictConfig) -> ExperimentConfig:
    """Composed DictConfig -> validated ExperimentConfig (raises ConfigError)."""
    for group in ("model", "method", "precision", "hardware", "exporter"):
        if OmegaConf.get_type(cfg, group) is dict:
            raise ConfigError(f"config group {group!r} is not built on a /schema/{group} schema")
    if "deployment" in cfg and cfg.deployment is not None and OmegaConf.get_type(cfg, "deployment") is dict:
        raise ConfigError("config group 'deployment' is not built on the /schema/deployment schema")
    refuse_unknown_keys(cfg)
    try:
        exp = OmegaConf.to_object(cfg)
    except ConfigError:  # a schema's own __post_init__ validation
        raise
    except Exception as exc:  # OmegaConf's own validation errors
        cause = exc.__cause__ if isinstance(exc.__cause__, ConfigError) else None
        if cause is not None:
            raise cause from None
        raise ConfigError(str(exc).splitlines()[0]) from exc
    if not isinstance(exp, ExperimentConfig):
        raise ConfigError("the primary config must start from experiment_schema")
    return resolve(exp, exp.validate())
