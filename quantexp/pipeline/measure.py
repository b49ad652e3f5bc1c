"""Measuring one run's artifacts: evaluate each loaded artifact (accuracy, size, memory),
then time them - the fp32 reference and the candidate interleaved in one loop, so that
their ratio (the speed-up) comes with a confidence interval instead of the drift
between two timing phases.

What is timed is each artifact loaded again, as a deployment would load it and serve
the timed batch size - not the runtime that has just evaluated the test set. Why: a
PyTorch int8 module on the oneDNN backend (which the default ``x86`` engine ran on a
VNNI/AMX host) keeps one primitive per quantized layer, built for the first input shape it
sees (``PrimitiveCache`` in ATen's ``quantized/cpu/OnednnUtils.h``); any other shape
takes the uncached path on every call. Evaluated at batch 256 first, the default CNN's
int8 model then ran batch 16 at 0.44-0.55 ms instead of 0.36-0.45 ms for as long as the
process lived, and the run's own process read a speed-up of ~2.1x where its forks read ~2.6x
(``benchmarks/timing_after_evaluation.py``; AVX-512/AMX Xeon, 2026-12-05).

An artifact this host cannot run (Core ML on Linux) keeps its size and conversion
facts; its accuracy and latency are recorded as not measured, with the reason.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantexp.analysis.accuracy import accuracy
from quantexp.bench.forks import ForkError, ForkServer
from quantexp.bench.interleaved import RoundTimes, speedup_of, time_rounds
from quantexp.bench.latency import LatencyStats, measure_latency
from quantexp.bench.memory import CudaPeakMemory, MpsPeakMemory, PeakRSSSampler
from quantexp.bench.size import bits_per_parameter, path_size_bytes
from quantexp.config import ExperimentConfig, ExporterConfig
from quantexp.exporters import Exported, get_exporter
from quantexp.hardware import HostInfo
from quantexp.hardware.probe import apply_torch_settings
from quantexp.models.base import ModelBundle
from quantexp.runtimes import predict

log = logging.getLogger(__name__)


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
                    exp: ExperimentConfig, host: HostInfo, forks: ForkServer | None = None,
                    reference: str = "fp32") -> dict[str, Any] | None:
    """Time every runnable artifact in ``timed`` ({label: (exported, candidate dict)}),
    writing ``latency``, ``latency_raw_ms`` and ``timing`` into each candidate dict.

    With the reference and one other candidate both runnable, they are timed
    interleaved - in this process and, with ``bench.processes`` > 1 and a fork server,
    in as many more forked processes that load both artifacts again - and the speed-up
    (reference / candidate, with its CI) is returned; otherwise each is timed alone and
    None is returned."""
    runnable = {label: pair for label, pair in timed.items() if pair[0].runtime is not None}
    batch = bundle.example_inputs(exp.bench.batch_size)
    b = exp.bench
    common = dict(warmup=b.warmup, min_iters=b.min_iters, min_seconds=b.min_seconds, max_seconds=b.max_seconds)
    others = [label for label in runnable if label != reference]
    if reference in runnable and len(others) == 1:
        (ref, ref_cand), (cand, cand_cand) = runnable[reference], runnable[others[0]]
        sessions, note = time_in_processes(ref, cand, batch, exp, host, forks)
        ref_stats, cand_stats, speedup = speedup_of(
            sessions, batch_size=len(batch[0]), noisy_cv_pct=b.noisy_cv_pct, noisy_pct=b.noisy_cv_pct,
            n_boot=exp.eval.bootstrap, confidence=exp.eval.confidence, seed=exp.seed,
            drift_stretches=b.drift_stretches)
        _record(ref_cand, ref_stats, ref.runtime)
        _record(cand_cand, cand_stats, cand.runtime)
        return {**speedup.to_dict(), "processes_note": note}
    for exported, cand in runnable.values():
        runtime, note = reloaded(exported, exp, host)
        if note:
            cand["timing_note"] = note
        stats = measure_latency(lambda rt=runtime: rt(*batch), batch_size=len(batch[0]),
                                noisy_cv_pct=b.noisy_cv_pct, **common, time_call=runtime.call_timer())
        _record(cand, stats, runtime)
        runtime = None  # the copy goes before the next one is loaded
    return None


def reloaded(exported: Exported, exp: ExperimentConfig, host: HostInfo):
    """(runtime, note): ``exported``'s artifact loaded again by the run's exporter, for
    timing (the module docstring says why), and None; where it cannot be loaded again
    (an exporter without ``load``, no memory for a second copy), the runtime that
    evaluated, and a note that says so."""
    try:
        again = get_exporter(exp.exporter.name)(exp.exporter, host).load(Path(exported.artifact))
        if again.runtime is not None:
            return again.runtime, None
        why = again.not_measured or "no runtime"
    except Exception as exc:  # noqa: BLE001 - timing the evaluated runtime beats no timing
        why = f"{type(exc).__name__}: {exc}"
    note = f"timed the runtime that evaluated (its artifact did not load again: {why})".splitlines()[0]
    log.warning("%s", note)
    return exported.runtime, note


def time_in_processes(reference: Exported, candidate: Exported, batch: tuple, exp: ExperimentConfig,
                      host: HostInfo, forks: ForkServer | None) -> tuple[list[RoundTimes], str | None]:
    """The interleaved sessions of one pair - this process's, then one per forked
    process, each on the two artifacts loaded again - and, when fewer processes timed
    than ``bench.processes`` asked for (or this one had to time the evaluated runtimes), why.

    Each session gets 1/processes of ``min_seconds`` and ``max_seconds``, so the timing
    takes as long as before in all (plus each fork's load and warm-up); ``min_rounds``
    and the calls per round stay, so that every session's rounds pool with the others."""
    b = exp.bench
    wanted, why_not = b.processes, None
    if wanted > 1 and host.device != "cpu":
        wanted, why_not = 1, f"timed in one process: bench.processes applies on the CPU, not on {host.device}"
    elif wanted > 1 and forks is None:
        wanted, why_not = 1, "timed in one process: no fork server was started for this run"
    settings = dict(warmup=b.warmup, min_rounds=b.min_rounds, min_iters=b.min_iters,
                    min_seconds=b.min_seconds / wanted, max_seconds=b.max_seconds / wanted)
    # this process times the two artifacts loaded again, as each fork does
    (ref_rt, ref_note), (cand_rt, cand_note) = reloaded(reference, exp, host), reloaded(candidate, exp, host)
    sessions = [interleaved_session(ref_rt, cand_rt, batch, settings)]
    ref_rt = cand_rt = None  # the copies go before the forks load theirs
    artifacts = (str(Path(reference.artifact).resolve()), str(Path(candidate.artifact).resolve()))
    # a worker loads, warms and times; beyond that allowance it is stopped
    limit_s = 120.0 + 4 * settings["max_seconds"]
    for _ in range(wanted - 1):
        try:
            sessions.append(forks.call(time_reloaded_pair, exp.exporter, host, artifacts, batch, settings,
                                       timeout_s=limit_s))
        except ForkError as exc:
            why_not = f"timed in {len(sessions)} of {b.processes} processes: {exc}"
            log.warning("%s", why_not)
            break
    return sessions, "; ".join(n for n in (why_not, ref_note, cand_note) if n) or None


def time_reloaded_pair(exporter_cfg: ExporterConfig, host: HostInfo, artifacts: tuple[str, str],
                       batch: tuple, settings: dict[str, Any]) -> RoundTimes:
    """In a forked process: the run's torch settings, both artifacts loaded again by the
    run's exporter (as a deployment would load them; as this process's own session
    does, ``reloaded``), one interleaved session."""
    apply_torch_settings(host.threads, host.quantized_engine)
    exporter = get_exporter(exporter_cfg.name)(exporter_cfg, host)
    ref_rt, cand_rt = (exporter.load(Path(path)).runtime for path in artifacts)
    return interleaved_session(ref_rt, cand_rt, batch, settings)


def interleaved_session(ref_rt, cand_rt, batch: tuple, settings: dict[str, Any]) -> RoundTimes:
    """One interleaved session of two runtimes on ``batch`` (each with its own call
    timer: CUDA events on a GPU, the wall clock otherwise)."""
    return time_rounds(lambda: ref_rt(*batch), lambda: cand_rt(*batch), **settings,
                       reference_timer=ref_rt.call_timer(), candidate_timer=cand_rt.call_timer())


def _record(cand: dict[str, Any], stats: LatencyStats, runtime) -> None:
    cand.update(latency=stats.summary(), latency_raw_ms=stats.raw_ms,
                timing="wall clock" if runtime.call_timer() is None else "cuda events")


def runtime_name(exported: Exported) -> str:
    """"torch", "onnxruntime", ... with the device when it is not the CPU ("torch cuda")."""
    if exported.runtime is None:
        return exported.info.get("runtime", "-")
    device = getattr(exported.runtime, "device", "cpu")
    return exported.runtime.kind + ("" if device == "cpu" else f" {device}")


__all__ = ["evaluate", "reloaded", "runtime_name", "time_candidates", "time_in_processes", "time_reloaded_pair"]
