"""Building blocks shared by ``qat`` and ``qat_finetune``: fake-quantizer
configuration, the Quant-Noise fake quantizer, the quantization schedule,
QAT losses and the QAT diagnostics (scales, clipping, fake-quant vs converted).

The maintained path used here is PyTorch's FX graph-mode QAT
(``prepare_qat_fx`` -> train -> ``convert_fx``): it fuses Conv+BN(+ReLU) into
QAT modules that simulate batch-norm folding, puts ``FakeQuantize`` modules
(straight-through estimator in the backward pass) on weights and activations,
and converts to fbgemm/oneDNN int8 kernels on CPU - the same kernels
``ptq_static`` produces, so PTQ and QAT models are timed on the same runtime.
(torchao's QAT targets Linear layers with torchao tensor subclasses and has no
int8 CPU conv kernels; see ptq_static.py for why pt2e is not used on CPU.)

4-bit weights: torch.ao has no CPU int4 conv/linear kernels. Weights are
fake-quantized to the signed 4-bit grid [-8, 7] and converted into int8
kernels whose weight values lie in [-8, 7]: the deployed model computes
exactly with 4-bit weight values, stored in an int8 container (8 bits/param on
disk). ``info`` says so.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.ao.quantization import FakeQuantize
from torch.nn import functional as F

from quantexp.config import ConfigError, Granularity, PrecisionConfig
from quantexp.methods.qat.config import qat_bits
from quantexp.quant.fx_tracing import fx_graph_mode
from quantexp.quant.int_grid import clamp_quantized_weights, signed_range


class QATDiverged(RuntimeError):
    """Training produced a non-finite loss; the run stops (and is marked FAILED)."""


# ------------------------------------------------------------ bit widths
def activation_range(bits: int, reduce_range: bool) -> tuple[int, int]:
    """Unsigned activation range; ``reduce_range`` drops one bit (x86 without VNNI)."""
    top = 2 ** (bits - 1 if reduce_range else bits) - 1
    return 0, top


def check_precision(precision: PrecisionConfig, bit_schedule: Iterable[int] = ()) -> tuple[int, int]:
    """(weight_bits, activation_bits) for a QAT precision, or a one-line ConfigError."""
    return qat_bits(precision, list(bit_schedule))


# ------------------------------------------------------- fake quantizers
class QuantNoiseFakeQuantize(FakeQuantize):
    """``FakeQuantize`` with Quant-Noise (Fan et al., 2020, "Training with
    Quantization Noise for Extreme Model Compression"): in training mode only a
    random subset of the weights, each element with probability ``noise_rate``,
    is replaced by its fake-quantized value; the others stay full precision, so
    their gradient is exact. ``noise_rate=1`` is plain QAT (every weight
    quantized, straight-through gradient). In eval mode - and in the converted
    model - every weight is quantized, as in the paper."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.noise_rate = 1.0
        self.last_mask_fraction = float("nan")

    def forward(self, X):
        out = super().forward(X)
        if self.training and self.noise_rate < 1.0 and self.fake_quant_enabled[0] == 1:
            mask = torch.rand_like(X) < self.noise_rate
            self.last_mask_fraction = float(mask.float().mean())
            out = torch.where(mask, out, X)
        return out


class KernelClampFakeQuantize(FakeQuantize):
    """Activation ``FakeQuantize`` whose scale is computed for the observer's range
    (7 bits with ``reduce_range``) but which clamps where the deployed quint8
    tensor clamps (0..255). PyTorch's stock FakeQuantize clamps at 127 under
    reduce_range while the converted int8 model keeps values up to 255, so the
    fake-quant and converted models disagree on every activation the lagging
    moving-average range has not caught up with; this one computes what the
    kernels compute."""

    def forward(self, X):
        if self.observer_enabled[0] == 1:
            self.activation_post_process(X.detach())
            scale, zero_point = self.calculate_qparams()
            if self.scale.shape != scale.shape:
                self.scale.resize_(scale.shape)
                self.zero_point.resize_(zero_point.shape)
            self.scale.copy_(scale.to(self.scale.device))
            self.zero_point.copy_(zero_point.to(self.zero_point.device))
        if self.fake_quant_enabled[0] == 1:
            info = torch.iinfo(self.dtype)
            X = torch.fake_quantize_per_tensor_affine(X, self.scale, self.zero_point, info.min, info.max)
        return X


def build_qat_qconfig(weight_bits: int, activation_bits: int, granularity: Granularity,
                      reduce_range: bool):
    """QConfig for FX QAT: symmetric signed weights on the ``weight_bits`` grid,
    affine unsigned activations on the ``activation_bits`` grid.

    Weight ranges follow the current weights (``averaging_constant=1``: the
    moving average of PyTorch's default weight fake-quant, 0.01, lags ~100 steps
    behind weights that grow while training and clips them - 9% of 8-bit
    weights in a 66-step run from scratch). Activation ranges are PyTorch's
    moving average (0.01) over batches."""
    from torch.ao.quantization import QConfig
    from torch.ao.quantization.observer import (
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
    )

    a_min, a_max = activation_range(activation_bits, reduce_range)
    w_min, w_max = signed_range(weight_bits)
    activation = KernelClampFakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=a_min,
                                                   quant_max=a_max, dtype=torch.quint8,
                                                   qscheme=torch.per_tensor_affine)
    if Granularity(granularity) == Granularity.per_channel:
        weight = QuantNoiseFakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver,
                                                  quant_min=w_min, quant_max=w_max, dtype=torch.qint8,
                                                  qscheme=torch.per_channel_symmetric, ch_axis=0,
                                                  averaging_constant=1.0)
    else:
        weight = QuantNoiseFakeQuantize.with_args(observer=MovingAverageMinMaxObserver,
                                                  quant_min=w_min, quant_max=w_max, dtype=torch.qint8,
                                                  qscheme=torch.per_tensor_symmetric, averaging_constant=1.0)
    return QConfig(activation=activation, weight=weight)


