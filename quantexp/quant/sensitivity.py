"""Per-layer sensitivity to quantization, measured two ways, and how well they agree.

1. Empirical (one layer at a time): for every layer and every dtype it supports,
   the model is rebuilt with only that layer changed (``build_mixed``: real
   int8/fp16/bf16/int4 kernels) and evaluated on the analysis set: accuracy
   delta (points), cross-entropy loss delta, KL(fp32 || mixed) of the output
   distributions, and the SQNR (dB) of the logits against the fp32 logits.
   Optionally its latency. At the reference dtype, also the weight-only
   perturbation (weights through the dtype's quantizer, fp32 activations): what
   the Hessian score models.
2. Hessian (HAWQ-v2): Hutchinson estimate of tr(H_l) of the loss w.r.t. each
   layer's parameters, and ``Omega_l = tr(H_l)/n_l * ||Q(W_l) - W_l||^2`` with Q
   the reference dtype's weight quantizer.

Layers are ranked by the empirical KL at the reference dtype (default: int8) and
by Omega; Spearman's rho and Kendall's tau say how well the rankings agree (also
for the weight-only ranking). Why KL and not the loss delta: Omega estimates the
second-order term of the loss change, 1/2 dW^T H dW; the measured loss delta
also holds the first-order term g.dW, which is not zero on a finite set and
flips sign with the items (CNN, int8 weights of conv2: -5.6e-5 on 256 items,
+2.1e-5 on 4,000). KL(p_fp32 || p_q) is >= 0 and second order in the output
change (its Hessian is the Gauss-Newton / Fisher part of H).

The analysis set is the calibration set (training items; ``max_items`` of them):
choosing a precision never looks at the test set.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from quantexp.progress import track
from quantexp.quant.hessian import hutchinson_trace
from quantexp.quant.layer_error import sqnr_db
from quantexp.quant.mixed_layers import (
    INT4_GROUP,
    RECURRENT,
    assignable_layers,
    build_mixed,
    layer_weight_bytes,
    model_size_bytes,
    supported_dtypes,
)

if TYPE_CHECKING:
    from quantexp.models.base import ModelBundle, Split


def fake_quantize_weight(w: torch.Tensor, dtype: str) -> torch.Tensor:
    """What the dtype's weight storage does to ``w`` (used for the HAWQ perturbation)."""
    w = w.detach().float()
    if dtype == "fp32":
        return w
    if dtype in ("fp16", "bf16"):
        return w.to({"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]).float()
    rows = w.reshape(w.shape[0], -1)
    if dtype == "int8":  # per output channel, symmetric
        scale = rows.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
        return (torch.round(rows / scale).clamp(-128, 127) * scale).reshape(w.shape)
    if dtype == "int4":  # per group of 32 along the input dim, symmetric
        if rows.shape[1] % INT4_GROUP:
            return w
        groups = rows.reshape(rows.shape[0], -1, INT4_GROUP)
        scale = groups.abs().amax(dim=2, keepdim=True).clamp_min(1e-12) / 7
        return (torch.round(groups / scale).clamp(-8, 7) * scale).reshape(w.shape)
    raise ValueError(f"unknown dtype {dtype}")


def kl_divergence(reference_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """Mean KL(softmax(reference) || softmax(logits)) per item, in nats."""
    return float(F.kl_div(F.log_softmax(logits.float(), -1), F.log_softmax(reference_logits.float(), -1),
                          log_target=True, reduction="batchmean"))


def weight_only(model: nn.Module, name: str, dtype: str) -> nn.Module:
    """A copy of ``model`` with only layer ``name``'s weights through ``dtype``'s
    quantizer (``fake_quantize_weight``), everything else fp32."""
    import copy

    model = copy.deepcopy(model)
    with torch.no_grad():
        for pname, p in model.get_submodule(name).named_parameters():
            if "weight" in pname:
                p.copy_(fake_quantize_weight(p, dtype))
    return model


def _evaluate(model: nn.Module, split: Split, batch_size: int) -> tuple[torch.Tensor, float, float]:
    logits = []
    with torch.no_grad():
        for inputs, _ in split.batches(batch_size):
            logits.append(model(*inputs).float())
    out = torch.cat(logits)
    acc = float((out.argmax(-1) == split.labels).float().mean())
    loss = float(F.cross_entropy(out, split.labels))
    return out, acc, loss


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


@dataclass
class SensitivityReport:
    layers: list[str]
    reference_dtype: str
    base: dict[str, float]
    rows: list[dict[str, Any]] = field(default_factory=list)      # per (layer, dtype)
    hessian: list[dict[str, Any]] = field(default_factory=list)   # per layer
    agreement: dict[str, float] = field(default_factory=dict)
    figure: str | None = None

    @property
    def candidates(self) -> dict[str, dict[str, dict[str, float]]]:
        """{layer: {dtype: {"drop", "size_bytes", "latency_delta_ms"}}} for the solver."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for r in self.rows:
            out.setdefault(r["layer"], {})[r["dtype"]] = {
                "drop": max(0.0, r["accuracy_drop_points"]), "size_bytes": r["size_bytes"],
                "latency_delta_ms": r.get("latency_delta_ms", 0.0)}
        return out

    def ranking(self, kind: str) -> list[str]:
        """Most sensitive first. ``empirical``: KL of the real one-layer kernel at the
        reference dtype; ``weight_only``: KL with only that layer's weights quantized;
        ``hessian``: HAWQ-v2 Omega."""
        ref = [r for r in self.rows if r["dtype"] == self.reference_dtype]
        if kind == "empirical":
            score = {r["layer"]: r["kl_div"] for r in ref}
        elif kind == "weight_only":
            score = {r["layer"]: r["weight_only_kl"] for r in ref if "weight_only_kl" in r}
        else:
            score = {r["layer"]: r["hawq_score"] for r in self.hessian}
        return sorted(score, key=lambda n: -score[n])

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        emp, hes = self.ranking("empirical"), self.ranking("hessian")
        wo = self.ranking("weight_only")
        rank_rows = [{"layer": n, "empirical_rank": emp.index(n) + 1 if n in emp else None,
                      "weight_only_rank": wo.index(n) + 1 if n in wo else None,
                      "hessian_rank": hes.index(n) + 1 if n in hes else None} for n in self.layers]
        return {"sensitivity": self.rows, "hessian_sensitivity": self.hessian,
                "sensitivity_ranking": rank_rows}

    def summary(self) -> dict[str, Any]:
        return {"sensitivity.reference_dtype": self.reference_dtype,
                "sensitivity.most_sensitive_empirical": (self.ranking("empirical") or [""])[0],
                "sensitivity.most_sensitive_hessian": (self.ranking("hessian") or [""])[0],
                **{f"sensitivity.{k}": v for k, v in self.agreement.items()}}

    def figures(self) -> dict[str, str]:
        return {"sensitivity": self.figure} if self.figure else {}


def rank_agreement(a: list[str], b: list[str]) -> dict[str, float]:
    """Spearman's rho and Kendall's tau between two rankings (orders) of the same
    items (permutations: no ties), and whether they agree on the first item."""
    common = [n for n in a if n in b]
    n = len(common)
    if n < 2:
        return {}
    ra = {x: i for i, x in enumerate([x for x in a if x in common])}
    rb = {x: i for i, x in enumerate([x for x in b if x in common])}
    d2 = sum((ra[x] - rb[x]) ** 2 for x in common)
    rho = 1.0 - 6.0 * d2 / (n * (n * n - 1))
    pairs = [(x, y) for i, x in enumerate(common) for y in common[i + 1:]]
    score = sum(1 if (ra[x] - ra[y]) * (rb[x] - rb[y]) > 0 else -1 for x, y in pairs)
    return {"spearman_rho": rho, "kendall_tau": score / len(pairs), "top1_agree": float(a[0] == b[0])}


_agreement = rank_agreement


def hessian_scores(model: nn.Module, split: Split, layers: dict[str, nn.Module], dtype: str,
                   n_samples: int, seed: int, max_items: int = 256,
                   rel_tol: float | None = None) -> list[dict[str, Any]]:
    """HAWQ-v2 per layer: Hutchinson trace of the loss Hessian and Omega for ``dtype``."""
    sub = split.subset(torch.arange(min(len(split), max_items)))
    model = model.train(False)
    params = {n: [p for p in m.parameters()] for n, m in layers.items()}
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
                                      params, n_samples=n_samples, seed=seed, rel_tol=rel_tol)
    finally:
        for ps in params.values():
            for p in ps:
                p.requires_grad_(flags[id(p)])
    rows = []
    for name, module in layers.items():
        ref = dtype if dtype in supported_dtypes(module) else "int8"
        pert = sum(float((fake_quantize_weight(p, ref) - p.detach()).pow(2).sum())
                   for pn, p in module.named_parameters() if "weight" in pn)
        t = traces[name]
        rows.append({"layer": name, "n_params": t.n_params, "hessian_trace": t.trace,
                     "hessian_trace_stderr": t.std_err, "trace_per_param": t.per_param,
                     "perturbation_sq": pert, "hawq_score": t.per_param * pert,
                     "hessian_samples": t.n_samples, "dtype": ref})
    return rows


def run_sensitivity(bundle: ModelBundle, analysis: Split, choices: list[str] | None = None,
                    reference_dtype: str = "int8", reduce_range: bool = True,
                    hessian_samples: int = 64, measure_latency: bool = False, batch_size: int = 64,
                    seed: int = 0, plot: bool = True, max_items: int | None = None,
                    hessian_items: int = 256, hessian_tol: float | None = 0.1) -> SensitivityReport:
    """``max_items``: evaluate on the first ``max_items`` analysis items only (the
    analysis set is already a seeded random draw); ``hessian_items``: items in the
    loss whose Hessian is estimated; ``hessian_samples``/``hessian_tol``: most
    Hutchinson probes, and the relative standard error that stops earlier."""
    model = bundle.model.eval()
    if max_items is not None and max_items < len(analysis):
        analysis = analysis.subset(torch.arange(max_items))
    layers = assignable_layers(model)
    choices = list(choices or ["fp16", "bf16", "int8", "int4"])
    fp32_logits, fp32_acc, fp32_loss = _evaluate(model, analysis, batch_size)
    example = bundle.example_inputs(16)
    base = {"accuracy": fp32_acc, "loss": fp32_loss,
            "size_bytes": model_size_bytes(model, {}),
            "other_bytes": model_size_bytes(model, {}) - sum(layer_weight_bytes(m, "fp32")
                                                             for m in layers.values())}
    if measure_latency:
        base["latency_ms"] = _latency_ms(model, example)
    if reference_dtype not in choices:
        reference_dtype = next((d for d in ("int8", "int4", "bf16", "fp16") if d in choices), "int8")
    report = SensitivityReport(list(layers), reference_dtype, base)
    for name, module in track(layers.items(), "sensitivity: one layer at a time", total=len(layers)):
        report.rows.append({"layer": name, "dtype": "fp32", "accuracy_drop_points": 0.0,
                            "loss_delta": 0.0, "kl_div": 0.0, "sqnr_db": math.inf,
                            "size_bytes": layer_weight_bytes(module, "fp32"),
                            **({"latency_delta_ms": 0.0} if measure_latency else {})})
        for dtype in choices:
            if dtype == "fp32" or dtype not in supported_dtypes(module):
                continue
            built: dict[str, Any] = {}
            mixed = build_mixed(model, {name: dtype}, analysis, reduce_range, batch_size, report=built)
            logits, acc, loss = _evaluate(mixed, analysis, batch_size)
            row = {"layer": name, "dtype": dtype, "accuracy_drop_points": 100.0 * (fp32_acc - acc),
                   "loss_delta": loss - fp32_loss, "kl_div": kl_divergence(fp32_logits, logits),
                   "sqnr_db": sqnr_db(fp32_logits, logits),
                   "size_bytes": layer_weight_bytes(module, dtype)}
            if dtype == "int8" and not isinstance(module, RECURRENT):
                row["activation_bits"] = 7 if reduce_range or name in built["reduce_range_layers"] else 8
            if dtype == reference_dtype:
                wo_logits, _, _ = _evaluate(weight_only(model, name, dtype), analysis, batch_size)
                row["weight_only_kl"] = kl_divergence(fp32_logits, wo_logits)
            if measure_latency:
                row["latency_delta_ms"] = _latency_ms(mixed, example) - base["latency_ms"]
            report.rows.append(row)
    if hessian_samples > 0:
        report.hessian = hessian_scores(model, analysis, layers, reference_dtype, hessian_samples, seed,
                                        max_items=hessian_items, rel_tol=hessian_tol)
    report.agreement = _agreement(report.ranking("empirical"), report.ranking("hessian"))
    report.agreement.update({f"weight_only_{k}": v for k, v in _agreement(
        report.ranking("weight_only"), report.ranking("hessian")).items()})
    if plot:
        report.figure = plot_sensitivity(report)
    return report


def plot_sensitivity(report: SensitivityReport, path: Path | None = None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = path or Path(tempfile.mkdtemp(prefix="quantexp_sens_")) / "sensitivity.png"
    emp = {r["layer"]: r["kl_div"] for r in report.rows if r["dtype"] == report.reference_dtype}
    hes = {r["layer"]: r["hawq_score"] for r in report.hessian}
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    names = report.layers
    axes[0].bar(names, [emp.get(n, 0.0) for n in names], color="tab:blue")
    axes[0].set_title(f"KL(fp32 || one layer {report.reference_dtype})")
    axes[1].bar(names, [hes.get(n, 0.0) for n in names], color="tab:orange")
    axes[1].set_title("HAWQ-v2 score tr(H)/n * |Q(W)-W|^2")
    rho = report.agreement.get("spearman_rho")
    fig.suptitle(f"per-layer sensitivity (Spearman rho = {rho:.2f})" if rho is not None
                 else "per-layer sensitivity")
    for ax in axes:
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


__all__ = [
    "SensitivityReport",
    "fake_quantize_weight",
    "hessian_scores",
    "kl_divergence",
    "plot_sensitivity",
    "run_sensitivity",
    "weight_only",
]
