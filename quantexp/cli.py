"""What run.py does inside its Hydra job: validate, run the pipeline under an
MLflow run, write results.json, print the summary, return the objective.

Bad input (a ConfigError or an unavailable hardware target) is refused before
any model loads: one line on stderr and exit code 2 in a single run; in a
multirun it is raised so that only that job fails and the sweep goes on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from quantexp.config import ConfigError, ExperimentConfig, build
from quantexp.hardware.probe import HardwareUnavailable, require_available

EXIT_BAD_CONFIG = 2


def run_job(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    output_dir = Path(hc.runtime.output_dir)
    project_root = Path(hc.runtime.cwd)
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        exp = validate(cfg)
        run_name = f"{exp.model.name}/{exp.method.name}/{exp.precision.name}/{exp.hardware.name}"
        if multirun:
            run_name += f" #{hc.job.num}"
        # User errors found while running (a model path that does not exist, a
        # calibration set larger than the data) end the same way; the MLflow run,
        # if one was opened, is already marked FAILED with its traceback.
        results = execute(exp, cfg, output_dir, project_root, run_name)
    except (ConfigError, HardwareUnavailable) as exc:
        if multirun:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_CONFIG)
    return results["objective"]


def validate(cfg: DictConfig) -> ExperimentConfig:
    """Schema + compatibility + hardware availability: everything that can be
    refused without loading a model."""

    exp = build(cfg)
    require_available(exp.hardware)
    return exp


def execute(exp: ExperimentConfig, cfg: DictConfig, output_dir: Path, project_root: Path,
            run_name: str) -> dict[str, Any]:
    """Run the pipeline under an MLflow run (or none when tracking is disabled)."""
    from quantexp import pipeline
    from quantexp.provenance import git_commit, library_versions
    from quantexp.report import print_summary

    output_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(exp.cache_dir) if exp.cache_dir else project_root / ".cache" / "quantexp"
    config_yaml = OmegaConf.to_yaml(cfg)
    (output_dir / "config.yaml").write_text(config_yaml)
    tags = {"quantexp.git_commit": git_commit(project_root), "quantexp.output_dir": str(output_dir),
            **{f"version.{k}": v for k, v in library_versions().items()}}

    with _tracking(exp, project_root, run_name, tags) as log:
        if log is not None:
            from quantexp.tracking.run_logger import flatten

            log.log_params(flatten(OmegaConf.to_container(cfg, resolve=True)))
            log.log_text(config_yaml, "config.yaml")
        results = pipeline.run(exp, output_dir, cache_dir, log)
        results["config"] = OmegaConf.to_container(cfg, resolve=True)
        results["provenance"] = tags
        results["results_path"] = str(output_dir / "results.json")
        if log is not None:
            results["mlflow_run_id"] = log.run_id
        (output_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
        if log is not None:
            log.log_artifact(output_dir / "results.json")
            if exp.tracking.log_model:
                for cand in results["candidates"].values():
                    log.log_artifact(Path(cand["artifact"]), "model")
    print_summary(results)
    if results.get("budget"):
        b = results["budget"]
        measured = ", ".join(f"{k.removeprefix('measured.')}={v:.4g}" for k, v in b.items()
                             if k.startswith("measured."))
        print(f"budget {b['budget']}: {'met' if b['met'] else 'NOT met'} (measured {measured})")
    return results


class _NoTracking:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _tracking(exp: ExperimentConfig, project_root: Path, run_name: str, tags: dict[str, str]):
    if not exp.tracking.enabled:
        return _NoTracking()
    from quantexp.tracking.callbacks import parent_run_id
    from quantexp.tracking.run_logger import RunLogger
    from quantexp.tracking.store import open_client

    client, experiment_id = open_client(exp.tracking.uri, project_root, exp.tracking.experiment)
    return RunLogger(client, experiment_id, run_name, parent_run_id=parent_run_id(), tags=tags)


__all__ = ["run_job", "validate", "execute", "EXIT_BAD_CONFIG"]
