"""The base schema of each config group (model, method, precision, hardware,
exporter). A method, exporter or model family subclasses its base in its own
package's ``config.py``; precision and hardware have one schema each.

Every group schema validates itself in ``__post_init__``, so a schema built in
Python (``CNNConfig(epochs=0)``) is refused exactly as the same values composed
by Hydra are (``OmegaConf.to_object`` calls the dataclass constructor).
ClassVars say what a method or exporter accepts; the compatibility check
(``quantexp.config.compat``) asks them, it holds no tables about them.
"""

from __future__ import annotations

import os
from dataclasses import MISSING as NO_DEFAULT
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from omegaconf import MISSING

from quantexp.config.enums import DTYPE_BITS, DType, Family, Granularity, Observer
from quantexp.config.errors import ConfigError, require_finite_positive, require_positive, require_safe_name

if TYPE_CHECKING:
    from quantexp.config.experiment import ExperimentConfig


class _Schema:
    """What every group schema shares: validation on construction, the key it is
    registered under, and the class that implements it."""

    #: "package.module:Class" of the implementation (a method, exporter or model
    #: family builder); the registry imports it only when the schema is used.
    implementation: ClassVar[str] = ""
    #: The field whose default names the schema in its group (``method=<name>``).
    key_field: ClassVar[str] = "name"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuse values of this group alone with a one-line ``ConfigError``."""

    @classmethod
    def schema_key(cls) -> str | None:
        """The name this schema is registered under, or None for an abstract base."""
        for f in fields(cls):  # type: ignore[arg-type]
            if f.name == cls.key_field:
                default = f.default
                if default is NO_DEFAULT or default == MISSING:
                    return None
                return getattr(default, "value", default)
        return None


# -------------------------------------------------------------------- models
@dataclass
class ModelConfig(_Schema):
    """Fields shared by every model: what to load and how to train the fp32 model."""

    key_field: ClassVar[str] = "family"

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
        require_safe_name(self.name, "model.name")
        require_positive(self, "epochs", "batch_size")
        require_finite_positive(self.lr, "model.lr")
        for key in ("n_train", "n_test"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"model.{key} must be >= 1 or null, got {value}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"model.test_fraction must be in (0, 1), got {self.test_fraction}")


def max_threads() -> int:
    """The most intra-op threads a run may ask for: 4x the cores (beyond that a run
    measures the scheduler, not the model; 999 on 2 cores started 2,000 OS threads)."""
    return 4 * (os.cpu_count() or 1)


# ------------------------------------------------------------------- methods
@dataclass
class CalibrationConfig:
    size: int = 256
    # Seed of the draw from the training set; null uses the experiment seed.
    seed: Optional[int] = None
    observer: Observer = Observer.histogram
    batch_size: int = 32


@dataclass
class MethodConfig(_Schema):
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
        require_positive(self.calibration, "size", "batch_size", prefix="method.calibration")

    def training_items(self) -> int:
        """Training items the method draws (its calibration set; method=cascade adds the
        items it calibrates its threshold on): the pre-flight refuses more than there are."""
        return self.calibration.size

    def check(self, exp: "ExperimentConfig") -> dict[str, Any]:
        """Cross-group rules of this method (run by ``check_compatibility`` before any
        model loads). Returns the values it resolves ({field: value}); never mutates."""
        return {}


# ----------------------------------------------------------------- precision
@dataclass
class PrecisionConfig(_Schema):
    name: str = MISSING
    weight_dtype: DType = DType.fp32
    activation_dtype: DType = DType.fp32
    granularity: Granularity = Granularity.per_channel
    symmetric_weights: bool = True

    @property
    def weight_bits(self) -> int:
        return DTYPE_BITS[self.weight_dtype]

    @property
    def activation_bits(self) -> int:
        return DTYPE_BITS[self.activation_dtype]


# ------------------------------------------------------------------ hardware
MPS_DTYPES = (DType.fp16, DType.bf16)


@dataclass
class HardwareConfig(_Schema):
    name: str = MISSING
    device: str = "cpu"
    # Intra-op threads for torch and every runtime; null: all cores this process may use.
    threads: Optional[int] = None
    # Compute dtype of the PyTorch runtime on the device (mps: fp16 | bf16); null: the
    # model's own dtype.
    dtype: Optional[DType] = None

    def validate(self) -> None:
        if self.threads is not None and not 1 <= self.threads <= max_threads():
            raise ConfigError(f"hardware.threads must be in [1, {max_threads()}] (4x this host's "
                              f"{os.cpu_count()} cores) or null, got {self.threads}")
        if self.dtype is not None and (self.device != "mps" or self.dtype not in MPS_DTYPES):
            raise ConfigError(f"hardware.dtype={self.dtype.value} is not supported on "
                              f"hardware={self.name}; valid: null, or fp16|bf16 on hardware=mps")


# ------------------------------------------------------------------ exporter
@dataclass
class ExporterConfig(_Schema):
    name: str = MISSING
    #: Hardware targets this format deploys to.
    hardware: ClassVar[frozenset[str]] = frozenset()

    def check(self, exp: "ExperimentConfig") -> dict[str, Any]:
        """Cross-group rules of this exporter (run by ``check_compatibility``, before any
        model loads). Returns the ``auto`` fields it resolves from the other groups
        ({field: value}); never mutates the config."""
        return {}

    def unmeasurable_reason(self) -> str | None:
        """Why this host can convert to the format but not run it (no accuracy, no
        latency), or None when it can run it."""
        return None
