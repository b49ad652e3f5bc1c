"""Typed configuration: the config core.

- ``errors``: ``ConfigError`` (one line, exit code 2) and shared checks;
- ``enums``: enums several groups share;
- ``groups``: the base schema of each config group (model, method, precision,
  hardware, exporter); methods, exporters and model families subclass them in
  their own packages (``quantexp/methods/<name>/config.py``, ...);
- ``experiment``: ``ExperimentConfig`` and the bench/eval/tracking/search settings;
- ``compat``: the compatibility check and ``build`` (DictConfig -> dataclasses);
- ``registry``: schema discovery and Hydra ConfigStore registration.

Each YAML in ``conf/<group>/`` starts from one schema (its defaults list names
``/schema/<group>/<kind>``), so Hydra rejects unknown keys and OmegaConf wrong
types at compose time. This package stays free of heavy imports (no torch):
``run.py --help`` and ``--cfg job`` import it.
"""

from quantexp.config.compat import build, check_compatibility, resolve
from quantexp.config.enums import DTYPE_BITS, MIXED_DTYPES, DType, Family, Granularity, GraphOptimization, Observer
from quantexp.config.errors import ConfigError, require_positive
from quantexp.config.experiment import (
    OBJECTIVES,
    BenchConfig,
    BudgetConfig,
    EvalConfig,
    ExperimentConfig,
    Isolation,
    LaunchConfig,
    SearchConfig,
    TrackingConfig,
)
from quantexp.config.groups import (
    MPS_DTYPES,
    CalibrationConfig,
    ExporterConfig,
    HardwareConfig,
    MethodConfig,
    ModelConfig,
    PrecisionConfig,
)
from quantexp.config.registry import all_schemas, implementation_of, register_configs, schemas

__all__ = [
    "DTYPE_BITS", "MIXED_DTYPES", "MPS_DTYPES", "OBJECTIVES", "BenchConfig", "BudgetConfig",
    "CalibrationConfig", "ConfigError", "DType", "EvalConfig", "ExperimentConfig", "ExporterConfig",
    "Family", "Granularity", "GraphOptimization", "HardwareConfig", "Isolation", "LaunchConfig", "MethodConfig", "ModelConfig",
    "Observer", "PrecisionConfig", "SearchConfig", "TrackingConfig", "all_schemas", "build",
    "check_compatibility", "implementation_of", "register_configs", "require_positive", "resolve", "schemas",
]
