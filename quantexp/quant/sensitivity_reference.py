"""The first sensitivity implementation, kept as the reference the fast one is checked
against (tests/quant/test_sensitivity_fast.py, benchmarks/mixed_kernels.py).

For every (layer, dtype) it deep-copies the whole model (``build_mixed``: real
kernels, int8 observers calibrated by forward passes of the whole model on the
analysis set), evaluates the copy on every analysis item from the first layer on, and
deep-copies it again for the weight-only perturbation. Correct by construction and
slow: 1,643 s for MiniLM's 38 layers at the method's defaults (the issue's figure).
Code as of commit 232e539 (quantexp/quant/sensitivity.py), with its report, Hessian
score and plotting now shared with ``quantexp.quant.sensitivity``.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from quantexp.progress import track
from quantexp.quant.layer_error import sqnr_db
from quantexp.quant.layer_kernels import fake_quantize_weight
from quantexp.quant.mixed_layers import (
    RECURRENT,
    assignable_layers,
    build_mixed,
    layer_weight_bytes,
    model_size_bytes,
    supported_dtypes,
)
from quantexp.quant.sensitivity_report import SensitivityReport, agreement_of, kl_divergence

if TYPE_CHECKING:
    from quantexp.models.base import ModelBundle, Split


def weight_only(model: nn.Module, name: str, dtype: str) -> nn.Module:
    """A copy of ``model`` with only layer ``name``'s weights through ``dtype``'s
    quantizer (``fake_quantize_weight``), everything else fp32."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for pname, p in model.get_submodule(name).named_parameters():
            if "weight" in pname:
                p.copy_(fake_quantize_weight(p, dtype))
    return model


def evaluate(model: nn.Module, split: Split, batch_size: int) -> tuple[torch.Tensor, float, float]:
    logits = []
    with torch.no_grad():
        for inputs, _ in split.batches(batch_size):
            logits.append(model(*inputs).float())
    out = torch.cat(logits)
    acc = float((out.argmax(-1) == split.labels).float().mean())
    loss = float(F.cross_entropy(out, split.labels))
    return out, acc, loss


def run_sensitivity_rebuild(bundle: ModelBundle, analysis: Split, choices: list[str] | None = None,
                            reference_dtype: str = "int8", reduce_range: bool = True,
                            hessian_samples: int = 64, batch_size: int = 64, seed: int = 0,
                            max_items: int | None = None, hessian_items: int = 256,
                            hessian_tol: float | None = 0.1) -> SensitivityReport:
    """The same report as ``run_sensitivity`` (without latency or a figure), computed by
    rebuilding and re-evaluating the whole model for every (layer, dtype)."""
    from quantexp.quant.sensitivity import hessian_scores

    model = bundle.model.eval()
    if max_items is not None and max_items < len(analysis):
        analysis = analysis.subset(torch.arange(max_items))
    layers = assignable_layers(model)
    choices = list(choices or ["fp16", "bf16", "int8", "int4"])
    fp32_logits, fp32_acc, fp32_loss = evaluate(model, analysis, batch_size)
    base = {"accuracy": fp32_acc, "loss": fp32_loss, "size_bytes": model_size_bytes(model, {}),
            "other_bytes": model_size_bytes(model, {}) - sum(layer_weight_bytes(m, "fp32")
                                                             for m in layers.values())}
    if reference_dtype not in choices:
        reference_dtype = next((d for d in ("int8", "int4", "bf16", "fp16") if d in choices), "int8")
    report = SensitivityReport(list(layers), reference_dtype, base)
    for name, module in track(layers.items(), "sensitivity (rebuild per layer)", total=len(layers)):
        report.rows.append({"layer": name, "dtype": "fp32", "accuracy_drop_points": 0.0,
                            "loss_delta": 0.0, "kl_div": 0.0, "sqnr_db": math.inf,
                            "size_bytes": layer_weight_bytes(module, "fp32")})
        for dtype in choices:
            if dtype == "fp32" or dtype not in supported_dtypes(module):
                continue
            built: dict[str, Any] = {}
            mixed = build_mixed(model, {name: dtype}, analysis, reduce_range, batch_size, report=built)
            logits, acc, loss = evaluate(mixed, analysis, batch_size)
            row = {"layer": name, "dtype": dtype, "accuracy_drop_points": 100.0 * (fp32_acc - acc),
                   "loss_delta": loss - fp32_loss, "kl_div": kl_divergence(fp32_logits, logits),
                   "sqnr_db": sqnr_db(fp32_logits, logits),
                   "size_bytes": layer_weight_bytes(module, dtype)}
            if dtype == "int8" and not isinstance(module, RECURRENT):
                row["activation_bits"] = 7 if reduce_range or name in built["reduce_range_layers"] else 8
            if dtype == reference_dtype:
                wo_logits, _, _ = evaluate(weight_only(model, name, dtype), analysis, batch_size)
                row["weight_only_kl"] = kl_divergence(fp32_logits, wo_logits)
            report.rows.append(row)
    if hessian_samples > 0:
        report.hessian = hessian_scores(model, analysis, layers, reference_dtype, hessian_samples, seed,
                                        max_items=hessian_items, rel_tol=hessian_tol)
    report.agreement = agreement_of(report)
    return report


__all__ = ["evaluate", "run_sensitivity_rebuild", "weight_only"]
