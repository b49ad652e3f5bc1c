"""Measured history for the recommender: every finished run in MLflow (its results.json)
as a ``Record`` - which model (and that model's features), which recipe (method,
precision, exporter, hardware), and what it measured (accuracy drop with its CI,
speed-up vs its own fp32 with its CI, size ratio, quantize time, fp32 latency and size).

A model's features come from ``quantexp.architecture`` (census + layer statistics) and
are cached per model configuration under ``<cache_dir>/features/`` so that history
is analysed once per model, not once per run.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantexp.results import Results

FAMILY_OPTION = {"cnn": "cnn", "rnn": "lstm", "transformer": "minilm"}  # a conf/model option per schema


@dataclass
class Record:
    model: str
    model_key: str
    family: str
    method: str
    precision: str
    exporter: str
    hardware: str
    drop: float | None  # points, fp32 minus candidate
    drop_ci: tuple[float, float] | None
    speedup: float | None
    speedup_ci: tuple[float, float] | None
    size_ratio: float | None
    quantize_s: float | None
    fp32_p50_ms: float | None
    p50_ms: float | None
    fp32_size_mb: float | None
    run_id: str | None
    features: dict[str, float] = field(default_factory=dict)

    @property
    def recipe(self) -> tuple[str, str, str, str]:
        return (self.method, self.precision, self.exporter, self.hardware)


def model_key_of(config: dict[str, Any]) -> str:
    """One model configuration (the model group and the seed of a resolved run config)."""
    canonical = json.dumps({"model": config.get("model"), "seed": config.get("seed")}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def model_key(results: Results) -> str:
    return model_key_of(results.config or {})


def record_of(results: Results, run_id: str | None = None) -> Record:
    config = results.config or {}
    c, cand = results.comparison, results.candidate
    fp32 = results.reference or (cand if results.label == "fp32" else None)
    is_fp32 = results.label == "fp32"
    drop = 0.0 if is_fp32 else c.accuracy_drop_points
    drop_ci = None if is_fp32 or c.accuracy_delta_ci_low is None else (
        -100 * c.accuracy_delta_ci_high, -100 * c.accuracy_delta_ci_low)
    speedup_ci = None if c.speedup_ci_low is None else (c.speedup_ci_low, c.speedup_ci_high)
    return Record(
        model=str(results.model.get("name")), model_key=model_key(results), family=str(results.model.get("family")),
        method=results.label, precision=str(results.method.get("precision")),
        exporter=str((config.get("exporter") or {}).get("name", "none")),
        hardware=str((config.get("hardware") or {}).get("name", "cpu")),
        drop=drop, drop_ci=drop_ci, speedup=1.0 if is_fp32 else c.speedup_p50, speedup_ci=speedup_ci,
        size_ratio=1.0 if is_fp32 else c.size_ratio, quantize_s=results.method.get("quantize_time_s"),
        fp32_p50_ms=fp32.latency.p50_ms if fp32 and fp32.latency else None,
        p50_ms=cand.latency.p50_ms if cand.latency else None,
        fp32_size_mb=fp32.size_bytes / 1e6 if fp32 else None, run_id=run_id or results.mlflow_run_id)


def read_history(client, experiment: str = "quantexp", filter_string: str = "") -> list[tuple[Results, str]]:
    """(results, run id) of every FINISHED run with a results.json in ``experiment``."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    out = []
    runs = client.search_runs([found.experiment_id], filter_string=filter_string, max_results=5000)
    with tempfile.TemporaryDirectory(prefix="quantexp-history-") as tmp:
        for run in runs:
            if run.info.status != "FINISHED":
                continue
            if "results.json" not in {a.path for a in client.list_artifacts(run.info.run_id)}:
                continue
            path = client.download_artifacts(run.info.run_id, "results.json", f"{tmp}/{run.info.run_id}")
            out.append((Results.from_json(path), run.info.run_id))
    return out


def features_for(results: Results, cache_dir: Path) -> dict[str, float]:
    """The features of the model a run used (cached per model configuration)."""
    key = model_key(results)
    path = Path(cache_dir) / "features" / f"{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    from quantexp.architecture.run import analyze_config
    from quantexp.files import atomic_write_json

    analysis = analyze_config(experiment_of(results), cache_dir=cache_dir)
    features = analysis.features()
    atomic_write_json(path, features)
    return features


def experiment_of(results: Results):
    """The ExperimentConfig of a run's model, rebuilt from its stored config."""
    from omegaconf import OmegaConf

    from quantexp.api import compose, validate

    config = results.config or {}
    option = FAMILY_OPTION.get(str(results.model.get("family")), "cnn")
    cfg = compose([f"model={option}"])
    stored: dict[str, Any] = {"model": config.get("model", {}), "seed": config.get("seed", 0)}
    return validate(OmegaConf.merge(cfg, stored))


def records(history: list[tuple[Results, str]], cache_dir: Path) -> list[Record]:
    out = []
    for results, run_id in history:
        record = record_of(results, run_id)
        record.features = features_for(results, cache_dir)
        out.append(record)
    return out


__all__ = ["Record", "experiment_of", "features_for", "model_key", "model_key_of", "read_history", "record_of", "records"]
