"""Schema of method=mixed: a dtype per layer, manual or solved under a budget (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar, Optional

from quantexp.config import MIXED_DTYPES, BudgetConfig, ConfigError, DType, MethodConfig


class MixedStrategy(str, Enum):
    manual = "manual"  # method.assignment (+ method.default for the layers it does not name)
    auto = "auto"      # sensitivity analysis + solver under method.budget


class MixedObjective(str, Enum):
    size = "size"
    latency = "latency"


@dataclass
class MixedPrecisionConfig(MethodConfig):
    """Per-layer precision (quantexp/methods/mixed/, layers in quantexp/quant/mixed_layers.py)."""

    name: str = "mixed"
    implementation: ClassVar[str] = "quantexp.methods.mixed.method:MixedPrecision"
    strategy: MixedStrategy = MixedStrategy.manual
    # manual: {layer qualified name: dtype}; layers not named run in `default`.
    assignment: dict[str, DType] = field(default_factory=dict)
    default: DType = DType.fp32
    # dtypes the analysis / solver / search may use.
    choices: list[DType] = field(default_factory=lambda: list(MIXED_DTYPES))
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    objective: MixedObjective = MixedObjective.size  # what auto minimises under the budget
    sensitivity: bool = False       # also run the sensitivity analysis in manual mode
    # Hutchinson probes at most (0: skip the Hessian score); sampling stops earlier once
    # every layer's trace has a standard error below hessian_tol * |trace|. 8 probes left
    # the CNN's small layers at +-86% (conv1) and swapped two layers of the ranking.
    # null: 64, or 16 for the transformer family (a probe through MiniLM costs ~5 s on
    # this busy 2-core host, and its indefinite Hessian never settled within 64 probes)
    hessian_samples: Optional[int] = None
    hessian_tol: Optional[float] = 0.1
    # calibration items in the loss whose Hessian is estimated (null: 256, or 16 for the
    # transformer family, whose double backward through attention costs ~5 forward passes)
    hessian_items: Optional[int] = None
    # calibration items the one-layer-at-a-time evaluation uses (null: all of them, or
    # 64 for the transformer family: 41 layers, each evaluated from its own block on)
    sensitivity_items: Optional[int] = None
    # offer the solver only (layer, dtype) kernels this host runs fast (ISA check +
    # a cached micro-benchmark against the fp32 layer; quantexp/quant/kernels.py)
    kernel_filter: bool = True
    # auto: the predicted latency (measured per-layer kernel times, summed) at most this
    # multiple of the uniform int8 model's (null: no such limit)
    max_latency_vs_int8: Optional[float] = 1.0
    precisions: ClassVar[frozenset[str]] = frozenset({"mixed"})
    hardware: ClassVar[frozenset[str]] = frozenset({"cpu"})

    def validate(self) -> None:
        super().validate()
        self.budget.validate("method.budget")
        for dtype in [*self.assignment.values(), self.default, *self.choices]:
            if dtype not in MIXED_DTYPES:
                raise ConfigError(f"method=mixed cannot assign {dtype.value}; valid dtypes: "
                                  f"{', '.join(d.value for d in MIXED_DTYPES)}")
        if self.hessian_samples is not None and self.hessian_samples < 0:
            raise ConfigError(f"method.hessian_samples must be >= 0, got {self.hessian_samples}")
        if self.hessian_tol is not None and self.hessian_tol <= 0:
            raise ConfigError(f"method.hessian_tol must be > 0 or null, got {self.hessian_tol}")
        if self.hessian_items is not None and self.hessian_items < 1:
            raise ConfigError(f"method.hessian_items must be >= 1 or null, got {self.hessian_items}")
        if self.max_latency_vs_int8 is not None and self.max_latency_vs_int8 <= 0:
            raise ConfigError(f"method.max_latency_vs_int8 must be > 0 or null, got {self.max_latency_vs_int8}")
        if self.sensitivity_items is not None and self.sensitivity_items < 1:
            raise ConfigError(f"method.sensitivity_items must be >= 1 or null, got {self.sensitivity_items}")
        if self.strategy == MixedStrategy.auto and all(v is None for v in vars(self.budget).values()):
            raise ConfigError("method.strategy=auto needs a budget: set at least one of "
                              "method.budget.max_accuracy_drop, max_size_mb, max_latency_ms")
