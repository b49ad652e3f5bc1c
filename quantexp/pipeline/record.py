"""What one run's measurements become: the quality gate, the objective values a sweeper
receives, the per-item predictions file, the flat MLflow metrics and the run's logging.

The gate decides on the confidence interval of the accuracy drop, not on its point
estimate: a drop whose interval straddles the allowed value is "inconclusive", and the
results say so instead of passing or failing on noise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from quantexp.files import atomic_write


def objective_values(results: dict[str, Any], label: str, names: list[str]):
    """What run.py returns to a sweeper: a float for one objective, a tuple for several.
    A value that was not measured makes the job fail (the sweeper records a FAIL)."""
    cand, comp = results["candidates"][label], results["comparison"]
    values = []
    for name in names:
        if name == "accuracy":
            value = comp.get("accuracy")
        elif name == "accuracy_drop":
            value = -100.0 * comp["accuracy_delta"] if "accuracy_delta" in comp else None
        elif name == "latency_ms":
            value = cand["latency"].get("p50_ms") if cand["latency"] else None
        elif name == "size_mb":
            value = cand["size_bytes"] / 1e6
        else:
            raise ValueError(f"unknown objective {name!r}")
        if value is None and len(names) > 1:
            raise RuntimeError(f"objective {name} was not measured on this host")
        values.append(value)
    return values[0] if len(values) == 1 else tuple(values)


PREDICTIONS = "predictions.npz"


def save_predictions(path: Path, test, preds: dict[str, np.ndarray | None]) -> Path:
    """``labels`` and ``ids`` of the test split and one array of predicted classes per
    candidate that was measured (a candidate this host cannot run has none)."""
    arrays = {"labels": test.labels.numpy(), "ids": test.ids.numpy(),
              **{name: np.asarray(p) for name, p in preds.items() if p is not None}}
    return atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


GATE_PASSED, GATE_FAILED, GATE_INCONCLUSIVE = "passed", "failed", "inconclusive"


def quality_gate(comparison: dict[str, float], max_drop: float | None) -> dict[str, Any]:
    """``eval.max_accuracy_drop`` decided on the drop's confidence interval: passed when
    the whole interval is within the allowed drop, failed when the whole interval is
    beyond it, inconclusive (``passed`` None) when it straddles it. A gate failure marks
    the run; it never hides the numbers."""
    if max_drop is None or "accuracy_delta" not in comparison:
        return {"max_accuracy_drop": None, "passed": None}
    drop = -100.0 * comparison["accuracy_delta"]
    # The drop's interval is the delta's, negated (a larger delta is a smaller drop).
    low = -100.0 * comparison.get("accuracy_delta_ci_high", comparison["accuracy_delta"])
    high = -100.0 * comparison.get("accuracy_delta_ci_low", comparison["accuracy_delta"])
    if high <= max_drop:
        verdict, passed = GATE_PASSED, True
    elif low > max_drop:
        verdict, passed = GATE_FAILED, False
    else:
        verdict, passed = GATE_INCONCLUSIVE, None
    return {"max_accuracy_drop": max_drop, "accuracy_drop_points": drop, "accuracy_drop_ci_low": low,
            "accuracy_drop_ci_high": high, "verdict": verdict, "passed": passed}


# MLflow metric names: the method's artifact under "candidate.", the fp32 artifact it was
# compared with under "fp32.", the comparison under "vs_fp32.", so that runs of different
# methods chart on the same keys. Accuracy is in percent, as the terminal shows it.
CANDIDATE, REFERENCE, VERSUS = "candidate.", "fp32.", "vs_fp32."
_VERSUS_NAMES = {  # comparison key -> (metric name, scale)
    "accuracy_delta": ("accuracy_delta_pts", 100.0), "accuracy_delta_ci_low": ("accuracy_delta_ci_low_pts", 100.0),
    "accuracy_delta_ci_high": ("accuracy_delta_ci_high_pts", 100.0), "agreement_fp32": ("agreement_pct", 100.0),
    "mcnemar_p": ("mcnemar_p", 1.0), "mcnemar_b": ("mcnemar_b", 1.0), "mcnemar_c": ("mcnemar_c", 1.0),
    "n_items": ("n_items", 1.0), "speedup_p50": ("speedup", 1.0), "speedup_ci_low": ("speedup_ci_low", 1.0),
    "speedup_ci_high": ("speedup_ci_high", 1.0), "speedup_noisy": ("speedup_noisy", 1.0),
    "size_ratio": ("size_ratio", 1.0),
}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float, bool, np.number)) and value is not None


def candidate_metrics(cand: dict[str, Any], prefix: str) -> dict[str, float]:
    """One artifact's figures: accuracy_pct, latency.*, sizes, memory, export times, parity.*"""
    metrics: dict[str, float] = {}
    if cand["accuracy"] is not None:
        metrics[f"{prefix}accuracy_pct"] = 100.0 * cand["accuracy"]
    for key, value in cand["latency"].items():
        metrics[f"{prefix}latency.{key}"] = value
    for key in ("peak_rss_mb", "peak_gpu_mb", "size_bytes", "bits_per_param", "export_time_s", "artifact_load_time_s"):
        if cand[key] is not None:
            metrics[f"{prefix}{key}"] = cand[key]
    # Artifact vs in-memory fp32 model, measured by the exporter (Exported.info parity.*).
    for key, value in cand.items():
        if key.startswith("export.parity."):
            metrics[prefix + key.removeprefix("export.")] = value
    return metrics


