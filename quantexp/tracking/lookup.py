"""Find the MLflow run of a job from its output folder (the ``quantexp.output_dir``
tag every run carries), for jobs that failed before writing results.json; end the
run of a job whose process died (``fail_run_of_output_dir``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from quantexp.tracking.store import open_client, retry_locked

log = logging.getLogger(__name__)

OUTPUT_DIR_TAG = "quantexp.output_dir"


def run_id_for_output_dir(cfg: Any, project_root: Path, output_dir: str) -> str | None:
    """The id of the newest run tagged with ``output_dir`` in the store and experiment
    of ``cfg.tracking``; None when tracking is off, there is no such run, or the
    store cannot be read (a lookup never fails the caller)."""
    if not OmegaConf.select(cfg, "tracking.enabled", default=True):
        return None
    try:
        client, experiment_id = open_client(OmegaConf.select(cfg, "tracking.uri", default=None),
                                            project_root,
                                            OmegaConf.select(cfg, "tracking.experiment", default="quantexp"))
        escaped = str(output_dir).replace("'", "\\'")
        runs = retry_locked(client.search_runs, [experiment_id],
                            filter_string=f"tags.`{OUTPUT_DIR_TAG}` = '{escaped}'",
                            max_results=1, order_by=["attributes.start_time DESC"])
        return runs[0].info.run_id if runs else None
    except Exception as exc:  # noqa: BLE001
        log.warning("MLflow: could not look up the run of %s (%s)", output_dir, exc)
        return None


def fail_run_of_output_dir(cfg: Any, project_root: Path, output_dir: str, exc: BaseException) -> str | None:
    """Mark FAILED (traceback.txt, ``error`` tag) the run of ``output_dir`` if it is still
    RUNNING: its process died (a signal, os._exit) and never ended it. Returns its id."""
    run_id = run_id_for_output_dir(cfg, project_root, output_dir)
    if run_id is None:
        return None
    try:
        from quantexp.tracking.run_logger import RunLogger

        client, _ = open_client(OmegaConf.select(cfg, "tracking.uri", default=None), project_root,
                                OmegaConf.select(cfg, "tracking.experiment", default="quantexp"))
        if retry_locked(client.get_run, run_id).info.status == "RUNNING":
            RunLogger.attach(client, run_id).fail(exc)
    except Exception as tracking_exc:  # noqa: BLE001 - must not hide the job's own failure
        log.warning("MLflow: could not mark run %s FAILED (%s)", run_id, tracking_exc)
    return run_id


__all__ = ["OUTPUT_DIR_TAG", "fail_run_of_output_dir", "run_id_for_output_dir"]
