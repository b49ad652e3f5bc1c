"""Schemas of quantization-aware training (qat, qat_finetune) and the bit-width rule
they share (``qat_bits``), torch-free."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from quantexp.config import ConfigError, MethodConfig, require_positive

if TYPE_CHECKING:
    from quantexp.config import ExperimentConfig, PrecisionConfig


class LRSchedule(str, Enum):
    cosine = "cosine"
    step = "step"  # x0.1 at 2/3 of training
    constant = "constant"


class QATInit(str, Enum):
    scratch = "scratch"  # fresh initialisation of the model's architecture
    fp32 = "fp32"  # the cached fp32 weights


# Weight / activation dtypes QAT can simulate and convert to int8 kernels, and their bits.
QAT_WEIGHT_BITS = {"int8": 8, "int4": 4}
QAT_ACTIVATION_BITS = {"int8": 8}


def qat_bits(precision: "PrecisionConfig", bit_schedule: list[int] | tuple[int, ...] = ()) -> tuple[int, int]:
    """(weight bits, activation bits) of a QAT precision; refuses impossible bit widths
    and a bit schedule that does not lower monotonically to the precision's width."""
    wd = getattr(precision.weight_dtype, "value", precision.weight_dtype)
    ad = getattr(precision.activation_dtype, "value", precision.activation_dtype)
    if wd not in QAT_WEIGHT_BITS:
        raise ConfigError(f"precision.weight_dtype={wd} is impossible for QAT; valid weight dtypes: "
                          f"{', '.join(QAT_WEIGHT_BITS)}")
    if ad not in QAT_ACTIVATION_BITS:
        raise ConfigError(f"precision.activation_dtype={ad} is impossible for QAT; valid activation "
                          f"dtypes: {', '.join(QAT_ACTIVATION_BITS)}")
    w_bits = QAT_WEIGHT_BITS[wd]
    previous = 8
    for bits in bit_schedule:
        if not w_bits <= bits <= 8:
            raise ConfigError(f"method.bit_schedule entry {bits} is impossible with precision={precision.name}: "
                              f"entries must lie in [{w_bits}, 8] (the final width is {w_bits} bits)")
        if bits > previous:
            raise ConfigError(f"method.bit_schedule must not increase, got {list(bit_schedule)}")
        previous = bits
    return w_bits, QAT_ACTIVATION_BITS[ad]


@dataclass
class QATConfig(MethodConfig):
    """Quantization-aware training: fake quantization (straight-through estimator)
    of weights and activations at the precision's bit widths, then conversion to
    int8 kernels (4-bit weights: int4 values in int8 kernels)."""

    name: str = "qat"
    implementation: ClassVar[str] = "quantexp.methods.qat.method:QAT"
    init: QATInit = QATInit.scratch
    # conf/method/qat.yaml gives init=scratch the fp32 recipe: the model's epochs,
    # batch_size and lr, constant LR (measurements there).
    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3
    lr_schedule: LRSchedule = LRSchedule.cosine
    # Early stopping: epochs without validation gain before stopping (0: never).
    patience: int = 2
    # Share of the training split held out for validation (the test split is never used).
    val_fraction: float = 0.1
    # Cap on training items per epoch (null: the whole training part).
    max_train_items: Optional[int] = None
    # Observers (hence scales) freeze after this many steps; null: never.
    freeze_observers_after: Optional[int] = None
    # Batch-norm running statistics freeze after this many steps (CNNs with BN); null: never.
    freeze_bn_after: Optional[int] = None
    # Per-step metrics go to MLflow every log_every steps.
    log_every: int = 10
    # null: drawn from the experiment-seeded RNG.
    seed: Optional[int] = None
    # Our transformer family trains only a head on a frozen encoder: no trainable path for QAT.
    families: ClassVar[frozenset[str]] = frozenset({"cnn", "rnn"})
    precisions: ClassVar[frozenset[str]] = frozenset({"int8", "w4a8", "w4a8_tensor"})
    hardware: ClassVar[frozenset[str]] = frozenset({"cpu", "ane"})
    exporters: ClassVar[frozenset[str]] = frozenset({"none", "coreml"})

    def validate(self) -> None:
        super().validate()
        require_positive(self, "epochs", "batch_size", "log_every", prefix="method")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ConfigError(f"method.lr must be a finite number > 0, got {self.lr}")
        if self.patience < 0:
            raise ConfigError(f"method.patience must be >= 0 (0: no early stopping), got {self.patience}")
        if not 0.0 < self.val_fraction < 0.5:
            raise ConfigError(f"method.val_fraction must be in (0, 0.5), got {self.val_fraction}")
        for key in ("max_train_items", "freeze_observers_after", "freeze_bn_after"):
            value = getattr(self, key)
            if value is not None and value < (1 if key == "max_train_items" else 0):
                raise ConfigError(f"method.{key} must be >= {1 if key == 'max_train_items' else 0} "
                                  f"or null, got {value}")

    def bit_schedule_list(self) -> list[int]:
        return []

    def check(self, cfg: "ExperimentConfig") -> dict[str, Any]:
        qat_bits(cfg.precision, self.bit_schedule_list())
        return {}


@dataclass
class QATFinetuneConfig(QATConfig):
    """QAT fine-tuning of the cached fp32 model: gradual quantization, Quant-Noise,
    distillation from the fp32 teacher, optional range regulariser."""

    name: str = "qat_finetune"
    implementation: ClassVar[str] = "quantexp.methods.qat.finetune:QATFinetune"
    init: QATInit = QATInit.fp32
    epochs: int = 2
    lr: float = 2e-4
    # Gradual quantization: layers (input -> output) split into this many groups,
    # group g switched on at step g * gradual_interval (1 group: all at once).
    gradual_groups: int = 1
    gradual_interval: int = 0
    # Weight bits per epoch, lowered towards the precision's width, e.g. [8, 6];
    # later epochs use the precision's width. []: the precision's width throughout.
    bit_schedule: list[int] = field(default_factory=list)
    # Quant-Noise (Fan et al., 2020): share of weights quantized each step (1.0: all).
    quant_noise: float = 1.0
    # Knowledge distillation from the fp32 model: loss += distill_weight * T^2 * KL.
    distill_weight: float = 1.0
    distill_temperature: float = 4.0
    # Range regulariser weight (sum over layers of max|W|^2); 0 disables it.
    range_reg: float = 0.0

    def validate(self) -> None:
        super().validate()
        if self.init != QATInit.fp32:
            raise ConfigError("method=qat_finetune starts from the cached fp32 model: method.init must be fp32 "
                              "(use method=qat for init=scratch)")
        if self.gradual_groups < 1 or self.gradual_interval < 0:
            raise ConfigError(f"method.gradual_groups must be >= 1 and method.gradual_interval >= 0, "
                              f"got {self.gradual_groups}, {self.gradual_interval}")
        if not 0.0 < self.quant_noise <= 1.0:
            raise ConfigError(f"method.quant_noise must be in (0, 1], got {self.quant_noise}")
        if self.distill_weight < 0 or self.range_reg < 0 or not self.distill_temperature > 0:
            raise ConfigError("method.distill_weight and method.range_reg must be >= 0, "
                              "method.distill_temperature > 0")

    def bit_schedule_list(self) -> list[int]:
        return list(self.bit_schedule)
