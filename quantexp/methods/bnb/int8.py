"""bitsandbytes LLM.int8() (``Linear8bitLt``): every nn.Linear of the model is
replaced by an int8 layer (row-wise absmax int8 weights + one fp32 scale per output
row, ``SCB``). At run time activations are quantized row-wise to int8 too, except
the input columns that hold any |x| >= ``threshold``: those columns are multiplied
in fp16 (the mixed-precision decomposition of Dettmers et al., 2022).

bitsandbytes >= 0.49 has CPU kernels, so this runs on CPU as well as CUDA;
quantization happens when the layer is moved with ``.to(device)``.

Calibration inputs are not needed to quantize; one pass of the first calibration
items (``layer_error.MAX_ITEMS``, 64) through the int8 model measures what the outlier
threshold does (the fraction of input columns of each layer that LLM.int8 kept in
fp16) and the per-layer output error against fp32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from quantexp.methods.base import QuantizationMethod, QuantizedModel
from quantexp.methods.bnb.linears import (
    check_has_linear,
    frozen_bias,
    memory_facts,
    move_to,
    quality_facts,
    quantize_linears,
)

if TYPE_CHECKING:
    from quantexp.models.base import Split


def to_int8_linear(linear: nn.Linear, threshold: float, device: str) -> nn.Module:
    """A ``Linear8bitLt`` holding ``linear``'s weights, quantized on ``device``."""
    from bitsandbytes.nn import Int8Params, Linear8bitLt

    new = Linear8bitLt(linear.in_features, linear.out_features, bias=linear.bias is not None,
                       has_fp16_weights=False, threshold=threshold, device="meta")
    new.weight = Int8Params(linear.weight.detach().clone(), requires_grad=False,
                            has_fp16_weights=False)
    new.bias = frozen_bias(linear)
    return move_to(new, device)


def outlier_columns(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Boolean mask over the last dimension (input features): True where any value
    of that column has |x| >= threshold after the fp16 cast LLM.int8 applies - the
    columns ``int8_vectorwise_quant`` hands to the fp16 matmul."""
    a = x.reshape(-1, x.shape[-1]).to(torch.float16).abs()
    return (a >= threshold).any(dim=0)


class OutlierCounter:
    """Forward pre-hooks on the replaced layers that record, for every forward, which
    input columns LLM.int8 decomposes into fp16 (``outlier_columns``).

    ``fractions()``: per layer, ``outlier_cols_frac`` = fraction of input columns that
    were outliers in at least one forward, ``outlier_cols_frac_per_batch`` = mean over
    forwards of the fraction decomposed in that forward."""

    def __init__(self, model: nn.Module, names: Sequence[str], threshold: float):
        self.threshold = threshold
        self.union: dict[str, torch.Tensor] = {}
        self.per_batch: dict[str, list[float]] = {name: [] for name in names}
        modules = dict(model.named_modules())
        self._handles = [modules[n].register_forward_pre_hook(self._hook(n)) for n in names]

    def _hook(self, name: str):
        def pre(_module, inputs):
            mask = outlier_columns(inputs[0].detach(), self.threshold).cpu()
            self.union[name] = mask if name not in self.union else self.union[name] | mask
            self.per_batch[name].append(float(mask.float().mean()))
        return pre

    def remove(self) -> None:
        for h in self._handles:
            h.remove()

    def fractions(self) -> dict[str, dict[str, float]]:
        return {name: {"outlier_cols_frac": float(self.union[name].float().mean()),
                       "outlier_cols_frac_per_batch": sum(runs) / len(runs)}
                for name, runs in self.per_batch.items() if runs}


def outlier_fractions(model: nn.Module, names: Sequence[str], batches, threshold: float
                      ) -> dict[str, dict[str, float]]:
    """``OutlierCounter.fractions()`` of ``model`` run on ``batches`` of inputs."""
    counter = OutlierCounter(model, names, threshold)
    device = next(iter(model.parameters())).device
    try:
        with torch.no_grad():
            for inputs in batches:
                model(*(x.to(device) for x in inputs))
    finally:
        counter.remove()
    return counter.fractions()


class BnbInt8(QuantizationMethod):
    needs_calibration = True

    def check_model(self, bundle) -> None:
        check_has_linear("bnb_int8", bundle, self.cfg.skip_modules)

    def quantize(self, bundle, calibration: Split | None) -> QuantizedModel:
        threshold, device = float(self.cfg.threshold), self.host.device
        model, targets, facts = quantize_linears(
            "bnb_int8", bundle, self.cfg.skip_modules, device,
            lambda lin: to_int8_linear(lin, threshold, device))
        info: dict[str, Any] = {"path": "bitsandbytes.nn.Linear8bitLt", "threshold": threshold, **facts}
        # The outlier statistic rides on the per-layer error pass (the same calibration
        # items run once through the int8 model): the int8 CPU path is slow.
        counter = OutlierCounter(model, targets, threshold) if threshold > 0.0 else None
        try:
            info.update(quality_facts(bundle, model, targets, calibration,
                                      self.cfg.calibration.batch_size))
        finally:
            if counter is not None:
                counter.remove()
        if counter is None:
            info["outlier_decomposition"] = "disabled (threshold=0): every column is int8"
        elif per_layer := counter.fractions():
            for row in info.get("tables", {}).get("layer_error", []):
                row.update(per_layer.get(row["layer"], {}))
            fracs = [v["outlier_cols_frac"] for v in per_layer.values()]
            info.update(outlier_cols_frac_mean=sum(fracs) / len(fracs),
                        outlier_cols_frac_max=max(fracs),
                        layers_with_outliers=sum(f > 0 for f in fracs),
                        outlier_items=info["layer_error_items"])
        # After the forward passes: a layer may cast its bias to the compute dtype on first use.
        info.update(memory_facts(model, bundle.num_parameters))
        return QuantizedModel(model, info)
