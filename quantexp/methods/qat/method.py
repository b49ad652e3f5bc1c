"""Quantization-aware training (Jacob et al., 2018): the network is trained with
fake quantization of weights and activations in the forward pass and the
straight-through estimator in the backward pass, then converted to a really
quantized (int8-kernel) model, which is what the pipeline exports, evaluates
and times.

``qat`` trains from a fresh initialisation of the model's architecture by
default (``init: scratch``; ``init: fp32`` starts from the cached fp32 weights);
``qat_finetune`` (qat_finetune.py) adds the fine-tuning tools on top of the
same machinery. Machinery: FX graph-mode QAT, see fake_quant.py.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from quantexp.config import ConfigError
from quantexp.methods.base import (
    QuantizationMethod,
    QuantizedModel,
    count_modules,
)
from quantexp.methods.qat.fake_quant import (
    QuantSchedule,
    build_qat_qconfig,
    check_precision,
    convert,
    fake_vs_converted,
    logits_of,
    prepare_qat,
    quant_units,
    weight_stats,
)
from quantexp.methods.qat.train import TrainSettings, split_validation, train_qat
from quantexp.quant.int_grid import weight_value_bits
from quantexp.quant.qconfig import KEPT_FLOAT, count_quantized


def reinitialise(model: nn.Module, seed: int) -> nn.Module:
    """Same architecture, fresh weights (every module's own ``reset_parameters``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return model


class QATBase(QuantizationMethod):
    """Shared pipeline of qat and qat_finetune; subclasses choose the start point,
    the schedule and the teacher."""

    needs_calibration = False
    #: The pipeline attaches its MLflow RunLogger here (None when tracking is off).
    log = None

    def check_model(self, bundle) -> None:
        trainable = sum(p.numel() for p in bundle.model.parameters() if p.requires_grad)
        if trainable == 0:
            raise ConfigError(f"method={self.cfg.name} needs a trainable model; {bundle.name} has no "
                              "trainable parameters (a frozen pretrained model): use ptq_static or ptq_dynamic")
        check_precision(self.precision, self._bit_schedule())

    # hooks ----------------------------------------------------------------
    def _bit_schedule(self) -> list[int]:
        return []

    def start_model(self, bundle, seed: int) -> tuple[nn.Module, str]:
        raise NotImplementedError

    def make_schedule(self, units, weight_bits: int) -> QuantSchedule:
        c = self.cfg
        return QuantSchedule(units, weight_bits=weight_bits, freeze_observers_after=c.freeze_observers_after,
                             freeze_bn_after=c.freeze_bn_after)

    def settings(self, seed: int) -> TrainSettings:
        c = self.cfg
        return TrainSettings(epochs=c.epochs, batch_size=c.batch_size, lr=c.lr, lr_schedule=c.lr_schedule.value,
                             patience=c.patience, seed=seed, log_every=c.log_every)

    def teacher(self, bundle) -> nn.Module | None:
        return None

    # the method -----------------------------------------------------------
    def quantize(self, bundle, calibration) -> QuantizedModel:
        c = self.cfg
        weight_bits, activation_bits = check_precision(self.precision, self._bit_schedule())
        # null seed: drawn from torch's RNG, which the pipeline seeds with the experiment seed.
        seed = c.seed if c.seed is not None else int(torch.randint(0, 2**31 - 1, (1,)))
        train, val = split_validation(bundle.train, c.val_fraction, seed)
        if c.max_train_items is not None and c.max_train_items < len(train):
            train = train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
                                 [:c.max_train_items])
        model, start = self.start_model(bundle, seed)
        # reduce_range (7-bit activations) guards x86 int8 kernels without VNNI from
        # saturating 16-bit pair sums (255*127*2 > 32767). With <= 7-bit weights no pair
        # sum can saturate (255*64*2 < 32767), so the full 8-bit activation range is used:
        # it also makes fake quantization clamp exactly where the quint8 kernels clamp.
        reduce_range = not self.host.cpu.has_vnni and weight_bits == 8
        qconfig = build_qat_qconfig(weight_bits, activation_bits, self.precision.granularity, reduce_range)
        prepared = prepare_qat(model, qconfig, bundle.example_inputs(2))
        units = quant_units(prepared)
        if not units:
            raise ConfigError(f"method={c.name}: {bundle.name} has no layer QAT can quantize")
        schedule = self.make_schedule(units, weight_bits)
        result = train_qat(prepared, units, schedule, train, val, self.settings(seed),
                           teacher=self.teacher(bundle), run_log=self.log, desc=c.name)
        schedule.finish(prepared)
        prepared.apply(torch.ao.quantization.disable_observer)
        fake_val_acc = float((logits_of(prepared, val.inputs).argmax(1) == val.labels).float().mean())
        converted, clamped = convert(prepared, weight_bits)
        converted_val_acc = float((logits_of(converted, val.inputs).argmax(1) == val.labels).float().mean())
        agreement = fake_vs_converted(prepared, converted, val.inputs)
        final_stats = weight_stats(units)
        # Scale drift: final scale vs the first one recorded at the final bit width
        # (a bit schedule changes the grid, which is not drift).
        first: dict[str, dict] = {}
        for r in result["ranges"]:
            if r["bits"] == weight_bits:
                first.setdefault(r["layer"], r)
        drift = [abs(r["scale_mean"] / first[r["layer"]]["scale_mean"] - 1.0) for r in final_stats
                 if r["layer"] in first and first[r["layer"]]["scale_mean"] > 0]
        info: dict[str, Any] = {
            "path": "fx_qat",
            "start": start,
            "weight_bits": weight_bits,
            "activation_bits": activation_bits,
            "granularity": self.precision.granularity.value,
            "reduce_range": reduce_range,
            "deployed_kernels": "fbgemm/onednn int8 (torch.ao quantized modules)",
            "weight_storage": ("int8" if weight_bits == 8 else
                               f"int8 container holding {weight_bits}-bit values "
                               f"[{-(2 ** (weight_bits - 1))}, {2 ** (weight_bits - 1) - 1}]: "
                               "torch.ao has no CPU int4 kernels"),
            "weight_value_bits": weight_value_bits(converted),
            "weights_clamped_at_convert": clamped,
            "quantized_layers": count_quantized(converted),
            "float_layers_left": count_modules(converted, KEPT_FLOAT),
            "bn_fused_layers": sum(hasattr(u.module, "bn") for u in units),
            "train_items": len(train),
            "val_items": len(val),
            "epochs_run": len(result["history"]),
            "steps": result["steps"],
            "best_epoch": result["best_epoch"],
            "stopped_early": result["stopped_early"],
            "val_accuracy_fake_quant": fake_val_acc,
            "val_accuracy_converted": converted_val_acc,
            **agreement,
            "scale_drift_mean": sum(drift) / len(drift) if drift else 0.0,
            "clip_fraction_mean": sum(r["clip_fraction"] for r in final_stats) / len(final_stats),
            "tables": {"qat_history": result["history"],
                       "qat_weight_ranges": result["ranges"]
                       + [{"epoch": "final", **r} for r in final_stats]},
        }
        return QuantizedModel(converted, info)


class QAT(QATBase):
    def start_model(self, bundle, seed):
        model = copy.deepcopy(bundle.model)
        if self.cfg.init.value == "scratch":
            return reinitialise(model, seed), "scratch"
        return model, "fp32"
