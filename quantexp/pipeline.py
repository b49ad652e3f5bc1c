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
from quantexp.bench.memory import CudaPeakMemory, PeakRSSSampler, process_peak_rss_mb
from quantexp.bench.size import bits_per_parameter, path_size_bytes
from quantexp.config import ExperimentConfig
from quantexp.exporters import Exported, get_exporter
from quantexp.files import atomic_write, atomic_write_csv
from quantexp.hardware import HostInfo, probe_host
from quantexp.methods import get_method
from quantexp.models import load_model
from quantexp.models.base import ModelBundle
from quantexp.quant.calibration import draw_calibration, summarize
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
    method = method_cls(exp.method, exp.precision, host)
    # Methods that train (qat, qat_finetune) log per-step/per-epoch metrics to this run.
    method.log = log
    # A model this method cannot handle (e.g. no Linear layers for bitsandbytes) is
    # refused now, before calibration, export or quantization work.
    method.check_model(bundle)
    exporter = get_exporter(exp.exporter.name)(exp.exporter, host)

    calibration, calibration_stats = None, {}
    if method_cls.needs_calibration:
        cal_cfg = exp.method.calibration
        seed = exp.seed if cal_cfg.seed is None else cal_cfg.seed
        calibration = draw_calibration(bundle.train, bundle.test, cal_cfg.size, seed)
        calibration_stats = summarize(calibration)

    artifacts = output_dir / "artifacts"
    is_baseline = exp.method.name == "fp32"
    candidates: dict[str, dict[str, Any]] = {}
    preds: dict[str, np.ndarray | None] = {}
    not_measured: dict[str, str] = {}

    # fp32 goes through the same exporter as the candidate, so both rows come
    # from the same runtime (ORT fp32 vs ORT int8, torch vs torch, ...).
    fp32_exported = None
    if (exp.compare_fp32 and not is_baseline) or method.stage == "artifact":
        with stages("export_fp32"):
            fp32_exported = exporter.export(bundle.model, bundle, artifacts, "fp32",
                                            calibration=calibration)
    if method.stage == "model":
        with stages("quantize"):
            quantized = method.quantize(bundle, calibration)
        with stages("export"):
            exported = exporter.export(quantized.model, bundle, artifacts, exp.method.name,
                                       calibration=calibration)
        info, model_for_bits = quantized.info, quantized.model
    else:  # the method rewrites the deployed fp32 artifact (e.g. ONNX Runtime quantization)
        with stages("quantize"):
            path, info = method.quantize_artifact(fp32_exported, bundle, calibration, artifacts)
        with stages("export"):
            exported = exporter.load(path)
        model_for_bits = None

    # Methods may return tables (e.g. per-layer SQNR) under info["tables"]:
    # {name: [row dict, ...]}; they are written as CSV artifacts, not flattened.
    info = dict(info)
    tables = info.pop("tables", {})
    # ... and figures: {name: path of an image} -> <output_dir>/figures + MLflow artifacts.
    figures = info.pop("figures", {})
    if fp32_exported is not None and exp.compare_fp32 and not is_baseline:
        with stages("measure_fp32"):
            candidates["fp32"], preds["fp32"] = _measure(bundle, fp32_exported, bundle.model, "fp32",
                                                         exp, host, not_measured)
    with stages("measure_" + exp.method.name):
        candidates[exp.method.name], preds[exp.method.name] = _measure(
            bundle, exported, model_for_bits, exp.method.name, exp, host, not_measured)
    if is_baseline:
        preds["fp32"] = preds[exp.method.name]
    elif preds.get("fp32") is None:
        # No measurable fp32 artifact: the in-memory fp32 model is the reference.
        with stages("evaluate_fp32"):
            preds["fp32"] = predict(TorchRuntime(bundle.model), bundle.test.inputs,
                                    exp.eval.batch_size, desc="fp32 eval")

    comparison: dict[str, Any] = {}
    if preds[exp.method.name] is not None:
        labels = bundle.test.labels.numpy()
        comparison = compare_predictions(preds[exp.method.name], preds["fp32"], labels,
                                         n_boot=exp.eval.bootstrap, confidence=exp.eval.confidence,
                                         seed=exp.seed)
    if "fp32" in candidates:
        base, cand = candidates["fp32"], candidates[exp.method.name]
        if base["latency"] and cand["latency"]:
            comparison["speedup_p50"] = base["latency"]["p50_ms"] / cand["latency"]["p50_ms"]
        comparison["size_ratio"] = cand["size_bytes"] / base["size_bytes"]
    gate = _quality_gate(comparison, exp.eval.max_accuracy_drop)
    # A method solving for a budget (method=mixed, strategy=auto) re-checks it on the
    # measured numbers: the prediction it solved with is not the answer.
    check_measured = getattr(method, "check_measured", None)
    budget = check_measured(candidates[exp.method.name], comparison) if check_measured else {}

    results = {
        "model": {
            "name": bundle.name, "family": bundle.family, "num_parameters": bundle.num_parameters,
            "from_cache": bundle.from_cache, "load_time_s": bundle.load_time_s,
            "train_time_s": bundle.train_time_s, "n_train": len(bundle.train),
            "n_test": len(bundle.test), **{k: v for k, v in bundle.info.items() if k != "history"},
        },
        "method": {"name": exp.method.name, "precision": exp.precision.name,
                   "quantize_time_s": stages.seconds["quantize"], **info},
        "calibration": calibration_stats,
        "tables": tables,
        "candidates": candidates,
        "comparison": comparison,
        "gate": gate,
        "not_measured": not_measured,
        "host": host.to_dict(),
        "stages_s": stages.seconds,
        "process_peak_rss_mb": process_peak_rss_mb(),
        "budget": budget,
    }
    results["objective"] = objective_values(results, exp.method.name, exp.objectives)
    # Per-item test predictions of every candidate, so that two runs (e.g. PTQ vs QAT) can
    # be compared paired over the same items (quantexp/report/ptq_vs_qat.py).
    results["predictions_path"] = str(save_predictions(output_dir / PREDICTIONS, bundle.test, preds))
    for name, rows in tables.items():
        atomic_write_csv(output_dir / "tables" / f"{name}.csv", rows)
    results["figures"] = {}
    for name, src in figures.items():
        import shutil

        dst = output_dir / "figures" / f"{name}{Path(src).suffix}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        results["figures"][name] = str(dst)
    if log is not None:
        _log_results(log, results, output_dir)
    return results


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


