"""One job of a sweep, as every launcher runs it (``run_sweep_job``).

In the launcher's process (the sweep process for Hydra's basic launcher, a loky
worker for joblib, a Ray worker for Ray): validate the job's config (bad input is
refused before anything starts), plan its placement (``quantexp.launch.placement``:
its intra-op threads go into ``hardware.threads``), point it at the sweep's tracking
store, then run the job's body in a fresh process (``quantexp.launch.isolation``;
``launch.isolation=inline`` runs it here instead). A job whose process dies is
reported as ``JobCrashed`` and its MLflow run, left RUNNING by the dead process, is
marked FAILED with the reason.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, read_write

from quantexp.launch.isolation import JobCrashed, run_in_fresh_process
from quantexp.launch.placement import plan
from quantexp.tracking import EXIT


def run_sweep_job(body: Callable[[DictConfig, dict[str, Any] | None], Any], cfg: DictConfig) -> Any:
    """``body(cfg, placement)`` for the current Hydra multirun job; its return value."""
    from hydra.core.hydra_config import HydraConfig

    from quantexp.api import validate

    exp = validate(cfg)  # ConfigError / HardwareUnavailable: this job fails, nothing started
    hc = HydraConfig.get()
    isolation = exp.launch.isolation.value
    placement = plan(hc, exp.hardware.threads, isolation)
    if placement.threads != exp.hardware.threads:
        with read_write(cfg):
            cfg.hardware.threads = placement.threads
    output_dir = Path(str(hc.runtime.output_dir))
    with _sweep_store(cfg):
        if isolation == "inline":
            return _within_threads(body, cfg, placement.to_dict())[0]
        try:
            value, exit_code = run_in_fresh_process(_within_threads, body, cfg, placement.to_dict(),
                                                    hydra_cfg=HydraConfig.instance().cfg, crash_dir=output_dir,
                                                    name=f"quantexp-job-{hc.job.num}")
        except JobCrashed as exc:
            if exp.tracking.enabled:
                from quantexp.tracking.lookup import fail_run_of_output_dir

                fail_run_of_output_dir(cfg, Path(str(hc.runtime.cwd)), str(output_dir), exc)
            raise
        if exit_code:  # an exit code the job set (a failed quality gate) reaches run.py
            EXIT.code = EXIT.code or exit_code
        return value


def _within_threads(body: Callable[[DictConfig, dict[str, Any] | None], Any], cfg: DictConfig,
                    placement: dict[str, Any]) -> tuple[Any, int]:
    """(``body``'s value, the exit code it set) with the BLAS and OpenMP pools of every
    library loaded (numpy's, torch's) held to the job's threads too, not only torch's and
    ONNX Runtime's intra-op pools (which ``hardware.threads`` sets)."""
    threads = placement.get("threads")
    limits = contextlib.nullcontext()
    if threads and placement.get("co_located"):
        from threadpoolctl import threadpool_limits

        limits = threadpool_limits(limits=int(threads))
    with limits:
        return body(cfg, placement), EXIT.code


@contextlib.contextmanager
def _sweep_store(cfg: DictConfig) -> Iterator[None]:
    """The job writes where the sweep's parent run is: with ``tracking.uri`` unset, the
    store is the launching process's $MLFLOW_TRACKING_URI, which a Ray worker (started
    elsewhere) does not have; the sweep wrote the URI it used beside its parent run id."""
    from quantexp.tracking.callbacks import sweep_tracking_uri

    uri = None
    if OmegaConf.select(cfg, "tracking.enabled", default=True) and not OmegaConf.select(cfg, "tracking.uri"):
        uri = sweep_tracking_uri()
    if uri is None:
        yield
        return
    before = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before


__all__ = ["run_sweep_job"]