def prepare_qat(model: nn.Module, qconfig, example_inputs: tuple[torch.Tensor, ...]) -> torch.fx.GraphModule:
    """FX QAT preparation (fuses Conv+BN+ReLU; BN folding is simulated while training)."""
    from torch.ao.quantization import get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    mapping = get_default_qat_qconfig_mapping(torch.backends.quantized.engine).set_global(qconfig)
    with fx_graph_mode():
        return prepare_qat_fx(model.train(), mapping, example_inputs=example_inputs)


def convert(prepared: nn.Module, weight_bits: int) -> tuple[nn.Module, int]:
    """The really quantized model (int8 kernels) from a trained QAT model, with
    weight integers clamped to the ``weight_bits`` grid exactly as fake
    quantization clamped them; also returns how many integers needed the clamp.
    The prepared model is left untouched."""
    from torch.ao.quantization.quantize_fx import convert_fx

    with fx_graph_mode():
        converted = convert_fx(copy.deepcopy(prepared).eval())
    return converted, clamp_quantized_weights(converted, weight_bits)


# ----------------------------------------------------------- the layers
@dataclass
class QuantUnit:
    """One weighted layer of the prepared graph, with its weight fake quantizer
    and the activation fake quantizers that follow it (the first unit also owns
    the input quantizer)."""

    name: str
    module: nn.Module
    weight_fq: FakeQuantize
    activation_fqs: list[FakeQuantize]


def quant_units(prepared: torch.fx.GraphModule) -> list[QuantUnit]:
    """Weighted layers in graph (input -> output) order."""
    units: list[QuantUnit] = []
    pending: list[FakeQuantize] = []
    for node in prepared.graph.nodes:
        if node.op != "call_module":
            continue
        module = prepared.get_submodule(node.target)  # a quantizer may be shared by two nodes
        if isinstance(getattr(module, "weight_fake_quant", None), FakeQuantize):
            units.append(QuantUnit(node.target, module, module.weight_fake_quant, pending))
            pending = []
        elif isinstance(module, FakeQuantize):
            owner = units[-1].activation_fqs if units else pending
            if not any(module is fq for unit in units for fq in unit.activation_fqs) and \
                    not any(module is fq for fq in pending):
                owner.append(module)
    if units and pending:
        units[-1].activation_fqs.extend(pending)
    return units