def _measure(bundle: ModelBundle, exported: Exported, model: torch.nn.Module | None, tag: str,
             exp: ExperimentConfig, host: HostInfo,
             not_measured: dict[str, str]) -> tuple[dict[str, Any], np.ndarray | None]:
    """Evaluate and time the loaded artifact. An artifact this host cannot run
    (Core ML on Linux) keeps its size and conversion facts; accuracy and latency
    are recorded as not measured, with the reason - never estimated."""
    if exported.param_bits is not None:
        bits = exported.param_bits / bundle.num_parameters
    else:
        bits = bits_per_parameter(model.state_dict(), bundle.num_parameters)
    result = {
        "runtime": _runtime_name(exported),
        "artifact": str(exported.artifact),
        "accuracy": None,
        "latency": {},
        "latency_raw_ms": [],
        "peak_rss_mb": None,
        "peak_gpu_mb": None,
        "size_bytes": path_size_bytes(exported.artifact),
        "bits_per_param": bits,
        "export_time_s": exported.export_time_s,
        "artifact_load_time_s": exported.load_time_s,
        "threads": host.threads,
        **{f"export.{k}": v for k, v in exported.info.items()},
        # files the exporter wrote beside the artifact (e.g. an ANE compatibility report)
        "reports": {name: str(path) for name, path in exported.reports.items()},
    }
    if exported.runtime is None:
        reason = exported.not_measured or "no runtime for this artifact on this host"
        for metric in ("accuracy", "latency"):
            not_measured[f"{tag}.{metric}"] = f"not measured on this host: {reason}"
        return result, None
    preds = predict(exported.runtime, bundle.test.inputs, exp.eval.batch_size, desc=f"{tag} eval")
    batch = bundle.example_inputs(exp.bench.batch_size)
    b = exp.bench
    runtime = exported.runtime
    # The runtime says how one call is timed: host wall clock, or CUDA events on a GPU.
    timer = runtime.call_timer()
    with PeakRSSSampler() as memory, CudaPeakMemory(getattr(runtime, "device", "cpu")) as gpu:
        latency = measure_latency(lambda: runtime(*batch), batch_size=len(batch[0]),
                                  warmup=b.warmup, min_iters=b.min_iters, min_seconds=b.min_seconds,
                                  max_seconds=b.max_seconds, noisy_cv_pct=b.noisy_cv_pct,
                                  time_call=timer)
    result.update(accuracy=accuracy(preds, bundle.test.labels.numpy()), latency=latency.summary(),
                  latency_raw_ms=latency.raw_ms, peak_rss_mb=memory.peak_mb, peak_gpu_mb=gpu.peak_mb,
                  timing="wall clock" if timer is None else "cuda events")
    return result, preds


def _runtime_name(exported: Exported) -> str:
    """"torch", "onnxruntime", ... with the device when it is not the CPU ("torch cuda")."""
    if exported.runtime is None:
        return exported.info.get("runtime", "-")
    device = getattr(exported.runtime, "device", "cpu")
    return exported.runtime.kind + ("" if device == "cpu" else f" {device}")


def _quality_gate(comparison: dict[str, float], max_drop: float | None) -> dict[str, Any]:
    """A gate failure marks the run; it never hides the numbers."""
    if max_drop is None or "accuracy_delta" not in comparison:
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
        for key in ("accuracy", "peak_rss_mb", "peak_gpu_mb", "size_bytes", "bits_per_param", "export_time_s",
                    "artifact_load_time_s"):
            if cand[key] is not None:
                metrics[f"{prefix}{key}"] = cand[key]
        # Artifact vs in-memory fp32 model, measured by the exporter (Exported.info parity.*).
        for key, value in cand.items():
            if key.startswith("export.parity."):
                metrics[prefix + key.removeprefix("export.")] = value
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


def _log_results(log, results: dict[str, Any], output_dir: Path) -> None:
    log.log_metrics(metrics_of(results))
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
    for metric, reason in results["not_measured"].items():
        log.mark_not_measured(metric, reason.removeprefix("not measured on this host: "))
    log.log_params({f"result.method.{k}": v for k, v in results["method"].items()
                    if not isinstance(v, (dict, list))})
    log.set_tags({"quantexp.gate": {None: "not set", True: "passed", False: "FAILED"}[
        results["gate"]["passed"]]})


__all__ = ["run", "metrics_of", "StageTimer"]
