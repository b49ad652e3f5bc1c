"""``+scenario=drift``: the loaded cascade on a drifting stream, with and without the
shadow-traffic controller.

The stream is the test set in order (repeated when the windows ask for more items),
cut into windows; window w carries noise of strength ``noise_max * w / (windows - 1)``:
Gaussian noise on the inputs scaled to [0, 1] by the range the router calibrated on
(for MNIST, on pixels), clipped back to that range so the range router does not
simply catch it all; for text, that share of the tokens replaced by tokens of the
training vocabulary (word substitution, which the out-of-vocabulary router does not
see). Both arms see the same noisy items: "fixed" keeps the calibrated threshold,
"controller" re-solves it after every window from a shadow sample also answered by
fp32. fp32 answers every item as well, for scoring only (true agreement, true
accuracy); the controller never sees those answers.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantexp.progress import track
from quantexp.serving.shadow import ShadowController

ARMS = ("fixed", "controller")


def noisy_window(inputs: tuple[torch.Tensor, ...], strength: float, rng: np.random.Generator,
                 value_range: tuple[float, float], vocabulary: np.ndarray | None) -> tuple[torch.Tensor, ...]:
    """A copy of ``inputs`` with noise of ``strength`` (0: unchanged)."""
    if strength <= 0:
        return inputs
    if len(inputs) == 2:  # text: substitute tokens inside each text (not [CLS]/[SEP]/padding)
        ids, mask = inputs[0].clone(), inputs[1]
        lengths = mask.sum(dim=1).numpy()
        for row, length in enumerate(lengths):
            inner = np.arange(1, max(int(length) - 1, 1))
            pick = inner[rng.random(len(inner)) < strength]
            if len(pick):
                ids[row, pick] = torch.as_tensor(rng.choice(vocabulary, size=len(pick)), dtype=ids.dtype)
        return ids, mask
    low, high = value_range
    x = inputs[0].numpy()
    unit = (x - low) / (high - low)
    unit = np.clip(unit + rng.normal(0.0, strength, size=unit.shape), 0.0, 1.0)
    return (torch.as_tensor((unit * (high - low) + low).astype(x.dtype)),)


def _text_vocabulary(train) -> np.ndarray:
    ids, mask = train.inputs
    inner = mask.clone()
    inner[:, 0] = 0  # [CLS]
    inner[torch.arange(len(ids)), mask.sum(dim=1) - 1] = 0  # [SEP]
    return np.unique(ids[inner > 0].numpy())


@torch.inference_mode()
def _serve_window(module, inputs, batch_size: int) -> tuple[dict[str, np.ndarray], list[float]]:
    names = ("logits", "low_logits", "confidence", "escalated", "routed")
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    latencies = []
    n = int(inputs[0].shape[0])
    for start in range(0, n, batch_size):
        batch = tuple(x[start:start + batch_size] for x in inputs)
        t0 = time.perf_counter()
        out = module.decide(*batch)
        latencies.append((time.perf_counter() - t0) * 1e3)
        for name, part in zip(names, out):
            parts[name].append(part.numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}, latencies


@torch.inference_mode()
def _predict(fn, inputs, batch_size: int) -> np.ndarray:
    n = int(inputs[0].shape[0])
    return np.concatenate([torch.as_tensor(fn(*(x[s:s + batch_size] for x in inputs))).argmax(dim=1).numpy()
                           for s in range(0, n, batch_size)])


def run_drift(module, reference, bundle, cfg, exp, log) -> dict[str, Any]:
    test, n_test = bundle.test, len(bundle.test)
    fp32 = reference.runtime if reference is not None and reference.runtime is not None else bundle.model
    start_threshold = float(module.threshold)
    router = getattr(module, "router", None)
    value_range = (float(router.low), float(router.high)) if hasattr(router, "low") else (
        float(bundle.train.inputs[0].min()), float(bundle.train.inputs[0].max()))
    vocabulary = _text_vocabulary(bundle.train) if len(test.inputs) == 2 else None
    controller = ShadowController(start_threshold, cfg.target_agreement, cfg.pool, cfg.min_pool, cfg.safety_sd)
    thresholds = {"fixed": start_threshold, "controller": start_threshold}
    rows: list[dict[str, Any]] = []
    met = dict.fromkeys(ARMS, 0)
    try:
        for w in track(range(cfg.windows), f"drift windows ({len(ARMS)} arms each)"):
            strength = cfg.noise_max * w / max(cfg.windows - 1, 1)
            rng = np.random.default_rng([exp.seed, w])
            items = (np.arange(w * cfg.window, (w + 1) * cfg.window) % n_test)
            clean = tuple(x[torch.as_tensor(items)] for x in test.inputs)
            inputs = noisy_window(clean, strength, rng, value_range, vocabulary)
            labels = test.labels.numpy()[items]
            fp32_pred = _predict(fp32, inputs, cfg.batch_size)  # scoring only
            shadow = rng.random(cfg.window) < cfg.shadow
            common = {"window": w, "noise": strength, "fp32_accuracy": float((fp32_pred == labels).mean())}
            for arm in ARMS:
                module.threshold.fill_(thresholds[arm])
                parts, latencies = _serve_window(module, inputs, cfg.batch_size)
                pred, low_pred = parts["logits"].argmax(axis=1), parts["low_logits"].argmax(axis=1)
                agreement = float((pred == fp32_pred).mean())
                row = {**common, "arm": arm, "threshold": thresholds[arm],
                       "escalated_share": float(parts["escalated"].mean()),
                       "true_accuracy": float((pred == labels).mean()), "true_agreement": agreement,
                       "met": agreement >= cfg.target_agreement,
                       "latency_p50_ms": float(np.percentile(latencies, 50)),
                       "latency_mean_ms": float(np.mean(latencies)), "shadow_items": 0}
                if arm == "controller":
                    # The shadow items' fp32 answers are all the controller learns.
                    controller.observe(parts["confidence"][shadow], low_pred[shadow] == fp32_pred[shadow],
                                       forced=parts["routed"][shadow])
                    # None until a shadow item was seen (results.json has no NaN)
                    row.update(shadow_items=int(shadow.sum()), pool_items=len(controller),
                               agreement_estimate=controller.estimate())
                    thresholds[arm] = controller.update()
                met[arm] += int(row["met"])
                rows.append(row)
                if log is not None:
                    log.log_metrics({f"drift.{arm}.{k}": v for k, v in row.items()
                                     if k not in ("arm", "window") and v is not None}, step=w)
    finally:
        module.threshold.fill_(start_threshold)
    summary = {"drift.windows": cfg.windows, "drift.window_items": cfg.window,
               "drift.target_agreement": cfg.target_agreement, "drift.shadow_share": cfg.shadow,
               "drift.windows_met.controller": met["controller"], "drift.windows_met.fixed": met["fixed"]}
    for arm in ARMS:  # what meeting (or missing) the target cost: escalations, agreement
        mine = [r for r in rows if r["arm"] == arm]
        summary[f"drift.mean_escalated_share.{arm}"] = float(np.mean([r["escalated_share"] for r in mine]))
        summary[f"drift.mean_agreement.{arm}"] = float(np.mean([r["true_agreement"] for r in mine]))
        summary[f"drift.min_agreement.{arm}"] = float(np.min([r["true_agreement"] for r in mine]))
    # the summary's numbers reach MLflow as method.* metrics (the pipeline logs them)
    return {**summary, "tables": {"drift_windows": rows}, "figures": {"drift": str(_plot(rows, cfg))}}


def _plot(rows: list[dict[str, Any]], cfg) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(3, 1, figsize=(7, 8), sharex=True)
    for arm, style in zip(ARMS, ("--", "-")):
        mine = [r for r in rows if r["arm"] == arm]
        w = [r["window"] for r in mine]
        axes[0].plot(w, [100 * r["true_agreement"] for r in mine], style, marker="o", label=f"{arm}: true")
        if arm == "controller":
            estimates = [np.nan if r["agreement_estimate"] is None else 100 * r["agreement_estimate"] for r in mine]
            axes[0].plot(w, estimates, ":", marker="x", label="controller: shadow estimate")
        axes[1].plot(w, [r["threshold"] for r in mine], style, marker="o", label=arm)
        axes[2].plot(w, [100 * r["escalated_share"] for r in mine], style, marker="o", label=arm)
    axes[0].axhline(100 * cfg.target_agreement, color="red", lw=0.8, label="target")
    axes[0].set_ylabel("agreement with fp32 %")
    axes[1].set_ylabel("threshold")
    axes[2].set_ylabel("escalated %")
    axes[2].set_xlabel(f"window ({cfg.window} items; noise 0 -> {cfg.noise_max:g})")
    axes[2].xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(tempfile.mkdtemp(prefix="quantexp-drift-")) / "drift.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["ARMS", "noisy_window", "run_drift"]