def all_fake_quants(prepared: nn.Module) -> list[FakeQuantize]:
    return [m for m in prepared.modules() if isinstance(m, FakeQuantize)]


def set_weight_bits(units: list[QuantUnit], bits: int) -> None:
    """Move every weight quantizer to the signed ``bits``-bit grid and refresh
    its scale from what its observer has seen (also when observers are frozen)."""
    lo, hi = signed_range(bits)
    for unit in units:
        fq = unit.weight_fq
        fq.activation_post_process.quant_min, fq.activation_post_process.quant_max = lo, hi
        fq.quant_min, fq.quant_max = lo, hi
        if torch.isfinite(fq.activation_post_process.min_val).all() and \
                fq.activation_post_process.min_val.numel() > 0:
            scale, zero_point = fq.calculate_qparams()
            if fq.scale.shape != scale.shape:
                fq.scale.resize_(scale.shape)
                fq.zero_point.resize_(zero_point.shape)
            fq.scale.copy_(scale)
            fq.zero_point.copy_(zero_point)


# ------------------------------------------------------------- schedule
class QuantSchedule:
    """Which fake quantizers are on at a step, at which weight bit width, with
    which Quant-Noise rate, and when observers and BN statistics freeze.

    Gradual quantization: the layers are split (input -> output) into
    ``groups`` contiguous groups; group g switches on at step ``g * interval``.
    Bit width lowering: epoch e (0-based) uses ``bit_schedule[e]`` weight bits,
    epochs beyond the list the final ``weight_bits``."""

    def __init__(self, units: list[QuantUnit], *, weight_bits: int, groups: int = 1, interval: int = 0,
                 bit_schedule: Iterable[int] = (), noise_rate: float = 1.0,
                 freeze_observers_after: int | None = None, freeze_bn_after: int | None = None):
        if groups < 1 or interval < 0:
            raise ConfigError(f"gradual quantization needs groups >= 1 and interval >= 0, got {groups}, {interval}")
        if not 0.0 < noise_rate <= 1.0:
            raise ConfigError(f"method.quant_noise must be in (0, 1], got {noise_rate}")
        self.units = units
        self.weight_bits = weight_bits
        self.bit_schedule = list(bit_schedule)
        self.noise_rate = noise_rate
        self.freeze_observers_after = freeze_observers_after
        self.freeze_bn_after = freeze_bn_after
        n = min(groups, max(len(units), 1))
        self.groups: list[list[QuantUnit]] = [list(g) for g in np.array_split(np.array(units, dtype=object), n)]
        self.interval = interval
        self.observers_frozen = False
        self.bn_frozen = False
        self.current_bits: int | None = None

    # pure functions of the step/epoch (tested directly)
    def groups_on(self, step: int) -> int:
        if self.interval == 0:
            return len(self.groups)
        return min(len(self.groups), step // self.interval + 1)

    def bits_at(self, epoch: int) -> int:
        return self.bit_schedule[epoch] if epoch < len(self.bit_schedule) else self.weight_bits

    def final_from(self, step: int, epoch: int) -> bool:
        """True when the model at this step is the final quantized model (all groups
        on, final bit width), i.e. a checkpoint early stopping may keep."""
        return self.groups_on(step) == len(self.groups) and self.bits_at(epoch) == self.weight_bits

    # effects on the model
    def start_epoch(self, epoch: int) -> int:
        bits = self.bits_at(epoch)
        if bits != self.current_bits:
            set_weight_bits(self.units, bits)
            self.current_bits = bits
        return bits

    def apply_step(self, model: nn.Module, step: int) -> dict[str, float]:
        on = self.groups_on(step)
        for g, group in enumerate(self.groups):
            for unit in group:
                for fq in [unit.weight_fq, *unit.activation_fqs]:
                    (fq.enable_fake_quant if g < on else fq.disable_fake_quant)()
                if isinstance(unit.weight_fq, QuantNoiseFakeQuantize):
                    unit.weight_fq.noise_rate = self.noise_rate
        if self.freeze_observers_after is not None and step >= self.freeze_observers_after \
                and not self.observers_frozen:
            model.apply(torch.ao.quantization.disable_observer)
            self.observers_frozen = True
        if self.freeze_bn_after is not None and step >= self.freeze_bn_after and not self.bn_frozen:
            model.apply(torch.ao.nn.intrinsic.qat.freeze_bn_stats)
            self.bn_frozen = True
        return {"groups_on": on, "fraction_layers_quantized":
                sum(len(g) for g in self.groups[:on]) / max(len(self.units), 1),
                "weight_bits": self.current_bits or self.weight_bits,
                "observers_frozen": float(self.observers_frozen), "bn_frozen": float(self.bn_frozen)}

    def finish(self, model: nn.Module) -> None:
        """Everything on at the final bit width, every weight quantized."""
        self.start_epoch(len(self.bit_schedule))
        for unit in self.units:
            unit.weight_fq.enable_fake_quant()
            for fq in unit.activation_fqs:
                fq.enable_fake_quant()
            if isinstance(unit.weight_fq, QuantNoiseFakeQuantize):
                unit.weight_fq.noise_rate = 1.0
        model.apply(torch.ao.quantization.enable_fake_quant)


# ----------------------------------------------------------------- losses
def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """Knowledge distillation (Hinton et al., 2015): KL(teacher_T || student_T) * T^2,
    averaged over the batch, where x_T = softmax(logits / T)."""
    t = temperature
    log_p_student = F.log_softmax(student_logits / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / t, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * t * t


def range_regulariser(units: list[QuantUnit]) -> torch.Tensor:
    """Sum over layers of (max |W|)^2: penalises the largest weight of every layer so
    the quantization range (hence the step size) shrinks, in the spirit of range
    regularisation (R^2, Kundu et al., 2023)."""
    terms = [unit.module.weight.abs().max() ** 2 for unit in units]
    return torch.stack(terms).sum() if terms else torch.zeros(())


# ------------------------------------------------------------ diagnostics
def weight_stats(units: list[QuantUnit]) -> list[dict[str, Any]]:
    """Per layer: weight range, mean scale and the fraction of weights at the
    clipping bounds of the current grid (as fake-quantized now). For Conv+BN QAT
    modules the BN-folded weight is what gets quantized, and what is reported."""
    rows = []
    with torch.no_grad():
        for unit in units:
            fq, w = unit.weight_fq, unit.module.weight.detach()
            bn = getattr(unit.module, "bn", None)
            if isinstance(bn, nn.modules.batchnorm._BatchNorm):  # fused Conv+BN: the folded weight
                factor = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
                w = w * factor.reshape([-1] + [1] * (w.dim() - 1))
            obs = fq.activation_post_process
            lo, hi = obs.quant_min, obs.quant_max
            scale = fq.scale.detach()
            if fq.is_per_channel:
                shape = [-1] + [1] * (w.dim() - 1)
                q = torch.round(w / scale.reshape(shape)) + fq.zero_point.reshape(shape)
            else:
                q = torch.round(w / scale) + fq.zero_point
            clipped = ((q <= lo) | (q >= hi)).float().mean()
            rows.append({"layer": unit.name, "w_min": float(w.min()), "w_max": float(w.max()),
                         "scale_mean": float(scale.mean()), "bits": int(math.log2(hi - lo + 1)),
                         "clip_fraction": float(clipped)})
    return rows


@torch.no_grad()
def logits_of(model: nn.Module, inputs: tuple[torch.Tensor, ...], batch_size: int = 256) -> torch.Tensor:
    model.eval()
    n = inputs[0].shape[0]
    return torch.cat([model(*(x[i:i + batch_size] for x in inputs)) for i in range(0, n, batch_size)])


def fake_vs_converted(prepared: nn.Module, converted: nn.Module,
                      inputs: tuple[torch.Tensor, ...]) -> dict[str, float]:
    """Agreement between the fake-quant model (eval mode) and the converted int8
    model on the same inputs: top-1 agreement and the relative logit error."""
    was_training = prepared.training
    try:
        fake = logits_of(prepared, inputs)
    finally:
        prepared.train(was_training)
    real = logits_of(converted, inputs)
    rel = float((fake - real).norm() / fake.norm().clamp_min(1e-12))
    return {"fake_vs_converted_top1_agreement": float((fake.argmax(1) == real.argmax(1)).float().mean()),
            "fake_vs_converted_rel_logit_error": rel}
