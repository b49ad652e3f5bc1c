"""torch.ao static int8 building blocks shared by ptq_static, qat and mixed precision:
the layer types static int8 quantizes, the qconfig built from observer, granularity
and weight bits, and a count of the layers a model really runs in int8."""

from __future__ import annotations

import torch
from torch import nn

from quantexp.config import Granularity, Observer

QUANTIZABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Static int8 LSTM needs the cell's hidden state passed explicitly
# (torch.ao.nn.quantizable.LSTM); our models don't, so recurrent layers stay fp32
# under ptq_static and are reported in float_layers_left (ptq_dynamic covers them).
KEPT_FLOAT = QUANTIZABLE + (nn.LSTM, nn.GRU)


def build_qconfig(observer: Observer, granularity: Granularity, reduce_range: bool,
                  weight_bits: int = 8):
    """Static PTQ qconfig. ``weight_bits`` < 8 (precision=w4a8): weights are observed
    on the signed ``weight_bits`` grid (4 bits: [-8, 7]) and stored in int8 kernels."""
    from torch.ao.quantization import QConfig
    from torch.ao.quantization.observer import (
        HistogramObserver,
        MinMaxObserver,
        MovingAverageMinMaxObserver,
        PerChannelMinMaxObserver,
    )

    activation_cls = {
        Observer.minmax: MinMaxObserver,
        Observer.moving_average_minmax: MovingAverageMinMaxObserver,
        Observer.histogram: HistogramObserver,
    }[observer]
    activation = activation_cls.with_args(dtype=torch.quint8, reduce_range=reduce_range)
    bounds = {} if weight_bits == 8 else {"quant_min": -(2 ** (weight_bits - 1)),
                                          "quant_max": 2 ** (weight_bits - 1) - 1}
    if granularity == Granularity.per_channel:
        weight = PerChannelMinMaxObserver.with_args(dtype=torch.qint8,
                                                    qscheme=torch.per_channel_symmetric, **bounds)
    else:
        weight = MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric,
                                          **bounds)
    return QConfig(activation=activation, weight=weight)


def count_quantized(model: nn.Module) -> int:
    import torch.ao.nn.quantized as nnq

    return sum(isinstance(m, (nnq.Linear, nnq.Conv1d, nnq.Conv2d, nnq.Conv3d))
               or type(m).__module__.startswith("torch.ao.nn.intrinsic.quantized")
               for m in model.modules())
