"""Typed results of one run: the dict ``pipeline.run`` builds, ``cli.execute``
completes and writes as results.json, as dataclasses (``Results`` -> ``Candidate`` ->
``Latency``; ``Comparison``; ``Gate``) with an exact round trip
``Results.from_dict(d).to_dict() == d``. Keys come back in the order the pipeline
writes them, so ``to_json`` writes the same text; keys unknown here are kept in each
class's ``extra`` and written back, so a reader never drops what a newer pipeline added.

Stdlib only on purpose (quantexp.files is stdlib too): reports and analysis scripts read results.json without
importing torch, numpy, hydra, mlflow or the rest of quantexp.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Self

from quantexp.files import atomic_write_json


def _require(d: Mapping[str, Any], keys: tuple[str, ...], what: str) -> None:
    # A missing key is a wrong input, not a value to make up: say which ones.
    missing = [k for k in keys if k not in d]
    if missing:
        raise ValueError(f"{what} dict lacks keys: {', '.join(missing)}")


class _Flat:
    """A flat dict whose keys may be absent (Latency, Comparison, Gate): absent <-> None,
    except the ``_always`` keys, which are required and written even when None.
    Unknown keys go to ``extra`` and come back after the known ones."""

    _always: ClassVar[tuple[str, ...]] = ()
    extra: dict[str, Any]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Self:
        _require(d, cls._always, cls.__name__)
        names = {f.name for f in fields(cls)} - {"extra"}  # type: ignore[arg-type]
        return cls(**{k: d[k] for k in names if k in d},  # type: ignore[call-arg]
                   extra={k: v for k, v in d.items() if k not in names})

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]
        keep = {k: v for k, v in out.items() if k != "extra" and (v is not None or k in self._always)}
        return {**keep, **self.extra}


@dataclass
class Latency(_Flat):
    """``LatencyStats.summary()`` of one candidate. Every value is a float there,
    counts and flags included (noisy/truncated are 0.0/1.0 so they log as MLflow
    metrics); they stay floats here so the JSON is unchanged."""

    n_iters: float | None = None
    total_s: float | None = None
    first_call_ms: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    stdev_ms: float | None = None
    cv_pct: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    throughput_items_per_s: float | None = None
    batch_size: float | None = None
    noisy: float | None = None
    truncated: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# The keys _measure always writes, in its order; then export.*, reports, timing (if measured).
_CANDIDATE_KEYS = ("runtime", "artifact", "accuracy", "latency", "latency_raw_ms", "peak_rss_mb", "peak_gpu_mb",
                   "size_bytes", "bits_per_param", "export_time_s", "artifact_load_time_s", "threads")
_EXPORT = "export."


@dataclass
class Candidate:
    """One artifact (fp32 or the method's). One this host cannot run keeps its size and
    export facts; accuracy and latency are None (latency ``{}`` in the dict), never estimated."""

    runtime: str
    artifact: str
    accuracy: float | None
    latency: Latency | None
    latency_raw_ms: list[float]
    peak_rss_mb: float | None
    peak_gpu_mb: float | None
    size_bytes: int
    bits_per_param: float
    export_time_s: float
    artifact_load_time_s: float
    threads: int
    reports: dict[str, str]
    timing: str | None = None  # "wall clock" / "cuda events"; absent when not measured
    export: dict[str, Any] = field(default_factory=dict)  # Exported.info, keys without "export."
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Candidate:
        _require(d, (*_CANDIDATE_KEYS, "reports"), "candidate")
        known = {*_CANDIDATE_KEYS, "reports", "timing"}
        values = {k: d[k] for k in _CANDIDATE_KEYS}
        values["latency"] = Latency.from_dict(d["latency"]) if d["latency"] else None
        values["latency_raw_ms"] = list(d["latency_raw_ms"])
        return cls(**values, reports=dict(d["reports"]), timing=d.get("timing"),
                   export={k.removeprefix(_EXPORT): v for k, v in d.items() if k.startswith(_EXPORT)},
                   extra={k: v for k, v in d.items() if k not in known and not k.startswith(_EXPORT)})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in _CANDIDATE_KEYS}
        out.update(latency={} if self.latency is None else self.latency.to_dict(),
                   latency_raw_ms=list(self.latency_raw_ms))
        # Flattened back so metrics_of and MLflow see the same "export.parity.*" names.
        out.update({_EXPORT + k: v for k, v in self.export.items()})
        out["reports"] = dict(self.reports)
        if self.timing is not None:
            out["timing"] = self.timing
        return {**out, **self.extra}


@dataclass
class Comparison(_Flat):
    """Method vs fp32: ``compare_predictions`` (ref_name="fp32") + speedup_p50/size_ratio
    from the pipeline. Empty when the method's artifact could not be evaluated here."""

    accuracy: float | None = None
    accuracy_fp32: float | None = None
    accuracy_delta: float | None = None  # fraction (0-1), candidate minus fp32
    accuracy_delta_ci_low: float | None = None
    accuracy_delta_ci_high: float | None = None
    agreement_fp32: float | None = None
    mcnemar_p: float | None = None
    mcnemar_b: float | None = None  # counts, written as floats (they are logged as metrics)
    mcnemar_c: float | None = None
    n_items: float | None = None
    speedup_p50: float | None = None  # fp32 p50 / candidate p50: > 1 is faster
    # Its confidence interval and verdict when the two were timed interleaved
    # ("faster", "slower", "no significant difference"); noisy is 0.0/1.0.
    speedup_ci_low: float | None = None
    speedup_ci_high: float | None = None
    speedup_verdict: str | None = None
    speedup_noisy: float | None = None
    size_ratio: float | None = None  # candidate bytes / fp32 bytes
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy_drop_points(self) -> float | None:
        """Accuracy lost vs fp32 in points (0-100), as the gate and objectives count it."""
        return None if self.accuracy_delta is None else -100.0 * self.accuracy_delta


@dataclass
class Gate(_Flat):
    """eval.max_accuracy_drop verdict. passed is None when no gate was set or the drop
    was not measured (accuracy_drop_points is then absent, max_accuracy_drop None too),
    and when the verdict is "inconclusive"."""

    _always = ("max_accuracy_drop", "passed")
    max_accuracy_drop: float | None = None
    accuracy_drop_points: float | None = None
    # The drop's confidence interval decides: "passed" (all of it within the allowed
    # drop), "failed" (all of it beyond), "inconclusive" (passed is None then).
    accuracy_drop_ci_low: float | None = None
    accuracy_drop_ci_high: float | None = None
    verdict: str | None = None
    passed: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# Written by pipeline.run (always), then by cli.execute (mlflow_run_id only with tracking).
_PIPELINE_KEYS = ("model", "method", "calibration", "tables", "candidates", "comparison", "gate",
                  "not_measured", "host", "stages_s", "process_peak_rss_mb", "budget", "interleaved", "objective",
                  "predictions_path", "figures")
# Pipeline keys that may be absent: interleaved only when fp32 and the candidate were timed together.
_OPTIONAL_KEYS = ("interleaved",)
_CLI_KEYS = ("config", "provenance", "results_path", "mlflow_run_id", "placement")


@dataclass
class Results:
    """One run. Free-form sections (model, method, host, config, ...) stay dicts:
    their keys depend on the model, method and exporter."""

    model: dict[str, Any]
    method: dict[str, Any]  # name, precision, quantize_time_s + the method's own facts
    calibration: dict[str, Any]
    tables: dict[str, Any]  # {name: [row dict, ...]}, also written as tables/<name>.csv
    candidates: dict[str, Candidate]  # "fp32" (when compared) and the method's label
    comparison: Comparison
    gate: Gate
    not_measured: dict[str, str]  # "<label>.<metric>" -> reason
    host: dict[str, Any]
    stages_s: dict[str, float]
    process_peak_rss_mb: float
    budget: dict[str, Any]
    # A float for one objective, several as a tuple (a list once through JSON); None
    # when the only objective was not measured. Kept as given so both round-trip.
    objective: float | list[float | None] | tuple[float | None, ...] | None
    predictions_path: str
    figures: dict[str, str]
    # The interleaved timing of fp32 and the candidate (``bench.interleaved.Speedup``:
    # ratio, CI, verdict, per-round medians); None when they were not timed together.
    interleaved: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    provenance: dict[str, str] | None = None
    results_path: str | None = None
    mlflow_run_id: str | None = None
    # Jobs of a sweep: launcher, jobs sharing the host, threads, co_located (latencies
    # measured beside other jobs), isolation (quantexp.launch.placement)
    placement: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Results:
        _require(d, tuple(k for k in _PIPELINE_KEYS if k not in _OPTIONAL_KEYS), "results")
        # Shallow copies: editing the typed object does not edit the caller's dict.
        values: dict[str, Any] = {k: dict(d[k]) if isinstance(d[k], Mapping) else d[k]
                                  for k in (*_PIPELINE_KEYS, *_CLI_KEYS) if k in d}
        values.update(candidates={k: Candidate.from_dict(v) for k, v in d["candidates"].items()},
                      comparison=Comparison.from_dict(d["comparison"]), gate=Gate.from_dict(d["gate"]))
        known = {*_PIPELINE_KEYS, *_CLI_KEYS}
        return cls(**values, extra={k: v for k, v in d.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        out = {k: dict(v) if isinstance(v := getattr(self, k), dict) else v for k in _PIPELINE_KEYS
               if k not in _OPTIONAL_KEYS or getattr(self, k) is not None}
        out.update(candidates={k: c.to_dict() for k, c in self.candidates.items()},
                   comparison=self.comparison.to_dict(), gate=self.gate.to_dict())
        # cli keys are absent, not null, when not set (pipeline-only dict, no tracking).
        out.update({k: getattr(self, k) for k in _CLI_KEYS if getattr(self, k) is not None})
        return {**out, **self.extra}

    def to_json(self, path: str | Path) -> Path:
        """Write as cli.execute does (indent=2, default=str), so the text is the same."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def from_json(cls, path: str | Path) -> Results:
        return cls.from_dict(json.loads(Path(path).read_text()))

    @property
    def label(self) -> str:
        """The method's name: the key of its candidate."""
        return str(self.method["name"])

    @property
    def candidate(self) -> Candidate:
        return self.candidates[self.label]

    @property
    def reference(self) -> Candidate | None:
        """The fp32 candidate the method was compared with; None when there is none,
        and for method=fp32, whose only candidate is itself (see ``candidate``)."""
        return None if self.label == "fp32" else self.candidates.get("fp32")

    @property
    def accuracy_drop_points(self) -> float | None:
        return self.comparison.accuracy_drop_points

    @property
    def speedup(self) -> float | None:
        """fp32 p50 / candidate p50 (None when either was not timed)."""
        return self.comparison.speedup_p50


__all__ = ["Candidate", "Comparison", "Gate", "Latency", "Results"]