def metrics_of(results: dict[str, Any]) -> dict[str, float]:
    """The flat metric names logged to MLflow (see CANDIDATE, REFERENCE, VERSUS)."""
    label = results["method"]["name"]
    metrics = candidate_metrics(results["candidates"][label], CANDIDATE)
    if label != "fp32" and "fp32" in results["candidates"]:
        metrics.update(candidate_metrics(results["candidates"]["fp32"], REFERENCE))
    for key, value in results["comparison"].items():
        if key in _VERSUS_NAMES and _number(value):
            name, scale = _VERSUS_NAMES[key]
            metrics[VERSUS + name] = scale * value
    for stage, seconds in results["stages_s"].items():
        metrics[f"time.{stage}_s"] = seconds
    metrics["time.model_load_s"] = results["model"]["load_time_s"]
    metrics.update({k: v for k, v in results["calibration"].items()})
    # the method's own numeric facts (layers quantized, SQNR, ...) are metrics, so they chart
    metrics.update({f"method.{k}": v for k, v in results["method"].items() if _number(v)})
    metrics["process_peak_rss_mb"] = results["process_peak_rss_mb"]
    gate = results["gate"]
    if gate["passed"] is not None:
        metrics["gate.passed"] = float(gate["passed"])
    metrics.update(deployment_metrics(results.get("deployment")))
    return {k: float(v) for k, v in metrics.items() if _number(v)}


def deployment_metrics(deployment: dict[str, Any] | None) -> dict[str, float]:
    """deployment.<profile>.<candidate>.{fits, peak_rss_mb, load_s, first_call_ms, latency.*}"""
    metrics: dict[str, float] = {}
    if not deployment:
        return metrics
    profile = deployment["profile"]["name"]
    for label, d in deployment["candidates"].items():
        prefix = f"deployment.{profile}.{label}."
        if d["verdict"]["fits"] is not None:
            metrics[prefix + "fits"] = float(d["verdict"]["fits"])
        for key in ("peak_rss_mb", "rss_after_import_mb", "import_s", "load_s", "first_call_ms"):
            if _number(d.get(key)):
                metrics[prefix + key] = d[key]
        metrics.update({f"{prefix}latency.{k}": v for k, v in (d.get("latency") or {}).items()})
    return metrics


def deployment_tags(deployment: dict[str, Any] | None) -> dict[str, str]:
    """deployment.<profile>.<candidate>: "fits" | "does not fit: <reasons>", and the cap's mechanism."""
    if not deployment:
        return {}
    profile = deployment["profile"]["name"]
    tags = {"quantexp.deployment": profile}
    for label, d in deployment["candidates"].items():
        tags[f"deployment.{profile}.{label}"] = d["verdict"]["summary"][:5000]
        limits = d.get("limits") or {}
        if limits.get("memory_mechanism"):
            tags[f"deployment.{profile}.memory_cap"] = f"{limits['memory_mechanism']} ({limits.get('why')})"[:5000]
    return tags


def mlflow_metric_name(not_measured_key: str, label: str) -> str:
    """results.json's "<label>.<metric>" of a figure not measured -> its MLflow name."""
    owner, _, metric = not_measured_key.partition(".")
    prefix = REFERENCE if owner == "fp32" and label != "fp32" else CANDIDATE
    return prefix + ("accuracy_pct" if metric == "accuracy" else metric)


def log_results(log, results: dict[str, Any], output_dir: Path) -> None:
    log.log_metrics(metrics_of(results))
    # per-item predictions: what `quantexp compare` pairs two runs' accuracy on
    log.log_artifact(Path(results["predictions_path"]))
    for name in results["tables"]:
        log.log_artifact(output_dir / "tables" / f"{name}.csv", "tables")
    for path in results.get("figures", {}).values():
        log.log_artifact(Path(path), "figures")
    for label, cand in results["candidates"].items():
        for path in cand.get("reports", {}).values():
            log.log_artifact(Path(path), f"reports/{label}")
    if results.get("budget"):
        log.log_params({f"budget.{k}": v for k, v in results["budget"].items()})
        log.set_tags({"quantexp.budget": "met" if results["budget"]["met"] else "NOT MET"})
    label = results["method"]["name"]
    for key, reason in results["not_measured"].items():
        log.mark_not_measured(mlflow_metric_name(key, label), reason.removeprefix("not measured on this host: "))
    # what is not a number (the path taken, the observer) stays a param
    log.log_params({f"result.method.{k}": v for k, v in results["method"].items()
                    if not isinstance(v, (dict, list)) and not _number(v)})
    log.set_tags(deployment_tags(results.get("deployment")))
    gate = results["gate"]
    log.set_tags({"quantexp.gate": "not set" if gate["max_accuracy_drop"] is None
                  else gate.get("verdict") or {True: "passed", False: "failed", None: "inconclusive"}[gate["passed"]]})



__all__ = ["CANDIDATE", "PREDICTIONS", "REFERENCE", "VERSUS", "candidate_metrics", "deployment_metrics", "deployment_tags", "metrics_of", "mlflow_metric_name", "objective_values", "quality_gate", "save_predictions", "log_results"]
