"""Per-layer sensitivity to quantization, measured two ways, and how well they agree.

1. Empirical (one layer at a time): for every layer and every dtype it may take, only
   that layer is changed, in place, and the model is evaluated on the analysis set:
   accuracy delta (points), cross-entropy loss delta, KL(fp32 || changed) of the
   output distributions, the SQNR (dB) of the logits against the fp32 logits, and,
   from a kernel table (``quantexp.quant.kernels``), the layer's measured latency
   delta. At the reference dtype, also the weight-only perturbation (weights through
   the dtype's quantizer, fp32 activations): what the Hessian score models.
2. Hessian (HAWQ-v2): Hutchinson estimate of tr(H_l) of the loss w.r.t. each
   layer's parameters, and ``Omega_l = tr(H_l)/n_l * ||Q(W_l) - W_l||^2`` with Q
   the reference dtype's weight quantizer.

What makes it fast (MiniLM, 38 layers: 1,643 s in the first implementation, kept in
``sensitivity_reference``):
- no model copies: the changed layer is swapped into the model and back;
- one fp32 pass (``quantexp.quant.replay.Replay``) records the outputs of every module
  that runs before each layer, and each evaluation computes only the changed layer
  and what follows it;
- int8 observers are calibrated on the layer's recorded fp32 inputs (in the
  otherwise-fp32 model they are exactly its inputs) - the same observer inputs as a
  calibration pass of the whole model, so the same int8 layer;
- emulation where it is numerically the kernel's computation: fp16/bf16 layers as
  casts around fp32 arithmetic, int4 Linear as its fake-quantized weights with the
  kernel's bf16 roundings (``layer_kernels.emulate_*``; tests/quant/test_layer_kernels.py
  states the equivalence); int8 layers and embeddings run their real kernels (one
  layer: cheap). On AVX2 this avoids half-precision kernels 7x slower than fp32.

Layers are ranked by the empirical KL at the reference dtype (default: int8) and by
Omega; Spearman's rho and Kendall's tau say how well the rankings agree (also for the
weight-only ranking). Why KL and not the loss delta: Omega estimates the second-order
term of the loss change, 1/2 dW^T H dW; the measured loss delta also holds the
first-order term g.dW, which is not zero on a finite set and flips sign with the items
(CNN, int8 weights of conv2: -5.6e-5 on 256 items, +2.1e-5 on 4,000). KL(p_fp32 || p_q)
is >= 0 and second order in the output change (its Hessian is the Gauss-Newton /
Fisher part of H).

The analysis set is the calibration set (training items; ``max_items`` of them):
choosing a precision never looks at the test set.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from quantexp.progress import track
from quantexp.quant.hessian import hutchinson_trace
from quantexp.quant.layer_error import sqnr_db
from quantexp.quant.layer_kernels import (
    TORCH_FLOAT,
    emulate_cast,
    emulate_int4_linear,
    fake_quantize_weight,
    tinygemm_supported,
)
from quantexp.quant.mixed_layers import (
    assignable_layers,
    is_static_int8,
    layer_weight_bytes,
    model_size_bytes,
    one_layer,
    reduced,
    saturating_layers,
    static_qconfig,
    supported_dtypes,
)
from quantexp.quant.replay import Replay
from quantexp.quant.sensitivity_report import (
    SensitivityReport,
    agreement_of,
    kl_divergence,
    plot_sensitivity,
    rank_agreement,
)

if TYPE_CHECKING:
    from quantexp.models.base import ModelBundle, Split


class _Fn(nn.Module):
    """A forward function as a module (an emulated layer)."""

    def __init__(self, fn: Callable[..., Any]):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _static_int8(layer: nn.Module, inputs: list[torch.Tensor], reduce_range: bool) -> tuple[nn.Module, int]:
    """``layer`` as an eager static int8 layer (quantize -> kernel -> dequantize), its
    observers fed with the layer's recorded fp32 inputs; with 8-bit activations checked
    for saturation (rebuilt with 7 bits if it saturates). Returns it and its
    activation bits."""
    from torch.ao.quantization import QuantWrapper, convert, prepare

    def build(qconfig):
        wrapper = QuantWrapper(copy.deepcopy(layer)).eval()
        wrapper.qconfig = qconfig
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepare(wrapper, inplace=True)
            with torch.no_grad():
                for x in inputs:
                    wrapper(x)
            convert(wrapper, inplace=True)
        return wrapper

    qconfig = static_qconfig(reduce_range)
    built = build(qconfig)
    if not reduce_range and saturating_layers(nn.Sequential(built), ["0"], (inputs[0],)):
        return build(reduced(qconfig)), 7
    return built, 7 if reduce_range else 8


def candidate(layer: nn.Module, dtype: str, inputs: list[torch.Tensor] | None,
              reduce_range: bool) -> tuple[nn.Module, dict[str, Any]]:
    """What the analysis puts in ``layer``'s place to measure ``dtype``, and facts
    for its row (``how``: real kernel or emulation)."""
    if is_static_int8(layer, dtype):
        built, bits = _static_int8(layer, inputs or [], reduce_range)
        return built, {"how": "int8 kernel", "activation_bits": bits}
    if dtype in TORCH_FLOAT:
        return _Fn(emulate_cast(layer, dtype)), {"how": "emulated (cast round trip)"}
    if dtype == "int4" and isinstance(layer, nn.Linear):
        kernel = "tinygemm" if tinygemm_supported(layer.out_features, layer.in_features) else "dequantize"
        weight, bias = layer.weight.detach(), None if layer.bias is None else layer.bias.detach()
        return _Fn(lambda x: emulate_int4_linear(x, weight, bias, kernel)), {"how": f"emulated ({kernel})"}
    return one_layer(layer, dtype), {"how": "kernel"}


def _weight_only_kl(replay: Replay, model: nn.Module, name: str, dtype: str,
                    fp32_logits: torch.Tensor) -> float:
    """KL with only ``name``'s weights through ``dtype``'s quantizer (swapped in place)."""
    layer = model.get_submodule(name)
    saved = {}
    with torch.no_grad():
        for pname, p in layer.named_parameters():
            if "weight" in pname:
                saved[pname] = p.detach().clone()
                p.copy_(fake_quantize_weight(p, dtype))
    try:
        return kl_divergence(fp32_logits, replay.run(name))
    finally:
        with torch.no_grad():
            for pname, p in layer.named_parameters():
                if pname in saved:
                    p.copy_(saved[pname])


def _latency_ms(model: nn.Module, example: tuple[torch.Tensor, ...], iters: int = 20) -> float:
    with torch.no_grad():
        for _ in range(3):
            model(*example)
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            model(*example)
            times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return times[len(times) // 2]


def run_sensitivity(bundle: ModelBundle, analysis: Split, choices: list[str] | None = None,
                    reference_dtype: str = "int8", reduce_range: bool = True,
                    hessian_samples: int = 64, measure_latency: bool = False, batch_size: int = 64,
                    seed: int = 0, plot: bool = True, max_items: int | None = None,
                    hessian_items: int = 256, hessian_tol: float | None = 0.1,
                    kernel_ms: Mapping[str, Mapping[str, float]] | None = None,
                    offered: Mapping[str, Iterable[str]] | None = None,
                    latency_batch_size: int = 16) -> SensitivityReport:
    """``choices``: dtypes to measure (each layer gets those it supports);
    ``max_items``: evaluate on the first ``max_items`` analysis items only (the
    analysis set is already a seeded random draw); ``hessian_items``: items in the
    loss whose Hessian is estimated; ``hessian_samples``/``hessian_tol``: most
    Hutchinson probes, and the relative standard error that stops earlier;
    ``kernel_ms``: {layer: {dtype: measured ms}} (``kernels.KernelTable.ms``), whose
    differences to fp32 become the rows' ``latency_delta_ms`` (with
    ``measure_latency``: needed for a latency budget or objective; the fp32 model's
    own latency is timed at ``latency_batch_size``); ``offered``: {layer: dtypes} to
    measure for that layer (the kernels this host runs fast) - the reference dtype is
    measured for every layer regardless, for the rankings."""
    if measure_latency and kernel_ms is None:
        raise ValueError("measure_latency needs kernel_ms: the per-layer kernel latencies (quant.kernels)")
    started = time.perf_counter()
    model = bundle.model.eval()
    if max_items is not None and max_items < len(analysis):
        analysis = analysis.subset(torch.arange(max_items))
    layers = assignable_layers(model)
    choices = [c for c in (choices or ["fp16", "bf16", "int8", "int4"]) if c != "fp32"]
    if reference_dtype not in choices:
        reference_dtype = next((d for d in ("int8", "int4", "bf16", "fp16") if d in choices), "int8")
    todo = [(n, d) for n, m in layers.items() for d in choices if d in supported_dtypes(m)
            and (offered is None or d in offered.get(n, ()) or d == reference_dtype)]
    static = sorted({n for n, d in todo if is_static_int8(layers[n], d)})
    batches = [inputs for inputs, _ in analysis.batches(batch_size)]
    labels, facts = analysis.labels, {}
    trimmed = _trimmed(bundle, analysis, batch_size)
    if trimmed is None:
        replay = Replay(model, batches, list(layers), keep_inputs=static)
        calibration_inputs = replay.inputs
    else:
        # observers see the padded inputs the deployed model sees; evaluation skips padding
        full = Replay(model, batches, [], keep_inputs=static)
        short, order = trimmed
        replay = Replay(model, short, list(layers))
        same = torch.allclose(replay.logits, full.logits[order], rtol=1e-3, atol=1e-4)
        if same:
            labels, calibration_inputs = analysis.labels[order], full.inputs
            facts["trimmed_padding"] = 1.0
        else:
            replay, calibration_inputs = Replay(model, batches, list(layers), keep_inputs=static), full.inputs
            facts["trimmed_padding"] = 0.0
    fp32_logits = replay.logits
    fp32_acc = float((fp32_logits.argmax(-1) == labels).float().mean())
    fp32_loss = float(F.cross_entropy(fp32_logits, labels))
    size = model_size_bytes(model, {})
    base = {"accuracy": fp32_acc, "loss": fp32_loss, "size_bytes": size,
            "other_bytes": size - sum(layer_weight_bytes(m, "fp32") for m in layers.values())}
    if measure_latency:
        base["latency_ms"] = _latency_ms(model, bundle.example_inputs(latency_batch_size))
        # The layers timed alone cannot take longer than the whole model; when they do
        # (timed at other moments of a busy host), the model's time is raised to their
        # sum, so that no predicted latency goes below zero.
        layer_fp32 = sum(kernel_ms[n]["fp32"] for n in layers if "fp32" in kernel_ms.get(n, {}))
        if layer_fp32 > base["latency_ms"]:
            facts["latency_raised_to_layer_sum"] = 1.0
            base["latency_ms"] = layer_fp32
    report = SensitivityReport(list(layers), reference_dtype, base)
    for name, module in layers.items():
        report.rows.append({"layer": name, "dtype": "fp32", "accuracy_drop_points": 0.0,
                            "loss_delta": 0.0, "kl_div": 0.0, "sqnr_db": math.inf,
                            "size_bytes": layer_weight_bytes(module, "fp32"),
                            **({"latency_delta_ms": 0.0} if measure_latency else {})})
    for name, dtype in track(todo, "sensitivity: one layer at a time", total=len(todo)):
        layer = layers[name]
        swapped, how = candidate(layer, dtype, calibration_inputs.get(name), reduce_range)
        _set(model, name, swapped)
        try:
            logits = replay.run(name)
        finally:
            _set(model, name, layer)
        acc = float((logits.argmax(-1) == labels).float().mean())
        row = {"layer": name, "dtype": dtype, "accuracy_drop_points": 100.0 * (fp32_acc - acc),
               "loss_delta": float(F.cross_entropy(logits, labels)) - fp32_loss,
               "kl_div": kl_divergence(fp32_logits, logits), "sqnr_db": sqnr_db(fp32_logits, logits),
               "size_bytes": layer_weight_bytes(layer, dtype), **how}
        if dtype == reference_dtype:
            # an embedding's int8/int4 lookup is already weight-only
            row["weight_only_kl"] = row["kl_div"] if isinstance(layer, nn.Embedding) else \
                _weight_only_kl(replay, model, name, dtype, fp32_logits)
        if measure_latency:
            row["latency_delta_ms"] = _kernel_delta(kernel_ms, name, dtype)
        report.rows.append(row)
    report.facts = {"evaluation_s": time.perf_counter() - started, "replay": float(replay.enabled),
                    "items": len(analysis), **facts}
    if not replay.enabled:
        report.facts["replay_off_reason"] = replay.reason
    if hessian_samples > 0:
        t0 = time.perf_counter()
        report.hessian = hessian_scores(model, analysis, layers, reference_dtype, hessian_samples, seed,
                                        max_items=hessian_items, rel_tol=hessian_tol,
                                        cut_padding=trimmed is not None)
        report.facts["hessian_s"] = time.perf_counter() - t0
        report.facts["hessian_probes"] = max((r["hessian_samples"] for r in report.hessian), default=0)
    report.agreement = agreement_of(report)
    if plot:
        report.figure = plot_sensitivity(report)
    report.facts["wall_s"] = time.perf_counter() - started
    return report


def _trimmed(bundle: ModelBundle, split: Split,
             batch_size: int) -> tuple[list[tuple[torch.Tensor, ...]], torch.Tensor] | None:
    """Transformer inputs (input_ids, attention_mask, right-padded): the items sorted by
    length and each batch cut to its longest item, with the order. MiniLM's reviews
    average 27.5 of 64 tokens: most of a padded forward pass computes padding, which
    the attention mask and the masked mean pooling then ignore. None for other models."""
    if bundle.family != "transformer" or len(split.inputs) != 2:
        return None
    ids, mask = split.inputs
    if mask.shape != ids.shape or mask.dim() != 2 or not bool(((mask == 0) | (mask == 1)).all()):
        return None
    lengths = mask.sum(1)
    order = torch.argsort(lengths, stable=True)
    batches = []
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        n = max(int(lengths[idx].max()), 1)
        if int(mask[idx, n:].sum()):  # not right-padded
            return None
        batches.append((ids[idx, :n], mask[idx, :n]))
    return batches, order


def _kernel_delta(kernel_ms: Mapping[str, Mapping[str, float]] | None, name: str, dtype: str) -> float:
    if not kernel_ms or name not in kernel_ms or dtype not in kernel_ms[name] or "fp32" not in kernel_ms[name]:
        return math.nan  # not measured: the solver treats it as unknown
    return kernel_ms[name][dtype] - kernel_ms[name]["fp32"]


def hessian_scores(model: nn.Module, split: Split, layers: dict[str, nn.Module], dtype: str,
                   n_samples: int, seed: int, max_items: int = 256,
                   rel_tol: float | None = None, cut_padding: bool = False) -> list[dict[str, Any]]:
    """HAWQ-v2 per layer: Hutchinson trace of the loss Hessian and Omega for ``dtype``.
    ``cut_padding``: (input_ids, attention_mask) inputs cut to their longest item."""
    sub = split.subset(torch.arange(min(len(split), max_items)))
    if cut_padding:
        ids, mask = sub.inputs
        longest = max(int(mask.sum(1).max()), 1)
        sub = type(sub)((ids[:, :longest], mask[:, :longest]), sub.labels, sub.ids)
    model = model.train(False)
    params = {n: [p for p in m.parameters()] for n, m in layers.items()}
    perturbation = {}
    for name, module in layers.items():
        ref = dtype if dtype in supported_dtypes(module) else "int8"
        perturbation[name] = (ref, sum(float((fake_quantize_weight(p, ref) - p.detach()).pow(2).sum())
                                       for pn, p in module.named_parameters() if "weight" in pn))
    # early stop on the HAWQ scores' scale (trace / n_params * perturbation)
    weights = {n: perturbation[n][1] / max(sum(p.numel() for p in params[n]), 1) for n in layers}
    flags = {id(p): p.requires_grad for ps in params.values() for p in ps}
    for ps in params.values():
        for p in ps:
            p.requires_grad_(True)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    try:
        # cuDNN-free CPU LSTM supports double backward; no_grad must be off. The fused
        # CPU attention kernel has no double backward ("derivative for
        # aten::_scaled_dot_product_flash_attention_for_cpu_backward is not
        # implemented"): HVPs through a transformer use the math attention kernel.
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            traces = hutchinson_trace(lambda: F.cross_entropy(model(*sub.inputs), sub.labels),
                                      params, n_samples=n_samples, seed=seed, rel_tol=rel_tol,
                                      progress="sensitivity: Hessian probes", weights=weights)
    finally:
        for ps in params.values():
            for p in ps:
                p.requires_grad_(flags[id(p)])
    rows = []
    for name in layers:
        ref, pert = perturbation[name]
        t = traces[name]
        rows.append({"layer": name, "n_params": t.n_params, "hessian_trace": t.trace,
                     "hessian_trace_stderr": t.std_err, "trace_per_param": t.per_param,
                     "perturbation_sq": pert, "hawq_score": t.per_param * pert,
                     "hessian_samples": t.n_samples, "dtype": ref})
    return rows


__all__ = [
    "SensitivityReport",
    "candidate",
    "fake_quantize_weight",
    "hessian_scores",
    "kl_divergence",
    "plot_sensitivity",
    "rank_agreement",
    "run_sensitivity",
]
