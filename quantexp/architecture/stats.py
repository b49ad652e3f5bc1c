"""Quantization-relevant statistics of each Linear/Conv/recurrent layer, on calibration
data: the shape of its weights and of the activations it reads. Each figure predicts a
known failure:

- weight ``kurtosis`` (excess, Fisher): heavy tails; a uniform 4-bit grid spends its
  levels on a few large weights (NF4 and per-group scales help).
- ``channel_spread``: the largest output channel's |w| max over the median channel's;
  large means one per-tensor weight scale starves most channels (use per-channel).
- ``input_outlier_channels``: input channels with a value of magnitude >= 6.0 (the
  LLM.int8 criterion), and ``input_dynamic_range``: |x| max over its 99.9th percentile.
  Large values mean one per-tensor activation scale cannot hold both the outliers and
  the bulk: static int8 loses here (MiniLM's FFN down-projections).

``risks`` turns them into words with the thresholds stated in ``RISK_THRESHOLDS``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from quantexp.architecture.census import RECURRENT
from quantexp.progress import track

OUTLIER_THRESHOLD = 6.0  # LLM.int8 (Dettmers et al. 2022): features of magnitude >= 6 are outliers
RISK_THRESHOLDS = {"kurtosis": 10.0, "channel_spread": 10.0, "input_dynamic_range": 8.0}
LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d) + RECURRENT


@dataclass
class LayerStats:
    name: str
    weight_absmax: float
    weight_kurtosis: float
    channel_spread: float
    input_absmax: float
    input_p999: float
    input_dynamic_range: float
    input_outlier_channels: int
    input_channels: int
    risks: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "risks": "; ".join(self.risks)}


def _weight(module: nn.Module) -> torch.Tensor:
    if isinstance(module, RECURRENT):
        return torch.cat([p.detach().flatten() for n, p in module.named_parameters() if n.startswith("weight")])
    return module.weight.detach()


def kurtosis(x: torch.Tensor) -> float:
    x = x.double().flatten()
    centred = x - x.mean()
    var = centred.pow(2).mean()
    return float(centred.pow(4).mean() / var.pow(2) - 3.0) if var > 0 else 0.0


def channel_spread(module: nn.Module) -> float:
    if isinstance(module, RECURRENT):
        return 1.0
    per_channel = module.weight.detach().abs().flatten(1).amax(dim=1)
    median = per_channel.median()
    return float(per_channel.max() / median) if median > 0 else float("inf")


SAMPLE_PER_BATCH = 50_000  # |x| values kept per layer and batch for the 99.9th percentile


def layer_stats(model: nn.Module, batches, max_batches: int = 4) -> list[LayerStats]:
    """Statistics of every Linear/Conv/recurrent layer of ``model`` over up to
    ``max_batches`` calibration batches (an iterable of input tuples). Per layer only
    the per-channel |x| maximum and a fixed-size random sample of |x| are kept."""
    model = model.eval()
    channel_max: dict[str, torch.Tensor] = {}
    samples: dict[str, list[torch.Tensor]] = {}
    generator = torch.Generator().manual_seed(0)
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, LAYERS):
            def hook(_m, args, _out, name=name) -> None:
                x = args[0].detach().float().abs()
                x = x.movedim(1, -1) if x.dim() == 4 else x  # conv: NCHW -> channels last
                flat = x.reshape(-1, x.shape[-1])
                per_channel = flat.amax(dim=0)
                channel_max[name] = torch.maximum(channel_max[name], per_channel) if name in channel_max else per_channel
                values = flat.reshape(-1)
                pick = torch.randint(values.numel(), (min(SAMPLE_PER_BATCH, values.numel()),), generator=generator)
                samples.setdefault(name, []).append(values[pick])
            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for i, inputs in enumerate(track(batches, "activation statistics", total=max_batches)):
                if i >= max_batches:
                    break
                model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for name, module in model.named_modules():
        if name not in channel_max:
            continue
        per_channel, sample = channel_max[name], torch.cat(samples[name])
        p999 = float(torch.quantile(sample, 0.999)) if sample.numel() else 0.0
        absmax = float(per_channel.max())
        w = _weight(module)
        row = LayerStats(name, float(w.abs().max()), kurtosis(w), channel_spread(module), absmax, p999,
                         absmax / p999 if p999 > 0 else float("inf"),
                         int((per_channel >= OUTLIER_THRESHOLD).sum()), int(per_channel.numel()))
        row.risks = risks(row)
        rows.append(row)
    return rows


def risks(row: LayerStats) -> list[str]:
    out = []
    if row.weight_kurtosis > RISK_THRESHOLDS["kurtosis"]:
        out.append(f"heavy-tailed weights (kurtosis {row.weight_kurtosis:.0f}): 4-bit uniform loses")
    if row.channel_spread > RISK_THRESHOLDS["channel_spread"]:
        out.append(f"channel ranges differ {row.channel_spread:.0f}x: per-tensor weights lose")
    if row.input_outlier_channels:
        out.append(f"{row.input_outlier_channels} input channels reach |x| >= {OUTLIER_THRESHOLD:g}")
    if row.input_dynamic_range > RISK_THRESHOLDS["input_dynamic_range"]:
        out.append(f"input max is {row.input_dynamic_range:.0f}x its 99.9th percentile: per-tensor int8 "
                   "activations lose")
    return out


__all__ = ["OUTLIER_THRESHOLD", "RISK_THRESHOLDS", "LayerStats", "kurtosis", "layer_stats", "risks"]
