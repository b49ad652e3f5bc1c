"""Schema discovery and Hydra ConfigStore registration.

A method, exporter or model family is a package under ``quantexp/methods``,
``quantexp/exporters`` or ``quantexp/models`` whose torch-free ``config.py``
defines its schema(s). ``schemas(group)`` walks those packages and imports only
their ``config`` modules (a plug-in lookup by name, like entry points: no
static import goes from this layer up to the implementations). A schema names
its implementation class (``implementation = "module:Class"``), which
``implementation_of`` imports when a run uses it.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import pkgutil

from hydra.core.config_store import ConfigStore

from quantexp.config.deployment import DeploymentConfig
from quantexp.config.experiment import ExperimentConfig
from quantexp.config.groups import ExporterConfig, HardwareConfig, MethodConfig, ModelConfig, PrecisionConfig

GROUPS = ("model", "method", "precision", "hardware", "exporter")
# Groups whose schemas live in plug-in packages: group -> (package, base schema).
_PLUGIN_GROUPS: dict[str, tuple[str, type]] = {
    "model": ("quantexp.models", ModelConfig),
    "method": ("quantexp.methods", MethodConfig),
    "exporter": ("quantexp.exporters", ExporterConfig),
}
# Groups with a single schema in the config core.
_CORE_GROUPS: dict[str, dict[str, type]] = {
    "precision": {"precision": PrecisionConfig},
    "hardware": {"hardware": HardwareConfig},
}


@functools.cache
def schemas(group: str) -> dict[str, type]:
    """{registered name: schema class} of one config group."""
    if group in _CORE_GROUPS:
        return dict(_CORE_GROUPS[group])
    package_name, base = _PLUGIN_GROUPS[group]
    package = importlib.import_module(package_name)
    found: dict[str, type] = {}
    for info in pkgutil.iter_modules(package.__path__):
        module_name = f"{package_name}.{info.name}.config"
        if not info.ispkg or importlib.util.find_spec(module_name) is None:
            continue
        module = importlib.import_module(module_name)
        for obj in vars(module).values():
            if (isinstance(obj, type) and issubclass(obj, base) and obj.__module__ == module_name
                    and dataclasses.is_dataclass(obj)):
                key = obj.schema_key()
                if key is not None:
                    if key in found:
                        raise RuntimeError(f"two {group} schemas named {key!r}: "
                                           f"{found[key].__module__} and {module_name}")
                    found[key] = obj
    return dict(sorted(found.items()))


def all_schemas() -> dict[str, dict[str, type]]:
    return {group: schemas(group) for group in GROUPS}


def implementation_of(schema: type | object) -> type:
    """The class a schema names (``"package.module:Class"``), imported now."""
    target = schema.implementation
    if not target:
        raise KeyError(f"schema {getattr(schema, '__name__', type(schema).__name__)} names no implementation")
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


@functools.cache
def register_configs() -> None:
    """Put every schema in Hydra's ConfigStore, once per process (later calls, e.g. from
    every ``quantexp.compose``, return at once; the schemas are discovered once too):
    ``experiment_schema`` and ``schema/<group>/<name>`` for the yaml files' defaults lists."""
    cs = ConfigStore.instance()
    # replace=True: a name stored by someone else before us is replaced, not a warning
    cs.store(name="experiment_schema", node=ExperimentConfig, replace=True)
    for group, kinds in all_schemas().items():
        for kind, schema in kinds.items():
            cs.store(group=f"schema/{group}", name=kind, node=schema, replace=True)
    cs.store(group="schema/deployment", name="deployment", node=DeploymentConfig, replace=True)
