"""The one place that orders the steps of an experiment.

config -> hardware probe -> fp32 model + data -> calibration -> method ->
export (artifact saved and loaded back) -> evaluate + benchmark the loaded
artifact (and the fp32 model through the same exporter) -> compare -> results.

Nothing here knows a specific method, model or exporter: they come from
registries. Logging to MLflow happens through the ``RunLogger`` handed in.
"""

from __future__ import annotations

import contextlib
import random
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from quantexp.analysis.accuracy import accuracy, compare_predictions
from quantexp.bench.latency import measure_latency
from quantexp.bench.memory import PeakRSSSampler, process_peak_rss_mb
from quantexp.bench.size import bits_per_parameter, path_size_bytes
from quantexp.config import ExperimentConfig
from quantexp.exporters import Exported, get_exporter
from quantexp.hardware import HostInfo, probe_host
from quantexp.methods import get_method
from quantexp.methods.calibration import draw_calibration, summarize
from quantexp.models import load_model
from quantexp.models.base import ModelBundle
from quantexp.runtimes import TorchRuntime, predict


class StageTimer:
    """Wall time per named stage, in the order the stages ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run(exp: ExperimentConfig, output_dir: Path, cache_dir: Path, log=None) -> dict[str, Any]:
    """Run one experiment; returns the results dict that is also written as results.json."""
    stages = StageTimer()
    with stages("probe"):
        host = probe_host(exp.hardware)
    if log is not None:
        log.set_tags(host.tags())
    seed_everything(exp.seed)

    with stages("load_model"):
        bundle = load_model(exp.model, exp.seed, cache_dir)
    method_cls = get_method(exp.method.name)
    exporter = get_exporter(exp.exporter.name)(exp.exporter, host)

    calibration, calibration_stats = None, {}
    if method_cls.needs_calibration:
        cal_cfg = exp.method.calibration
        seed = exp.seed if cal_cfg.seed is None else cal_cfg.seed
        calibration = draw_calibration(bundle.train, bundle.test, cal_cfg.size, seed)
        calibration_stats = summarize(calibration)

    with stages("quantize"):
        quantized = method_cls(exp.method, exp.precision, host).quantize(bundle, calibration)

    artifacts = output_dir / "artifacts"
    is_baseline = exp.method.name == "fp32"
    candidates: dict[str, dict[str, Any]] = {}

    # The reference predictions are the fp32 model's, deployed through the same
    # exporter when it is measured (so both rows come from the same runtime).
    if exp.compare_fp32 and not is_baseline:
        with stages("measure_fp32"):
            candidates["fp32"], fp32_preds = _measure(bundle, bundle.model, exporter, artifacts,
                                                      "fp32", exp, host)
    with stages("measure_" + exp.method.name):
        candidates[exp.method.name], preds = _measure(bundle, quantized.model, exporter, artifacts,
                                                      exp.method.name, exp, host)
    if is_baseline:
        fp32_preds = preds
    elif "fp32" not in candidates:
        with stages("evaluate_fp32"):
            fp32_preds = predict(TorchRuntime(bundle.model), bundle.test.inputs,
                                 exp.eval.batch_size, desc="fp32 eval")

    labels = bundle.test.labels.numpy()
    comparison = compare_predictions(preds, fp32_preds, labels, n_boot=exp.eval.bootstrap,
                                     confidence=exp.eval.confidence, seed=exp.seed)
    if "fp32" in candidates:
        base, cand = candidates["fp32"], candidates[exp.method.name]
        comparison["speedup_p50"] = base["latency"]["p50_ms"] / cand["latency"]["p50_ms"]
        comparison["size_ratio"] = cand["size_bytes"] / base["size_bytes"]
    gate = _quality_gate(comparison, exp.eval.max_accuracy_drop)

    results = {
        "model": {
            "name": bundle.name, "family": bundle.family, "num_parameters": bundle.num_parameters,
            "from_cache": bundle.from_cache, "load_time_s": bundle.load_time_s,
            "train_time_s": bundle.train_time_s, "n_train": len(bundle.train),
            "n_test": len(bundle.test), **{k: v for k, v in bundle.info.items() if k != "history"},
        },
        "method": {"name": exp.method.name, "precision": exp.precision.name,
                   "quantize_time_s": stages.seconds["quantize"], **quantized.info},
        "calibration": calibration_stats,
        "candidates": candidates,
        "comparison": comparison,
        "gate": gate,
        "host": host.to_dict(),
        "stages_s": stages.seconds,
        "process_peak_rss_mb": process_peak_rss_mb(),
        "objective": comparison["accuracy"],
    }
    if log is not None:
        _log_results(log, results)
    return results


def _measure(bundle: ModelBundle, model: torch.nn.Module, exporter, artifacts: Path, tag: str,
             exp: ExperimentConfig, host: HostInfo) -> tuple[dict[str, Any], np.ndarray]:
    """Export ``model``, then evaluate and time the loaded artifact."""
    exported: Exported = exporter.export(model, bundle, artifacts, tag)
    preds = predict(exported.runtime, bundle.test.inputs, exp.eval.batch_size, desc=f"{tag} eval")
    batch = bundle.example_inputs(exp.bench.batch_size)
    b = exp.bench
    with PeakRSSSampler() as memory:
        latency = measure_latency(lambda: exported.runtime(*batch), batch_size=len(batch[0]),
                                  warmup=b.warmup, min_iters=b.min_iters, min_seconds=b.min_seconds,
                                  max_seconds=b.max_seconds, noisy_cv_pct=b.noisy_cv_pct)
    result = {
        "runtime": exported.runtime.kind,
        "artifact": str(exported.artifact),
        "accuracy": accuracy(preds, bundle.test.labels.numpy()),
        "latency": latency.summary(),
        "latency_raw_ms": latency.raw_ms,
        "peak_rss_mb": memory.peak_mb,
        "size_bytes": path_size_bytes(exported.artifact),
        "bits_per_param": bits_per_parameter(model.state_dict(), bundle.num_parameters),
        "export_time_s": exported.export_time_s,
        "artifact_load_time_s": exported.load_time_s,
        "threads": host.threads,
        **{f"export.{k}": v for k, v in exported.info.items()},
    }
    return result, preds


def _quality_gate(comparison: dict[str, float], max_drop: float | None) -> dict[str, Any]:
    """A gate failure marks the run; it never hides the numbers."""
    if max_drop is None:
        return {"max_accuracy_drop": None, "passed": None}
    drop_points = -100.0 * comparison["accuracy_delta"]
    return {"max_accuracy_drop": max_drop, "accuracy_drop_points": drop_points,
            "passed": drop_points <= max_drop}


def metrics_of(results: dict[str, Any]) -> dict[str, float]:
    """The flat metric names logged to MLflow (and shown by the summary table)."""
    metrics: dict[str, float] = {}
    for key, value in results["comparison"].items():
        metrics[key] = value
    for label, cand in results["candidates"].items():
        prefix = "" if label != "fp32" or results["method"]["name"] == "fp32" else "fp32."
        for key, value in cand["latency"].items():
            metrics[f"{prefix}latency.{key}"] = value
        for key in ("accuracy", "peak_rss_mb", "size_bytes", "bits_per_param", "export_time_s",
                    "artifact_load_time_s"):
            metrics[f"{prefix}{key}"] = cand[key]
    for stage, seconds in results["stages_s"].items():
        metrics[f"time.{stage}_s"] = seconds
    metrics["time.quantize_s"] = results["method"]["quantize_time_s"]
    metrics["time.model_load_s"] = results["model"]["load_time_s"]
    metrics.update({k: v for k, v in results["calibration"].items()})
    metrics["process_peak_rss_mb"] = results["process_peak_rss_mb"]
    if results["gate"]["passed"] is not None:
        metrics["gate.passed"] = float(results["gate"]["passed"])
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, bool, np.number))
            and v is not None}


def _log_results(log, results: dict[str, Any]) -> None:
    log.log_metrics(metrics_of(results))
    log.log_params({f"result.method.{k}": v for k, v in results["method"].items()
                    if not isinstance(v, (dict, list))})
    log.set_tags({"quantexp.gate": {None: "not set", True: "passed", False: "FAILED"}[
        results["gate"]["passed"]]})


__all__ = ["run", "metrics_of", "StageTimer"]
