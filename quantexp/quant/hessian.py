"""Hutchinson estimate of Hessian traces (HAWQ-v2's per-layer sensitivity score).

``tr(H) = E_v[v^T H v]`` for Rademacher ``v`` (entries +-1); ``H v`` is one
Hessian-vector product (double backward), so the trace of every parameter
group's diagonal block costs one HVP per sample for all groups together.

HAWQ-v2 ranks a layer by ``Omega = tr(H_l) / n_l * ||Q(W_l) - W_l||^2``: the
average curvature of the loss along the layer's weights times the size of the
perturbation quantization makes to them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from quantexp.progress import track


@dataclass
class TraceEstimate:
    trace: float
    std_err: float  # standard error of the mean over samples
    n_samples: int
    n_params: int

    @property
    def per_param(self) -> float:
        return self.trace / max(self.n_params, 1)


def hutchinson_trace(loss_fn: Callable[[], torch.Tensor], groups: Mapping[str, Sequence[torch.Tensor]],
                     n_samples: int = 16, seed: int = 0, rel_tol: float | None = None,
                     min_samples: int = 8, progress: str | None = None,
                     weights: Mapping[str, float] | None = None) -> dict[str, TraceEstimate]:
    """Estimate tr(H_g) of ``loss_fn()`` w.r.t. each group of tensors (which must
    require grad). ``loss_fn`` is called once per sample (it may draw a batch).

    ``n_samples`` is the most probes drawn. With ``rel_tol``, sampling stops early
    (after at least ``min_samples``) once every group's standard error is below
    ``rel_tol * |trace|``. Small layers need many probes: the estimator's variance
    is the sum of the squared off-diagonal Hessian entries, which does not shrink
    with the layer (measured on the CNN: conv1, 160 weights, 1.82 +- 1.57 after
    8 probes, 1.47 +- 0.57 after 64). ``progress``: a bar with this label (at most
    ``n_samples`` steps; it ends early when the estimate stops early).

    ``weights`` ({group: w}, e.g. HAWQ's perturbation / n_params): a group whose score
    ``w * trace`` is small next to the largest score also counts as settled once its
    standard error, on that scale, is below ``rel_tol`` times the largest score. A
    trace near zero (an indefinite Hessian: MiniLM's frozen encoder has 11 of 38
    near-zero traces) has no relative error to converge to, and kept every probe
    running to ``n_samples``; its rank among the negligible ones does not matter."""
    if n_samples < 1:
        raise ValueError("n_samples must be >= 1")
    names = list(groups)
    flat = [t for n in names for t in groups[n]]
    owner = [n for n in names for _ in groups[n]]
    gen = torch.Generator().manual_seed(seed)
    samples: dict[str, list[float]] = {n: [] for n in names}
    probes = range(n_samples) if progress is None else track(range(n_samples), progress, total=n_samples)
    for _ in probes:
        loss = loss_fn()
        grads = torch.autograd.grad(loss, flat, create_graph=True, allow_unused=True)
        vs = [torch.randint(0, 2, t.shape, generator=gen).to(t.dtype) * 2 - 1 for t in flat]
        used = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        hvs = torch.autograd.grad([grads[i] for i in used], [flat[i] for i in used],
                                  grad_outputs=[vs[i] for i in used], allow_unused=True)
        per_group = dict.fromkeys(names, 0.0)
        for i, hv in zip(used, hvs):
            if hv is not None:
                per_group[owner[i]] += float((hv * vs[i]).sum())
        for n in names:
            samples[n].append(per_group[n])
        if rel_tol is not None and len(samples[names[0]]) >= max(min_samples, 2) and \
                _settled(samples, rel_tol, weights):
            break
    out = {}
    for n in names:
        mean, err = _mean_stderr(samples[n])
        out[n] = TraceEstimate(mean, err, len(samples[n]), sum(t.numel() for t in groups[n]))
    return out


def _settled(samples: Mapping[str, Sequence[float]], rel_tol: float, weights: Mapping[str, float] | None) -> bool:
    stats = {n: _mean_stderr(xs) for n, xs in samples.items()}
    top = max((abs(m * weights.get(n, 0.0)) for n, (m, _) in stats.items()), default=0.0) if weights else 0.0
    return all(err <= rel_tol * abs(mean) or (weights is not None and top > 0
                                              and err * abs(weights.get(n, 0.0)) <= rel_tol * top)
               for n, (mean, err) in stats.items())


def _mean_stderr(xs: Sequence[float]) -> tuple[float, float]:
    mean = sum(xs) / len(xs)
    var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1) if len(xs) > 1 else 0.0
    return mean, math.sqrt(var / len(xs))


__all__ = ["TraceEstimate", "hutchinson_trace"]
