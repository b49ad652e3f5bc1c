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

import math
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
    exporters: ClassVar[frozenset[str]] = MethodConfig.exporters | {"tflite", "coreml", "onnx"}


@dataclass
class PTQStaticConfig(MethodConfig):
    name: str = "ptq_static"
    # w4a8: 4-bit weight values (observed on [-8, 7]) in int8 kernels, int8 activations;
    # w4a8_tensor: the same with per-tensor weight scales.
    precisions: ClassVar[frozenset[str]] = frozenset({"int8", "w4a8", "w4a8_tensor"})
    # PyTorch's eager/FX int8 kernels (fbgemm / oneDNN) are CPU kernels; ane: the int8
    # model lowered to a Core ML W8A8 package (exporter=coreml, see exporters/coreml.py).
    hardware: ClassVar[frozenset[str]] = frozenset({"cpu", "ane"})
    # tflite: full-integer int8 by the TFLite toolchain (see TFLiteExporterConfig).
    # onnx: torch.onnx exports the int8 model as a QDQ graph (int8 weights, calibrated
    # activation scales) that ONNX Runtime runs (see exporters/onnx.py).
    exporters: ClassVar[frozenset[str]] = MethodConfig.exporters | {"tflite", "coreml", "onnx"}


@dataclass
class PTQDynamicConfig(MethodConfig):
    name: str = "ptq_dynamic"
    # quantize_dynamic: int8 weights + activations quantized per batch at run
    # time, or fp16 weights.
    precisions: ClassVar[frozenset[str]] = frozenset({"int8", "fp16"})
    # ane: the int8 weights in a Core ML package (exporter=coreml; activations fp16).
    hardware: ClassVar[frozenset[str]] = frozenset({"cpu", "ane"})
    # tflite: dynamic-range int8 by the TFLite toolchain (see TFLiteExporterConfig).
    # Not onnx: torch.onnx has no symbolic for quantized::linear_dynamic (use ort_dynamic).
    exporters: ClassVar[frozenset[str]] = MethodConfig.exporters | {"tflite", "coreml"}


class ComputeDType(str, Enum):
    """dtype the 4-bit weights are dequantized to for the matmul (activations)."""

    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


# Blocksizes bitsandbytes 0.50 accepts for 4-bit quantization (functional.quantize_4bit).
BNB_4BIT_BLOCKSIZES: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048, 4096)


@dataclass
class BnbInt8Config(MethodConfig):
    """bitsandbytes LLM.int8(): every nn.Linear becomes Linear8bitLt (int8 row-wise
    weights; activation columns with |x| >= threshold stay in fp16)."""

    name: str = "bnb_int8"
    # Outlier threshold of the mixed-precision decomposition; 0 disables it.
    threshold: float = 6.0
    # Linear layers whose qualified name contains any of these substrings stay fp32.
    skip_modules: list[str] = field(default_factory=list)
    precisions: ClassVar[frozenset[str]] = frozenset({"int8"})
    hardware: ClassVar[frozenset[str]] = frozenset({"cpu", "cuda"})

    def validate(self) -> None:
        super().validate()
        if not self.threshold >= 0.0:
            raise ConfigError(f"method.threshold must be >= 0 (0 disables outlier decomposition), "
                              f"got {self.threshold}")


@dataclass
class BnbNF4Config(MethodConfig):
    """bitsandbytes 4-bit (QLoRA): every nn.Linear becomes Linear4bit; the 4-bit code
    (nf4 or fp4) comes from the precision group."""

    name: str = "bnb_nf4"
    blocksize: int = 64
    # Double quantization: the per-block fp32 absmax are themselves quantized to 8 bits.
    double_quant: bool = True
    compute_dtype: ComputeDType = ComputeDType.fp32
    skip_modules: list[str] = field(default_factory=list)
    precisions: ClassVar[frozenset[str]] = frozenset({"nf4", "fp4"})
    hardware: ClassVar[frozenset[str]] = frozenset({"cpu", "cuda"})

    def validate(self) -> None:
        super().validate()
        if self.blocksize not in BNB_4BIT_BLOCKSIZES:
            raise ConfigError(f"method.blocksize={self.blocksize} is not supported by bitsandbytes; "
                              f"valid blocksizes: {', '.join(map(str, BNB_4BIT_BLOCKSIZES))}")


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
        _positive(self, "epochs", "batch_size", "log_every", prefix="method")
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

    def check(self, cfg: "ExperimentConfig") -> None:
        qat_bits(cfg.precision, self.bit_schedule_list())


