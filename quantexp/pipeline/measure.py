"""Measuring one run's artifacts: evaluate each loaded artifact (accuracy, size, memory),
then time them - the fp32 reference and the candidate interleaved in one loop, so that
their ratio (the speed-up) comes with a confidence interval instead of the drift
between two timing phases.

An artifact this host cannot run (Core ML on Linux) keeps its size and conversion
facts; its accuracy and latency are recorded as not measured, with the reason.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from quantexp.analysis.accuracy import accuracy
from quantexp.bench.interleaved import measure_interleaved
from quantexp.bench.latency import LatencyStats, measure_latency
from quantexp.bench.memory import CudaPeakMemory, MpsPeakMemory, PeakRSSSampler
from quantexp.bench.size import bits_per_parameter, path_size_bytes
from quantexp.config import ExperimentConfig
from quantexp.exporters import Exported
from quantexp.hardware import HostInfo
from quantexp.models.base import ModelBundle
from quantexp.runtimes import predict


def evaluate(bundle: ModelBundle, exported: Exported, model: torch.nn.Module | None, tag: str,
             exp: ExperimentConfig, host: HostInfo,
             not_measured: dict[str, str]) -> tuple[dict[str, Any], np.ndarray | None]:
    """The candidate dict of one loaded artifact (everything but its latency, which
    ``time_candidates`` adds) and its test predictions (None when it cannot run here).
    Peak memory is sampled while the artifact evaluates the whole test set."""
    if exported.param_bits is not None:
        bits = exported.param_bits / bundle.num_parameters
    else:
        bits = bits_per_parameter(model.state_dict(), bundle.num_parameters)
    result = {
        "runtime": runtime_name(exported),
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
    runtime = exported.runtime
    device = getattr(runtime, "device", "cpu")
    with PeakRSSSampler() as memory, CudaPeakMemory(device) as gpu, MpsPeakMemory(device) as mps:
        preds = predict(runtime, bundle.test.inputs, exp.eval.batch_size, desc=f"{tag} eval")
    # peak_gpu_mb: CUDA allocator peak, or on mps the Metal driver's unified-memory peak
    result.update(accuracy=accuracy(preds, bundle.test.labels.numpy()), peak_rss_mb=memory.peak_mb,
                  peak_gpu_mb=gpu.peak_mb if gpu.peak_mb is not None else mps.peak_mb)
    return result, preds


def time_candidates(bundle: ModelBundle, timed: dict[str, tuple[Exported, dict[str, Any]]],
                    exp: ExperimentConfig, reference: str = "fp32") -> dict[str, Any] | None:
    """Time every runnable artifact in ``timed`` ({label: (exported, candidate dict)}),
    writing ``latency``, ``latency_raw_ms`` and ``timing`` into each candidate dict.

    With the reference and one other candidate both runnable, they are timed
    interleaved and the speed-up (reference / candidate, with its CI) is returned;
    otherwise each is timed alone and None is returned."""
    runnable = {label: pair for label, pair in timed.items() if pair[0].runtime is not None}
    batch = bundle.example_inputs(exp.bench.batch_size)
    b = exp.bench
    common = dict(batch_size=len(batch[0]), warmup=b.warmup, min_iters=b.min_iters,
                  min_seconds=b.min_seconds, max_seconds=b.max_seconds, noisy_cv_pct=b.noisy_cv_pct)
    others = [label for label in runnable if label != reference]
    if reference in runnable and len(others) == 1:
        ref_rt, cand_rt = runnable[reference][0].runtime, runnable[others[0]][0].runtime
        ref_stats, cand_stats, speedup = measure_interleaved(
            lambda: ref_rt(*batch), lambda: cand_rt(*batch), **common, min_rounds=b.min_rounds,
            drift_stretches=b.drift_stretches,
            noisy_pct=b.noisy_cv_pct, n_boot=exp.eval.bootstrap, confidence=exp.eval.confidence,
            seed=exp.seed, reference_timer=ref_rt.call_timer(), candidate_timer=cand_rt.call_timer())
        _record(runnable[reference][1], ref_stats, ref_rt)
        _record(runnable[others[0]][1], cand_stats, cand_rt)
        return speedup.to_dict()
    for exported, cand in runnable.values():
        runtime = exported.runtime
        stats = measure_latency(lambda rt=runtime: rt(*batch), **common, time_call=runtime.call_timer())
        _record(cand, stats, runtime)
    return None


def _record(cand: dict[str, Any], stats: LatencyStats, runtime) -> None:
    cand.update(latency=stats.summary(), latency_raw_ms=stats.raw_ms,
                timing="wall clock" if runtime.call_timer() is None else "cuda events")


def runtime_name(exported: Exported) -> str:
    """"torch", "onnxruntime", ... with the device when it is not the CPU ("torch cuda")."""
    if exported.runtime is None:
        return exported.info.get("runtime", "-")
    device = getattr(exported.runtime, "device", "cpu")
    return exported.runtime.kind + ("" if device == "cpu" else f" {device}")


__all__ = ["evaluate", "runtime_name", "time_candidates"]
