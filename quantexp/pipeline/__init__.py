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

from quantexp import progress
from quantexp.analysis.accuracy import compare_predictions
from quantexp.bench.forks import ForkServer, shared_fork_server
from quantexp.bench.memory import process_peak_rss_mb
from quantexp.config import ExperimentConfig
from quantexp.exporters import get_exporter
from quantexp.files import atomic_write_csv
from quantexp.hardware import probe_host
from quantexp.methods import get_method
from quantexp.models import load_model
from quantexp.pipeline.measure import evaluate, time_candidates
from quantexp.pipeline.record import (
    PREDICTIONS,
    log_results,
    metrics_of,
    objective_values,
    quality_gate,
    save_predictions,
)
from quantexp.pipeline.reference import fp32_reference
from quantexp.quant.calibration import draw_calibration, summarize
from quantexp.runtimes import TorchRuntime, predict


class StageTimer:
    """Wall time per named stage, in the order the stages ran; each stage is also a line
    of the run's progress display (``quantexp.progress``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str, shown_as: str | None = None) -> Iterator[None]:
        start = time.perf_counter()
        try:
            with progress.stage(shown_as or name.replace("_", " ")):
                yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run(exp: ExperimentConfig, output_dir: Path, cache_dir: Path, log=None,
        reference_cache: Path | None = None) -> dict[str, Any]:
    """Run one experiment; returns the results dict that is also written as results.json.

    ``reference_cache``: a sweep's folder for the fp32 reference (exported and evaluated
    by the first job that needs it, re-timed by every job; ``pipeline.reference``)."""
    # Forked before any torch work, so that its forks can time (bench/forks.py: why)
    forks = shared_fork_server() if exp.bench.processes > 1 and exp.hardware.device == "cpu" else None
    with progress.display():
        return _run(exp, output_dir, cache_dir, log, reference_cache, forks)


def _run(exp: ExperimentConfig, output_dir: Path, cache_dir: Path, log,
         reference_cache: Path | None, forks: ForkServer | None) -> dict[str, Any]:
    stages = StageTimer()
    with stages("probe"):
        host = probe_host(exp.hardware)
    if log is not None:
        log.set_tags(host.tags())
    seed_everything(exp.seed)

    with stages("load_model"):
        bundle = load_model(exp.model, exp.seed, cache_dir)
    if log is not None:
        _log_datasets(log, exp, bundle)
    method_cls = get_method(exp.method.name)
    method = method_cls(exp.method, exp.precision, host)
    # Methods that train (qat, qat_finetune) log per-step/per-epoch metrics to this run.
    method.log = log
    # Methods that time kernels per layer (mixed) cache them here, at the timed batch size.
    method.cache_dir, method.bench_batch_size = cache_dir, exp.bench.batch_size
    # ... and those that time whole models against each other (mixed vs uniform int8) use
    # the run's timing settings
    method.bench_timing = exp.bench.interleaved_timing()
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
    label = exp.method.name
    is_baseline = label == "fp32"
    candidates: dict[str, dict[str, Any]] = {}
    preds: dict[str, np.ndarray | None] = {}
    not_measured: dict[str, str] = {}
    timed = {}

    # fp32 goes through the same exporter as the candidate, so both rows come
    # from the same runtime (ORT fp32 vs ORT int8, torch vs torch, ...).
    fp32_exported = None
    if (exp.compare_fp32 and not is_baseline) or method.stage == "artifact":
        def export_and_evaluate(folder: Path):
            with stages("export_fp32"):
                exported = exporter.export(bundle.model, bundle, folder, "fp32", calibration=calibration)
            with stages("evaluate_fp32"):
                return (exported, *evaluate(bundle, exported, bundle.model, "fp32", exp, host, not_measured))

        fp32_exported, fp32_cand, fp32_preds, cached = fp32_reference(
            exp, bundle.model, exporter, reference_cache, artifacts, export_and_evaluate)
        if exp.compare_fp32 and not is_baseline:
            candidates["fp32"], preds["fp32"] = fp32_cand, fp32_preds
            timed["fp32"] = (fp32_exported, fp32_cand)
    if method.stage == "model":
        with stages("quantize"):
            quantized = method.quantize(bundle, calibration)
        with stages("export"):
            exported = exporter.export(quantized.model, bundle, artifacts, label, calibration=calibration)
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
    if "param_bits" in info:  # stored bits the artifact's state_dict cannot show (a scripted cascade)
        exported.param_bits = info.pop("param_bits")
    tables = info.pop("tables", {})
    # ... and figures: {name: path of an image} -> <output_dir>/figures + MLflow artifacts.
    figures = info.pop("figures", {})
    with stages("evaluate_" + label):
        candidates[label], preds[label] = evaluate(bundle, exported, model_for_bits, label, exp, host,
                                                   not_measured)
    timed[label] = (exported, candidates[label])
    runnable = [name for name, (exported, _) in timed.items() if exported.runtime is not None]
    interleaved = ""
    if len(runnable) == 2:
        interleaved = " (interleaved" + (f", {exp.bench.processes} processes)" if forks else ")")
    with stages("timing", "timing " + " vs ".join(runnable) + interleaved):
        speedup = time_candidates(bundle, timed, exp, host, forks)
    deployment = None
    if exp.deployment is not None:
        with stages("deployment", f"deployment {exp.deployment.name}: serving {label} in a limited process"):
            deployment = deploy_candidate(exp, bundle, exported, label, host, output_dir)
    if "fp32" in candidates and not is_baseline:
        # after the timing keys (Candidate.extra comes last in results.json)
        candidates["fp32"]["from_sweep_cache"] = cached
    if is_baseline:
        preds["fp32"] = preds[label]
    elif preds.get("fp32") is None:
        # No measurable fp32 artifact: the in-memory fp32 model is the reference.
        with stages("evaluate_fp32"):
            preds["fp32"] = predict(TorchRuntime(bundle.model), bundle.test.inputs,
                                    exp.eval.batch_size, desc="fp32 eval")

    comparison: dict[str, Any] = {}
    if preds[label] is not None:
        labels = bundle.test.labels.numpy()
        comparison = compare_predictions(preds[label], preds["fp32"], labels,
                                         n_boot=exp.eval.bootstrap, confidence=exp.eval.confidence,
                                         seed=exp.seed)
    if "fp32" in candidates:
        comparison.update(speedup_fields(speedup, candidates["fp32"], candidates[label]))
        comparison["size_ratio"] = candidates[label]["size_bytes"] / candidates["fp32"]["size_bytes"]
    gate = quality_gate(comparison, exp.eval.max_accuracy_drop)
    # A method may measure more on its own loaded artifact (method=cascade: the share it
    # escalates, its low-precision model alone, its drift and SLO scenarios).
    if hasattr(method, "after_measure"):
        # shown under the method's own title (a scenario can take minutes: say which)
        with stages("after_measure", getattr(method, "after_measure_title", None)):
            extra = dict(method.after_measure(bundle, exported, fp32_exported, preds, exp))
        tables.update(extra.pop("tables", {}))
        figures.update(extra.pop("figures", {}))
        info.update(extra)
    # A method solving for a budget (method=mixed, strategy=auto) re-checks it on the
    # measured numbers: the prediction it solved with is not the answer.
    check_measured = getattr(method, "check_measured", None)
    budget = check_measured(candidates[label], comparison) if check_measured else {}

    results = {
        "model": {
            "name": bundle.name, "family": bundle.family, "num_parameters": bundle.num_parameters,
            "from_cache": bundle.from_cache, "load_time_s": bundle.load_time_s,
            "train_time_s": bundle.train_time_s, "n_train": len(bundle.train),
            "n_test": len(bundle.test), **{k: v for k, v in bundle.info.items() if k != "history"},
        },
        "method": {"name": label, "precision": exp.precision.name,
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
    if speedup is not None:
        results["interleaved"] = speedup
    if deployment is not None:
        results["deployment"] = deployment
    results["objective"] = objective_values(results, label, exp.objectives)
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
        log_results(log, results, output_dir)
    return results


def deploy_candidate(exp: ExperimentConfig, bundle, exported, label: str, host, output_dir: Path) -> dict[str, Any]:
    """The method's artifact served under ``exp.deployment`` (quantexp.deployment): the
    profile, and per candidate its measurement and fit verdict."""
    from quantexp.deployment.runner import deploy

    profile = exp.deployment
    inputs = [x.numpy() for x in bundle.example_inputs(profile.batch_size)]
    result = deploy(profile, label, Path(exported.artifact), inputs, output_dir / "deployment",
                    engine=host.quantized_engine, seed=exp.seed,
                    graph_optimization=getattr(exp.exporter, "graph_optimization", None) and
                    getattr(exp.exporter.graph_optimization, "value", exp.exporter.graph_optimization))
    return {"profile": {k: getattr(v, "value", v) for k, v in vars(profile).items()},
            "candidates": {label: result}}


def _log_datasets(log, exp: ExperimentConfig, bundle) -> None:
    """The test split (what every figure is measured on) as the run's MLflow input."""
    source = {"quantexp.dataset": exp.model.dataset, "quantexp.family": bundle.family,
              "quantexp.split": f"split_seed {exp.model.split_seed}, test_fraction {exp.model.test_fraction}"}
    features = {name: x.numpy() for name, x in zip(bundle.input_names, bundle.test.inputs)}
    log.log_dataset(f"{exp.model.dataset}-test", features, bundle.test.labels.numpy(), "test", source)


def speedup_fields(speedup: dict[str, Any] | None, fp32: dict[str, Any], cand: dict[str, Any]) -> dict[str, Any]:
    """The comparison's speed-up keys: the interleaved ratio with its CI and verdict, or,
    when the two were not timed together, the plain ratio of p50s (no CI)."""
    if speedup is not None:
        return {"speedup_p50": speedup["ratio"], "speedup_ci_low": speedup["ci_low"],
                "speedup_ci_high": speedup["ci_high"], "speedup_verdict": speedup["verdict"],
                "speedup_noisy": float(speedup["noisy"])}
    if fp32["latency"] and cand["latency"]:
        return {"speedup_p50": fp32["latency"]["p50_ms"] / cand["latency"]["p50_ms"]}
    return {}


__all__ = ["PREDICTIONS", "StageTimer", "metrics_of", "objective_values", "run", "save_predictions",
           "seed_everything", "speedup_fields"]
