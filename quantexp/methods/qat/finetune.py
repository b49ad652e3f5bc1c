"""QAT fine-tuning of the cached fp32 model, with the tools that make low-bit
fine-tuning work:

- gradual quantization: the layers (input -> output) are split into
  ``gradual_groups`` groups switched on one after another every
  ``gradual_interval`` steps, and/or the weight bit width is lowered over epochs
  (``bit_schedule``); both are logged per step / per epoch;
- Quant-Noise (Fan et al., 2020): each step only a random ``quant_noise`` share
  of the weights is quantized (``QuantNoiseFakeQuantize``);
- knowledge distillation from the fp32 model (Hinton et al., 2015), added to the
  task loss; optional range regulariser.

The machinery (FX QAT, conversion, diagnostics) is the one ``qat`` uses.
"""

from __future__ import annotations

import copy

from quantexp.methods.qat.fake_quant import QuantSchedule
from quantexp.methods.qat.method import QATBase
from quantexp.methods.qat.train import TrainSettings


class QATFinetune(QATBase):
    def _bit_schedule(self) -> list[int]:
        return list(self.cfg.bit_schedule)

    def start_model(self, bundle, seed):
        return copy.deepcopy(bundle.model), "fp32"

    def make_schedule(self, units, weight_bits: int) -> QuantSchedule:
        c = self.cfg
        return QuantSchedule(units, weight_bits=weight_bits, groups=c.gradual_groups,
                             interval=c.gradual_interval, bit_schedule=c.bit_schedule,
                             noise_rate=c.quant_noise, freeze_observers_after=c.freeze_observers_after,
                             freeze_bn_after=c.freeze_bn_after)

    def settings(self, seed: int) -> TrainSettings:
        base = super().settings(seed)
        c = self.cfg
        base.distill_weight = c.distill_weight
        base.distill_temperature = c.distill_temperature
        base.range_reg = c.range_reg
        return base

    def teacher(self, bundle):
        return bundle.model if self.cfg.distill_weight > 0 else None