@dataclass
class QATFinetuneConfig(QATConfig):
    """QAT fine-tuning of the cached fp32 model: gradual quantization, Quant-Noise,
    distillation from the fp32 teacher, optional range regulariser."""

    name: str = "qat_finetune"
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


class MixedStrategy(str, Enum):
    manual = "manual"  # method.assignment (+ method.default for the layers it does not name)
    auto = "auto"      # sensitivity analysis + solver under method.budget


class MixedObjective(str, Enum):
    size = "size"
    latency = "latency"


@dataclass
class BudgetConfig:
    """What the user accepts: null = no limit on that quantity."""

    max_accuracy_drop: Optional[float] = None  # points (0-100) vs the fp32 model
    max_size_mb: Optional[float] = None
    max_latency_ms: Optional[float] = None

    def validate(self, prefix: str) -> None:
        for key in ("max_accuracy_drop", "max_size_mb", "max_latency_ms"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise ConfigError(f"{prefix}.{key} must be >= 0 or null, got {value}")


MIXED_DTYPES = (DType.fp32, DType.fp16, DType.bf16, DType.int8, DType.int4)


@dataclass
class MixedPrecisionConfig(MethodConfig):
    """Per-layer precision (quantexp/methods/mixed_precision.py)."""

    name: str = "mixed"
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
    hessian_samples: int = 64
    hessian_tol: Optional[float] = 0.1
    hessian_items: int = 256        # calibration items in the loss whose Hessian is estimated
    # calibration items the one-layer-at-a-time evaluation uses (null: all of them);
    # a transformer has ~36 Linear layers x 4 dtypes = 144 rebuilt models to evaluate.
    sensitivity_items: Optional[int] = None
    precisions: ClassVar[frozenset[str]] = frozenset({"mixed"})
    hardware: ClassVar[frozenset[str]] = frozenset({"cpu"})

    def validate(self) -> None:
        super().validate()
        self.budget.validate("method.budget")
        for dtype in [*self.assignment.values(), self.default, *self.choices]:
            if dtype not in MIXED_DTYPES:
                raise ConfigError(f"method=mixed cannot assign {dtype.value}; valid dtypes: "
                                  f"{', '.join(d.value for d in MIXED_DTYPES)}")
        if self.hessian_samples < 0:
            raise ConfigError(f"method.hessian_samples must be >= 0, got {self.hessian_samples}")
        if self.hessian_tol is not None and self.hessian_tol <= 0:
            raise ConfigError(f"method.hessian_tol must be > 0 or null, got {self.hessian_tol}")
        if self.hessian_items < 1:
            raise ConfigError(f"method.hessian_items must be >= 1, got {self.hessian_items}")
        if self.sensitivity_items is not None and self.sensitivity_items < 1:
            raise ConfigError(f"method.sensitivity_items must be >= 1 or null, got {self.sensitivity_items}")
        if self.strategy == MixedStrategy.auto and all(v is None for v in vars(self.budget).values()):
            raise ConfigError("method.strategy=auto needs a budget: set at least one of "
                              "method.budget.max_accuracy_drop, max_size_mb, max_latency_ms")


# ---------------------------------------------------- ONNX Runtime methods
class GraphOptimization(str, Enum):
    """ONNX Runtime graph optimization levels (``SessionOptions.graph_optimization_level``)."""

    disabled = "disabled"
    basic = "basic"        # constant folding, redundant nodes: hardware independent
    extended = "extended"  # + fusions (GELU, LayerNorm, QDQ groups -> int8 kernels)
    all = "all"            # + layout transforms (NCHWc): hardware specific


class OrtQuantFormat(str, Enum):
    qdq = "qdq"              # QuantizeLinear/DequantizeLinear pairs; ORT fuses them into int8 kernels
    qoperator = "qoperator"  # quantized operators (QLinearConv, QLinearMatMul, ...) in the file


class IntType(str, Enum):
    s8 = "s8"
    u8 = "u8"


class CalibrateMethod(str, Enum):
    minmax = "minmax"
    entropy = "entropy"        # KL-divergence threshold search on histograms
    percentile = "percentile"  # clip at method.percentile of |x|


# Op types ONNX Runtime's quantizers handle (onnxruntime.quantization.registry, 1.32);
# tests/unit/test_ort_methods.py checks them against the installed onnxruntime.
ORT_QOPERATOR_OP_TYPES = frozenset({
    "Add", "ArgMax", "AveragePool", "Clip", "Concat", "Conv", "EmbedLayerNormalization", "Flatten",
    "Gather", "Gemm", "GlobalAveragePool", "LeakyRelu", "MatMul", "MaxPool", "Mul", "Pad", "Relu",
    "Reshape", "Resize", "Sigmoid", "Softmax", "Split", "Squeeze", "Transpose", "Unsqueeze", "Where"})
ORT_QDQ_OP_TYPES = ORT_QOPERATOR_OP_TYPES | {
    "BatchNormalization", "ConvTranspose", "CumSum", "GatherElements", "InstanceNormalization",
    "LayerNormalization", "Slice", "TopK"}
ORT_DYNAMIC_OP_TYPES = frozenset({"Attention", "Conv", "EmbedLayerNormalization", "Gather", "LSTM",
                                  "MatMul", "Transpose"})


@dataclass
class OrtQuantConfig(MethodConfig):
    """Shared by ort_dynamic / ort_static: ONNX Runtime quantizes the exported fp32
    ONNX file (quantexp/methods/ort_common.py). Needs exporter=onnx."""

    name: str = MISSING
    # Per output channel weight scales: no measurable cost in ORT's CPU kernels here,
    # better fp32 agreement (MiniLM, 500 test items: dynamic 97% vs 87%, static 90% vs 86%).
    per_channel: bool = True
    weight_type: IntType = IntType.s8
    # Weights on 7 bits; null: true on x86 CPUs without VNNI (see ort_common.default_reduce_range).
    reduce_range: Optional[bool] = None
    # ONNX op types to quantize; null: the model family's default (ort_common.DEFAULT_OP_TYPES).
    op_types: Optional[list[str]] = None
    # ORT optimization of the fp32 graph before quantizing (quant pre-processing);
    # the session that runs the result uses exporter.graph_optimization.
    graph_optimization: GraphOptimization = GraphOptimization.basic
    # Items compared per quantized node output vs fp32 (tables/layer_error.csv); 0: skip.
    layer_error_items: int = 32
    precisions: ClassVar[frozenset[str]] = frozenset({"int8"})
    # The installed onnxruntime is the CPU build (no CUDAExecutionProvider).
    hardware: ClassVar[frozenset[str]] = frozenset({"cpu"})
    exporters: ClassVar[frozenset[str]] = frozenset({"onnx"})
    valid_op_types: ClassVar[frozenset[str]] = ORT_DYNAMIC_OP_TYPES

    def validate(self) -> None:
        super().validate()
        if self.layer_error_items < 0:
            raise ConfigError(f"method.layer_error_items must be >= 0, got {self.layer_error_items}")
        if self.graph_optimization == GraphOptimization.all:
            raise ConfigError(
                "method.graph_optimization=all writes hardware-specific layout ops (NCHWc) that the "
                "quantizer cannot read; valid method.graph_optimization values: disabled, basic, "
                "extended (the deployed session's level is exporter.graph_optimization)")
        if self.op_types is not None:
            unknown = sorted(set(self.op_types) - self.valid_op_types)
            if unknown or not self.op_types:
                raise ConfigError(
                    f"method.op_types: {', '.join(unknown) or '(empty list)'} cannot be quantized by "
                    f"method={self.name}; valid op types: {', '.join(sorted(self.valid_op_types))}")


@dataclass
class OrtDynamicConfig(OrtQuantConfig):
    """onnxruntime.quantization.quantize_dynamic: int8 weights, activations quantized
    to uint8 per batch at run time (DynamicQuantizeLinear + MatMulInteger/ConvInteger)."""

    name: str = "ort_dynamic"


@dataclass
class OrtStaticConfig(OrtQuantConfig):
    """onnxruntime.quantization.quantize_static: weights and activations int8, activation
    ranges calibrated on method.calibration (size, seed, batch_size)."""

    name: str = "ort_static"
    quant_format: OrtQuantFormat = OrtQuantFormat.qdq
    activation_type: IntType = IntType.u8
    # minmax: ORT's default and the cheapest. With MatMul outputs quantized (before
    # float_output_op_types), entropy was better on MiniLM (2,000 test items: -1.5 vs
    # -2.3 points, percentile -2.5); with them float, minmax matches entropy (500 items:
    # 94.4% vs 93.8% agreement) at a third of the calibration time.
    calibrate_method: CalibrateMethod = CalibrateMethod.minmax
    # Percentile of |x| kept by calibrate_method=percentile; null: ORT's 99.999.
    percentile: Optional[float] = None
    # Quantize only MatMuls whose second input is a weight (not activation x activation,
    # e.g. attention scores); ORT's dynamic quantizer always does this.
    matmul_const_b_only: bool = True
    # Op types whose outputs stay float (no QuantizeLinear after them: ORT runs them as
    # int8 x int8 -> float); null: the family's default (ort_common.DEFAULT_FLOAT_OUTPUTS).
    float_output_op_types: Optional[list[str]] = None
    valid_op_types: ClassVar[frozenset[str]] = ORT_QDQ_OP_TYPES

    def validate(self) -> None:
        super().validate()
        if self.quant_format == OrtQuantFormat.qoperator and self.op_types is not None:
            unknown = sorted(set(self.op_types) - ORT_QOPERATOR_OP_TYPES)
            if unknown:
                raise ConfigError(
                    f"method.op_types: {', '.join(unknown)} have no quantized operator for "
                    f"method.quant_format=qoperator; use quant_format=qdq or op types from: "
                    f"{', '.join(sorted(ORT_QOPERATOR_OP_TYPES))}")
        unknown = sorted(set(self.float_output_op_types or ()) - ORT_QDQ_OP_TYPES)
        if unknown:
            raise ConfigError(f"method.float_output_op_types: {', '.join(unknown)} are not op types "
                              f"ORT quantizes; valid op types: {', '.join(sorted(ORT_QDQ_OP_TYPES))}")
        if self.activation_type == IntType.s8 and self.weight_type == IntType.u8:
            raise ConfigError("method.activation_type=s8 with method.weight_type=u8 is not supported "
                              "by ONNX Runtime quantization; valid activation/weight pairs: u8/s8, "
                              "u8/u8, s8/s8")
        if self.percentile is not None:
            if self.calibrate_method != CalibrateMethod.percentile:
                raise ConfigError(f"method.percentile only applies to calibrate_method=percentile, "
                                  f"not {self.calibrate_method.value}")
            if not 50.0 < self.percentile <= 100.0:
                raise ConfigError(f"method.percentile must be in (50, 100], got {self.percentile}")


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
    # Compute dtype of the PyTorch runtime on the device (mps: fp16 | bf16); null: the
    # model's own dtype.
    dtype: Optional[DType] = None

    def validate(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"hardware.threads must be >= 1 or null, got {self.threads}")
        if self.dtype is not None and (self.device != "mps" or self.dtype not in MPS_DTYPES):
            raise ConfigError(f"hardware.dtype={self.dtype.value} is not supported on "
                              f"hardware={self.name}; valid: null, or fp16|bf16 on hardware=mps")


MPS_DTYPES = (DType.fp16, DType.bf16)


# ------------------------------------------------------------------ exporter
@dataclass
class ExporterConfig:
    name: str = MISSING

    def validate(self) -> None:
        pass

    def check(self, exp: "ExperimentConfig") -> None:
        """Cross-group rules of this exporter (run by check_compatibility, before any
        model loads); may resolve ``auto`` fields from the other groups."""


class ComputePrecision(str, Enum):
    fp16 = "fp16"
    fp32 = "fp32"


class WeightCompression(str, Enum):
    """coremltools.optimize.coreml weight compression of a float model (method=fp32)."""

    none = "none"
    int8 = "int8"              # linear_quantize_weights, int8 per output channel, symmetric
    palettize4 = "palettize4"  # palettize_weights, 4-bit k-means look-up table per tensor
    int4_block = "int4_block"  # linear_quantize_weights, int4 per block (iOS18 / macOS15)


class ComputeUnits(str, Enum):
    all = "all"
    cpu_only = "cpu_only"
    cpu_and_gpu = "cpu_and_gpu"
    cpu_and_ne = "cpu_and_ne"


class DeploymentTarget(str, Enum):
    iOS16 = "iOS16"
    iOS17 = "iOS17"
    iOS18 = "iOS18"
    macOS13 = "macOS13"
    macOS14 = "macOS14"
    macOS15 = "macOS15"


class ConvertFrom(str, Enum):
    torch_export = "torch_export"  # falls back to jit_trace where torch.export fails
    jit_trace = "jit_trace"


# Core ML compute units a hardware target implies when exporter.compute_units is null.
COREML_HARDWARE_UNITS: dict[str, str] = {"cpu": "cpu_only", "mps": "cpu_and_gpu",
                                         "ane": "cpu_and_ne"}
# Targets whose ML Program opset has block-wise int4 (constexpr_blockwise_shift_scale).
COREML_BLOCKWISE_TARGETS = frozenset({DeploymentTarget.iOS18, DeploymentTarget.macOS15})


@dataclass
class CoreMLExporterConfig(ExporterConfig):
    """coremltools ML Program (.mlpackage); prediction needs macOS (see exporters/coreml.py)."""

    name: str = "coreml"
    compute_precision: ComputePrecision = ComputePrecision.fp16
    # Applies to float models (method=fp32); quantizing methods bring their own int8 weights.
    weight_compression: WeightCompression = WeightCompression.none
    # Weights with fewer elements stay uncompressed (coremltools' default, 2048).
    weight_threshold: int = 2048
    block_size: int = 32  # int4_block only
    # Load-time option (not stored in the package); null: from hardware (cpu -> cpu_only,
    # mps -> cpu_and_gpu, ane -> cpu_and_ne).
    compute_units: Optional[ComputeUnits] = None
    deployment_target: DeploymentTarget = DeploymentTarget.iOS17
    convert_from: ConvertFrom = ConvertFrom.torch_export
    # Static input batch of the package (the ANE wants static shapes). flexible_batch:
    # a RangeDim batch 1..max_batch instead (dynamic shapes keep a model off the ANE).
    batch_size: int = 1
    flexible_batch: bool = False
    max_batch: int = 1024

    def validate(self) -> None:
        _positive(self, "batch_size", "block_size", "max_batch", prefix="exporter")
        if self.weight_threshold < 0:
            raise ConfigError(f"exporter.weight_threshold must be >= 0, got {self.weight_threshold}")
        if (self.weight_compression == WeightCompression.int4_block
                and self.deployment_target not in COREML_BLOCKWISE_TARGETS):
            raise ConfigError(
                f"exporter.weight_compression=int4_block needs block-wise int4 ops, which "
                f"deployment_target={self.deployment_target.value} lacks; valid deployment_target "
                f"values for int4_block: {', '.join(sorted(t.value for t in COREML_BLOCKWISE_TARGETS))}")

    def check(self, exp: "ExperimentConfig") -> None:
        if self.weight_compression != WeightCompression.none and exp.method.name != "fp32":
            raise ConfigError(
                f"exporter.weight_compression={self.weight_compression.value} compresses a float "
                f"model; method={exp.method.name} brings its own quantized weights (exported as "
                "they are); valid: exporter.weight_compression=none, or method=fp32")
        if exp.hardware.name == "ane":
            if self.compute_precision != ComputePrecision.fp16:
                raise ConfigError("hardware=ane cannot run exporter.compute_precision=fp32 (the "
                                  "Neural Engine computes in fp16); valid compute_precision for "
                                  "ane: fp16")
            if self.compute_units in (ComputeUnits.cpu_only, ComputeUnits.cpu_and_gpu):
                raise ConfigError(f"hardware=ane cannot run exporter.compute_units="
                                  f"{self.compute_units.value}; valid compute_units for ane: "
                                  "cpu_and_ne, all (or null)")


class TFLiteQuantization(str, Enum):
    """How exporter=tflite quantizes, with the TFLite toolchain (ai-edge-quantizer on
    the converted fp32 graph: torch.ao int8 modules do not convert)."""

    auto = "auto"                  # follow the method (TFLITE_METHOD_QUANTIZATION)
    none = "none"                  # fp32 graph
    dynamic_int8 = "dynamic_int8"  # int8 weights, activations quantized at run time
    full_int8 = "full_int8"        # int8 weights + activations (calibrated), int8 I/O


# The one mapping from method to TFLite quantization; auto resolves through it and an
# explicit exporter.quantization must agree with it (the row keeps the method's name).
TFLITE_METHOD_QUANTIZATION: dict[str, TFLiteQuantization] = {
    "fp32": TFLiteQuantization.none,
    "ptq_dynamic": TFLiteQuantization.dynamic_int8,
    "ptq_static": TFLiteQuantization.full_int8,
}


@dataclass
class TFLiteExporterConfig(ExporterConfig):
    """litert-torch conversion + LiteRT interpreter (``ai_edge_litert``)."""

    name: str = "tflite"
    quantization: TFLiteQuantization = TFLiteQuantization.auto
    # Weight granularity of the int8 schemes; null: precision.granularity.
    granularity: Optional[Granularity] = None
    # The graph's static batch (conf: ${bench.batch_size}, so timing is one invoke).
    batch_size: int = 16
    # Held-out test items compared with the in-memory fp32 PyTorch model (parity.*).
    parity_items: int = 64
    # An fp32 artifact whose max |logit error| exceeds this x max(1, max |logit|) is
    # refused as a broken conversion.
    fp32_tolerance: float = 1e-3

    def validate(self) -> None:
        _positive(self, "batch_size", "parity_items", prefix="exporter")
        if not self.fp32_tolerance > 0:
            raise ConfigError(f"exporter.fp32_tolerance must be > 0, got {self.fp32_tolerance}")

    def check(self, exp: "ExperimentConfig") -> None:
        method = exp.method.name
        expected = TFLITE_METHOD_QUANTIZATION.get(method)
        if expected is None:
            raise ConfigError(f"exporter=tflite has no TFLite quantization for method={method}; "
                              f"valid methods: {', '.join(sorted(TFLITE_METHOD_QUANTIZATION))}")
        if self.quantization == TFLiteQuantization.auto:
            self.quantization = expected
        elif self.quantization != expected:
            raise ConfigError(
                f"exporter.quantization={self.quantization.value} does not match method={method} "
                f"(deployed as {expected.value}); use exporter.quantization=auto or method="
                + "|".join(m for m, q in TFLITE_METHOD_QUANTIZATION.items() if q == self.quantization))
        if expected != TFLiteQuantization.none and exp.precision.name != "int8":
            raise ConfigError(f"exporter=tflite deploys method={method} as {expected.value}; "
                              f"precision={exp.precision.name} is not supported; valid precision: int8")
        if self.granularity is None:
            self.granularity = exp.precision.granularity


@dataclass
class OnnxExporterConfig(ExporterConfig):
    """torch.onnx.export (TorchScript-based) + an ONNX Runtime session (exporters/onnx.py)."""

    name: str = "onnx"
    # 13+: per-channel QuantizeLinear/DequantizeLinear (axis); 20: the TorchScript exporter's max.
    opset: int = 17
    # Level of the ORT session that evaluates and times every ONNX artifact of the run.
    graph_optimization: GraphOptimization = GraphOptimization.all
    # Held-out test items compared with the in-memory PyTorch model (parity.*); 0: skip.
    parity_items: int = 64
    # A float model's ONNX export whose max |logit error| exceeds this x max(1, max |logit|)
    # is refused as a broken conversion (int8 models are compared, not gated).
    fp32_tolerance: float = 1e-3

    def validate(self) -> None:
        if not 13 <= self.opset <= 20:
            raise ConfigError(f"exporter.opset must be in [13, 20] (13: per-channel QDQ, 20: the "
                              f"TorchScript exporter's newest), got {self.opset}")
        if self.parity_items < 0:
            raise ConfigError(f"exporter.parity_items must be >= 0, got {self.parity_items}")
        if not self.fp32_tolerance > 0:
            raise ConfigError(f"exporter.fp32_tolerance must be > 0, got {self.fp32_tolerance}")


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


# Objective names run.py can return: accuracy (0-1), accuracy_drop (points vs fp32),
# latency_ms (p50 of the deployed artifact), size_mb (artifact on disk).
OBJECTIVES = ("accuracy", "accuracy_drop", "latency_ms", "size_mb")


@dataclass
class SearchConfig:
    """Settings of a precision search (conf/search/*.yaml) read by the search space
    and the end-of-sweep report (quantexp/search)."""

    # Total trials the study should end with: a rerun of an interrupted search runs
    # only the ones still missing (hydra.sweeper.n_trials resolves to the rest).
    n_trials: int = 20
    # The budget the Pareto front is checked against at the end of the sweep.
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    # Layer dtypes the search space may offer (each layer only gets those it supports).
    choices: list[DType] = field(default_factory=lambda: list(MIXED_DTYPES))
    # Optional sensitivity.csv (method=mixed method.sensitivity=true): with
    # budget.max_accuracy_drop, (layer, dtype) pairs that alone exceed it are pruned.
    sensitivity_table: Optional[str] = None


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
    # What run.py returns to a sweeper: one name -> a float, several -> a tuple
    # (multi-objective Optuna). Names: see OBJECTIVES.
    objectives: list[str] = field(default_factory=lambda: ["accuracy"])
    search: SearchConfig = field(default_factory=SearchConfig)

    def validate(self) -> None:
        for part in (self.model, self.method, self.precision, self.hardware, self.exporter,
                     self.bench, self.eval):
            part.validate()
        unknown = [o for o in self.objectives if o not in OBJECTIVES]
        if unknown or not self.objectives:
            raise ConfigError(f"unknown objective(s) {', '.join(unknown) or '(none given)'}; "
                              f"valid objectives: {', '.join(OBJECTIVES)}")
        self.search.budget.validate("search.budget")
        check_compatibility(self)


SCHEMAS: dict[str, dict[str, type]] = {
    "model": {"cnn": CNNConfig, "rnn": RNNConfig, "transformer": TransformerConfig},
    "method": {"fp32": Fp32Config, "ptq_static": PTQStaticConfig, "ptq_dynamic": PTQDynamicConfig,
               "bnb_int8": BnbInt8Config, "bnb_nf4": BnbNF4Config,
               "qat": QATConfig, "qat_finetune": QATFinetuneConfig,
               "mixed": MixedPrecisionConfig,
               "ort_dynamic": OrtDynamicConfig, "ort_static": OrtStaticConfig},
    "precision": {"precision": PrecisionConfig},
    "hardware": {"hardware": HardwareConfig},
    "exporter": {"exporter": ExporterConfig, "tflite": TFLiteExporterConfig,
                 "coreml": CoreMLExporterConfig, "onnx": OnnxExporterConfig},
}


def register_configs() -> None:
    """Put every schema in Hydra's ConfigStore (idempotent)."""
    from quantexp.search import register_resolvers  # light: no optuna until resolved

    register_resolvers()
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
    "cpu": frozenset({"none", "tflite", "coreml", "onnx"}),  # coreml: Core ML with CPU_ONLY compute units
    # onnx on cuda: ORT's CUDAExecutionProvider (onnxruntime-gpu), checked when the exporter starts
    "cuda": frozenset({"none", "onnx"}),
    "mps": frozenset({"none", "coreml"}),
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
    if hasattr(cfg.exporter, "check"):
        cfg.exporter.check(cfg)
    if hasattr(cfg.method, "check"):
        cfg.method.check(cfg)


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
