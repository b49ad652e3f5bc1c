"""Typed configuration: dataclass schemas for every config group, registered in
Hydra's ConfigStore, and the compatibility check that runs before any model loads.

Each YAML in ``conf/<group>/`` starts from one of these schemas (its defaults
list names ``/schema/<group>/<kind>``), so Hydra rejects unknown keys and
OmegaConf rejects values of the wrong type or outside an enum at compose time.
``build()`` turns the composed DictConfig into these dataclasses and runs the
cross-group rules (``check_compatibility``); both raise ``ConfigError`` with a
one-line message that names the valid choices.

This module must stay free of heavy imports (no torch): ``run.py --help`` and
``--cfg job`` import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
    """A configuration the user must fix; printed as one line, exit code 2."""


# --------------------------------------------------------------------- enums
class Family(str, Enum):
    cnn = "cnn"
    rnn = "rnn"
    transformer = "transformer"


class Observer(str, Enum):
    """Calibration observers PyTorch's x86 backend offers for activations."""

    minmax = "minmax"
    moving_average_minmax = "moving_average_minmax"
    histogram = "histogram"  # searches the clipping range that minimises L2 error


class Granularity(str, Enum):
    per_tensor = "per_tensor"
    per_channel = "per_channel"


class DType(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"
    int8 = "int8"
    int4 = "int4"
    nf4 = "nf4"
    fp4 = "fp4"


# -------------------------------------------------------------------- models
@dataclass
class ModelConfig:
    """Fields shared by every model: what to load and how to train the fp32 model."""

    name: str = MISSING
    family: Family = MISSING
    dataset: str = MISSING
    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3
    # Caps on the number of items used (None: everything the dataset has).
    n_train: Optional[int] = None
    n_test: Optional[int] = None
    # The train/test split is drawn with its own seed so that changing the
    # experiment seed changes training, never which items are in the test set.
    split_seed: int = 0
    test_fraction: float = 0.2

    def validate(self) -> None:
        _positive(self, "epochs", "batch_size")
        if self.lr <= 0:
            raise ConfigError(f"model.lr must be > 0, got {self.lr}")
        for key in ("n_train", "n_test"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"model.{key} must be >= 1 or null, got {value}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"model.test_fraction must be in (0, 1), got {self.test_fraction}")


@dataclass
class CNNConfig(ModelConfig):
    family: Family = Family.cnn
    channels: list[int] = field(default_factory=lambda: [16, 32])
    hidden: int = 64


@dataclass
class RNNConfig(ModelConfig):
    family: Family = Family.rnn
    hidden: int = 64
    layers: int = 1


@dataclass
class TransformerConfig(ModelConfig):
    """A pretrained text encoder (local files only) + a linear classifier head
    trained on its frozen, mean-pooled features."""

    family: Family = Family.transformer
    # Local HuggingFace model directory; "package:<module>/<subdir>" resolves a
    # directory shipped inside an installed Python package.
    path: str = MISSING
    # Expected sha256 of the weights file (model.safetensors); null skips the check.
    sha256: Optional[str] = None
    max_length: int = 64
    head_epochs: int = 30

    def validate(self) -> None:
        super().validate()
        _positive(self, "max_length", "head_epochs")


# ------------------------------------------------------------------- methods
@dataclass
class CalibrationConfig:
    size: int = 256
    # Seed of the draw from the training set; null uses the experiment seed.
    seed: Optional[int] = None
    observer: Observer = Observer.histogram
    batch_size: int = 32


@dataclass
class MethodConfig:
    """Base of every method. ClassVars say what the method can be combined with;
    ``check_compatibility`` reads them before anything heavy happens."""

    name: str = MISSING
    # Every method carries a calibration block so that one sweep can vary it
    # across methods; only methods with needs_calibration draw the set.
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    families: ClassVar[frozenset[str]] = frozenset(f.value for f in Family)
    precisions: ClassVar[frozenset[str]] = frozenset({"fp32"})
    hardware: ClassVar[frozenset[str]] = frozenset({"cpu", "cuda", "mps", "ane"})
    exporters: ClassVar[frozenset[str]] = frozenset({"none"})

    def validate(self) -> None:
        _positive(self.calibration, "size", "batch_size", prefix="method.calibration")


@dataclass
class Fp32Config(MethodConfig):
    name: str = "fp32"
    precisions: ClassVar[frozenset[str]] = frozenset({"fp32"})


@dataclass
class PTQStaticConfig(MethodConfig):
    name: str = "ptq_static"
    precisions: ClassVar[frozenset[str]] = frozenset({"int8"})
    # PyTorch's eager/FX int8 kernels (fbgemm / oneDNN) are CPU kernels.
    hardware: ClassVar[frozenset[str]] = frozenset({"cpu"})


@dataclass
class PTQDynamicConfig(MethodConfig):
    name: str = "ptq_dynamic"
    # quantize_dynamic: int8 weights + activations quantized per batch at run
    # time, or fp16 weights.
    precisions: ClassVar[frozenset[str]] = frozenset({"int8", "fp16"})
    hardware: ClassVar[frozenset[str]] = frozenset({"cpu"})


# ----------------------------------------------------------------- precision
@dataclass
class PrecisionConfig:
    name: str = MISSING
    weight_dtype: DType = DType.fp32
    activation_dtype: DType = DType.fp32
    granularity: Granularity = Granularity.per_channel
    symmetric_weights: bool = True

    @property
    def weight_bits(self) -> int:
        return _BITS[self.weight_dtype]

    @property
    def activation_bits(self) -> int:
        return _BITS[self.activation_dtype]

    def validate(self) -> None:
        pass


_BITS = {DType.fp32: 32, DType.fp16: 16, DType.bf16: 16, DType.int8: 8, DType.int4: 4,
         DType.nf4: 4, DType.fp4: 4}


# ------------------------------------------------------------------ hardware
@dataclass
class HardwareConfig:
    name: str = MISSING
    device: str = "cpu"
    # Intra-op threads for torch and every runtime; null: all cores this process may use.
    threads: Optional[int] = None

    def validate(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"hardware.threads must be >= 1 or null, got {self.threads}")


# ------------------------------------------------------------------ exporter
@dataclass
class ExporterConfig:
    name: str = MISSING

    def validate(self) -> None:
        pass


# -------------------------------------------------------------- measurement
@dataclass
class BenchConfig:
    batch_size: int = 16
    warmup: int = 5
    min_iters: int = 30
    min_seconds: float = 2.0
    # Hard stop so a pathologically slow model cannot hang a sweep.
    max_seconds: float = 60.0
    # Coefficient of variation (%) above which a measurement is flagged noisy.
    noisy_cv_pct: float = 10.0

    def validate(self) -> None:
        _positive(self, "batch_size", "min_iters", prefix="bench")
        if self.warmup < 0 or self.min_seconds < 0 or self.max_seconds <= 0:
            raise ConfigError("bench.warmup and bench.min_seconds must be >= 0, bench.max_seconds > 0")


@dataclass
class EvalConfig:
    batch_size: int = 256
    bootstrap: int = 2000
    confidence: float = 0.95
    # Quality gate: a run whose accuracy drops more than this (in points, 0-100)
    # is marked as failing the gate; its numbers are still reported.
    max_accuracy_drop: Optional[float] = None

    def validate(self) -> None:
        _positive(self, "batch_size", "bootstrap", prefix="eval")
        if not 0.5 <= self.confidence < 1.0:
            raise ConfigError(f"eval.confidence must be in [0.5, 1), got {self.confidence}")


@dataclass
class TrackingConfig:
    # null: $MLFLOW_TRACKING_URI if set, else sqlite:///<project>/mlflow.db
    uri: Optional[str] = None
    experiment: str = "quantexp"
    enabled: bool = True
    log_model: bool = True


@dataclass
class ExperimentConfig:
    """The top-level schema; the five groups are typed by their own schemas."""

    model: Any = MISSING
    method: Any = MISSING
    precision: Any = MISSING
    hardware: Any = MISSING
    exporter: Any = MISSING
    seed: int = 0
    # Where fp32 models are cached; null: <project>/.cache/quantexp
    cache_dir: Optional[str] = None
    # Also measure the fp32 model in the same run, for deltas and speed-ups.
    compare_fp32: bool = True
    bench: BenchConfig = field(default_factory=BenchConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def validate(self) -> None:
        for part in (self.model, self.method, self.precision, self.hardware, self.exporter,
                     self.bench, self.eval):
            part.validate()
        check_compatibility(self)


SCHEMAS: dict[str, dict[str, type]] = {
    "model": {"cnn": CNNConfig, "rnn": RNNConfig, "transformer": TransformerConfig},
    "method": {"fp32": Fp32Config, "ptq_static": PTQStaticConfig, "ptq_dynamic": PTQDynamicConfig},
    "precision": {"precision": PrecisionConfig},
    "hardware": {"hardware": HardwareConfig},
    "exporter": {"exporter": ExporterConfig},
}


def register_configs() -> None:
    """Put every schema in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="experiment_schema", node=ExperimentConfig)
    for group, kinds in SCHEMAS.items():
        for kind, schema in kinds.items():
            cs.store(group=f"schema/{group}", name=kind, node=schema)


def register_method_schema(name: str, schema: type[MethodConfig]) -> None:
    """Let a method module add its schema (used by methods added after the spine)."""
    SCHEMAS["method"][name] = schema
    ConfigStore.instance().store(group="schema/method", name=name, node=schema)


# ------------------------------------------------------------ compatibility
HARDWARE_EXPORTERS: dict[str, frozenset[str]] = {
    "cpu": frozenset({"none"}),
    "cuda": frozenset({"none"}),
    "mps": frozenset({"none"}),
    "ane": frozenset({"coreml"}),
}


def check_compatibility(cfg: ExperimentConfig) -> None:
    """method x model family x precision x hardware x exporter, before any model loads."""
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
    allowed_exporters = HARDWARE_EXPORTERS.get(hardware, frozenset())
    if exporter not in allowed_exporters:
        raise ConfigError(
            f"hardware={hardware} cannot deploy with exporter={exporter}; "
            f"valid exporters for {hardware}: {', '.join(sorted(allowed_exporters)) or 'none'}"
        )


def build(cfg: DictConfig) -> ExperimentConfig:
    """Composed DictConfig -> validated ExperimentConfig (raises ConfigError)."""
    for group in ("model", "method", "precision", "hardware", "exporter"):
        if OmegaConf.get_type(cfg, group) is dict:
            raise ConfigError(f"config group {group!r} is not built on a /schema/{group} schema")
    try:
        exp = OmegaConf.to_object(cfg)
    except Exception as exc:  # OmegaConf's own validation errors
        raise ConfigError(str(exc).splitlines()[0]) from exc
    if not isinstance(exp, ExperimentConfig):
        raise ConfigError("the primary config must start from experiment_schema")
    exp.validate()
    return exp


def _positive(obj: Any, *names: str, prefix: str = "model") -> None:
    for name in names:
        value = getattr(obj, name)
        if value < 1:
            raise ConfigError(f"{prefix}.{name} must be >= 1, got {value}")
