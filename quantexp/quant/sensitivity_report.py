"""The result of a per-layer sensitivity analysis: the (layer, dtype) rows, the HAWQ-v2
rows, the three rankings (empirical KL, weight-only KL, Hessian), their agreement
(Spearman's rho, Kendall's tau, top-1) and the figure. Filled by
``quantexp.quant.sensitivity.run_sensitivity`` (and by the rebuild-per-layer
reference in ``sensitivity_reference``); read by the solver and the method."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


def kl_divergence(reference_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """Mean KL(softmax(reference) || softmax(logits)) per item, in nats."""
    return float(F.kl_div(F.log_softmax(logits.float(), -1), F.log_softmax(reference_logits.float(), -1),
                          log_target=True, reduction="batchmean"))


@dataclass
class SensitivityReport:
    layers: list[str]
    reference_dtype: str
    base: dict[str, float]
    rows: list[dict[str, Any]] = field(default_factory=list)      # per (layer, dtype)
    hessian: list[dict[str, Any]] = field(default_factory=list)   # per layer
    agreement: dict[str, float] = field(default_factory=dict)
    figure: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)           # how it was computed (timings, replay)

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
                **{f"sensitivity.{k}": v for k, v in self.agreement.items()},
                **{f"sensitivity.{k}": v for k, v in self.facts.items()}}

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


def agreement_of(report: SensitivityReport) -> dict[str, float]:
    """Empirical vs Hessian, and weight-only vs Hessian (``weight_only_`` keys)."""
    out = rank_agreement(report.ranking("empirical"), report.ranking("hessian"))
    out.update({f"weight_only_{k}": v for k, v in rank_agreement(
        report.ranking("weight_only"), report.ranking("hessian")).items()})
    return out


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


__all__ = ["SensitivityReport", "agreement_of", "kl_divergence", "plot_sensitivity", "rank_agreement"]
