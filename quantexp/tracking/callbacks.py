"""The MLflow parent run of a Hydra multirun, and how its jobs find it.

``MlflowSweepCallback`` (named in conf/config.yaml under hydra.callbacks) opens
one parent run before the first job and closes it after the last, with counts
of its children. A persistent study (Optuna sweeper with storage) keeps one parent
across resumes; on resume, children a killed sweep left RUNNING are marked KILLED
(tag ``error`` says why) so that they end and count as failed; several sweep processes
on one study share that parent (found or created under the study store's lock) and
leave each other's live jobs alone. Jobs nest under it through ``parent_run_id()``: a
file in the sweep directory (``PARENT_RUN_FILE``; the environment variable in the
sweep's own process as a fallback), beside ``TRACKING_URI_FILE``, the store the sweep
opened, for jobs whose environment is not the sweep's (Ray workers).

Hydra imports this module on every start (``--help`` included), so mlflow is
imported only inside the methods (``store`` does the same). Tracking problems
here are logged as warnings and never stop the sweep.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

# store imports mlflow only inside its functions, so this stays cheap at load.
from quantexp.tracking import PARENT_RUN_ENV, PARENT_RUN_FILE, TRACKING_URI_FILE
from quantexp.tracking.store import open_client, retry_locked, store_lock

log = logging.getLogger(__name__)

_CHILD_TAG = "mlflow.parentRunId"
INTERRUPTED_TAG = "quantexp.interrupted"


def project_root_of(config: DictConfig) -> Path:
    # hydra.runtime.cwd is filled in at compose time, so it is already set when
    # on_multirun_start runs; the fallback covers configs composed elsewhere.
    cwd = OmegaConf.select(config, "hydra.runtime.cwd", default=None)
    return Path(cwd or os.getcwd())


def sweep_dir_of(config: DictConfig) -> Path:
    sweep_dir = Path(str(OmegaConf.select(config, "hydra.sweep.dir")))
    return sweep_dir if sweep_dir.is_absolute() else project_root_of(config) / sweep_dir


class MlflowSweepCallback(Callback):
    def __init__(self) -> None:
        self._client: Any = None
        self._parent_run_id: str | None = None
        self._experiment_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not OmegaConf.select(config, "tracking.enabled", default=True):
            return
        try:
            self._start(config)
        except Exception as exc:  # noqa: BLE001 - tracking must never stop the sweep
            log.warning("MLflow: no parent run for this sweep (%s: %s); jobs are tracked "
                        "as top-level runs", type(exc).__name__, exc)
            self._parent_run_id = None

    def _start(self, config: DictConfig) -> None:
        root = project_root_of(config)
        # Creating the store and the experiment here, before any job starts,
        # avoids parallel jobs racing to create the sqlite schema.
        client, experiment_id = open_client(
            OmegaConf.select(config, "tracking.uri", default=None), root,
            OmegaConf.select(config, "tracking.experiment", default="quantexp"))
        sweep_dir = sweep_dir_of(config)
        overrides = OmegaConf.select(config, "hydra.overrides.task", default=None) or []
        study = _study_key(config)
        storage = OmegaConf.select(config, "hydra.sweeper.storage", default=None)
        # Sweep processes starting together on one study find or create its one parent
        # under the study store's lock.
        with store_lock(str(storage) if study else None, f"quantexp.parent:{study}"):
            run = self._open_parent(client, experiment_id, study, sweep_dir, overrides)
        self._client, self._experiment_id = client, experiment_id
        self._parent_run_id = run.info.run_id
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_RUN_FILE).write_text(self._parent_run_id + "\n")
        (sweep_dir / TRACKING_URI_FILE).write_text(client.tracking_uri + "\n")
        os.environ[PARENT_RUN_ENV] = self._parent_run_id
        log.info("MLflow parent run %s (%s)", self._parent_run_id, client.tracking_uri)

    def _open_parent(self, client: Any, experiment_id: str, study: str | None, sweep_dir: Path,
                     overrides: list) -> Any:
        run = _existing_study_run(client, experiment_id, study) if study else None
        if run is not None:
            # A resumed persistent study (Optuna sweeper): one parent for the whole study.
            self._client, self._experiment_id = client, experiment_id
            self._close_interrupted(run.info.run_id)
            retry_locked(client.update_run, run.info.run_id, status="RUNNING")
            retry_locked(client.set_tag, run.info.run_id, "quantexp.sweep_dir", str(sweep_dir))
        else:
            tags = {"quantexp.sweep_dir": str(sweep_dir),
                    "quantexp.overrides": " ".join(str(o) for o in overrides)}
            if study:
                tags[_STUDY_TAG] = study
            run = retry_locked(
                client.create_run, experiment_id,
                run_name=f"study {study.rpartition('#')[2]}" if study else sweep_name(overrides),
                tags=tags)
        return run

    def _close_interrupted(self, parent: str) -> None:
        """Children of a resumed study still RUNNING whose process is gone belong to a
        sweep that died (kill -9, a crash) mid-job: nothing else will ever end them.
        Those of a live process (another sweep process working on the same study) and
        those measured on another host are left alone."""
        for child in self._children(parent):
            if child.info.status != "RUNNING":
                continue
            if _process_alive(child) is not False:  # a job still measuring (another sweep process
                continue                            # on the study), or one on another host
            reason = ("interrupted: the sweep process ended while this job ran; "
                      "marked KILLED when the study was resumed")
            retry_locked(self._client.set_tag, child.info.run_id, "error", reason)
            retry_locked(self._client.set_tag, child.info.run_id, INTERRUPTED_TAG, "true")
            retry_locked(self._client.set_terminated, child.info.run_id, status="KILLED")
            log.warning("MLflow run %s (%s) was left RUNNING by an interrupted sweep: marked KILLED",
                        child.info.run_id, child.info.run_name)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        parent = self._parent_run_id
        if parent is None:
            return
        try:
            self._finish(parent)
        except Exception as exc:  # noqa: BLE001 - tracking must never stop the sweep
            log.warning("MLflow: could not close parent run %s (%s: %s)",
                        parent, type(exc).__name__, exc)
        finally:
            if os.environ.get(PARENT_RUN_ENV) == parent:
                del os.environ[PARENT_RUN_ENV]
            self._parent_run_id = None

    def _finish(self, parent: str) -> None:
        from mlflow.entities import Metric

        children = self._children(parent)
        statuses = [run.info.status for run in children]
        counts = {
            "n_jobs": len(statuses),
            "n_finished": statuses.count("FINISHED"),
            # KILLED (Ctrl-C) is a job that did not finish as well.
            "n_failed": statuses.count("FAILED") + statuses.count("KILLED"),
        }
        now = int(time.time() * 1000)
        retry_locked(self._client.log_batch, parent,
                     metrics=[Metric(k, float(v), now, 0) for k, v in counts.items()])
        live = [r for r in children if r.info.status == "RUNNING" and _process_alive(r) is not False]
        if live:  # another sweep process on the same study still measures: it ends the parent
            log.info("MLflow parent run %s left RUNNING: %d job(s) of other sweep processes still run",
                     parent, len(live))
        else:
            retry_locked(self._client.set_terminated, parent, status="FINISHED")
        log.info("MLflow parent run %s: %d jobs, %d finished, %d failed",
                 parent, counts["n_jobs"], counts["n_finished"], counts["n_failed"])

    def _children(self, parent: str) -> list[Any]:
        runs: list[Any] = []
        token = None
        while True:
            page = retry_locked(self._client.search_runs, [self._experiment_id],
                                filter_string=f"tags.`{_CHILD_TAG}` = '{parent}'",
                                max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs


_STUDY_TAG = "quantexp.study"


def _process_alive(run: Any) -> bool | None:
    """Is the process that measures this run alive (None: on another host; False for
    runs of versions that did not record their process)?"""
    from quantexp.provenance import process_alive

    tags = run.data.tags
    if "quantexp.process.pid" not in tags:
        return False
    return process_alive({k: tags.get(f"quantexp.process.{k}") for k in ("host", "pid", "started")})


def sweep_name(overrides: list[Any]) -> str:
    """'2026-12-04 10:05 sweep method=fp32,ptq_static model=cnn': when, and what was swept
    (the overrides with several values, and the recipe)."""
    import datetime

    swept = [str(o) for o in overrides if "," in str(o) or str(o).startswith(("+experiment=", "experiment="))]
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return f"{stamp} sweep " + (" ".join(swept) if swept else "of one configuration")


def _study_key(config: DictConfig) -> str | None:
    """"<storage>#<study name>" of a sweeper with persistent storage, else None."""
    storage = OmegaConf.select(config, "hydra.sweeper.storage", default=None)
    name = OmegaConf.select(config, "hydra.sweeper.study_name", default=None)
    return f"{storage}#{name}" if storage and name else None


def _existing_study_run(client: Any, experiment_id: str, study: str) -> Any:
    escaped = study.replace("'", "\\'")
    runs = retry_locked(client.search_runs, [experiment_id],
                        filter_string=f"tags.`{_STUDY_TAG}` = '{escaped}'", max_results=1,
                        order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def parent_run_id() -> str | None:
    """The sweep's parent run id for the current job, or None (single run,
    tracking disabled, or the parent could not be created). The sweep folder's file
    first: a worker process reused across sweeps (joblib's loky, Ray) may carry an
    earlier sweep's environment variable."""
    return sweep_file(PARENT_RUN_FILE) or os.environ.get(PARENT_RUN_ENV)


def sweep_tracking_uri() -> str | None:
    """The tracking URI the sweep's parent run was opened with (None outside a
    multirun, or when the sweep opened none)."""
    return sweep_file(TRACKING_URI_FILE)


def sweep_file(name: str) -> str | None:
    """The stripped text of ``<sweep dir>/<name>`` of the current multirun job, or None."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return None
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.MULTIRUN:
            return None
        sweep_dir = Path(str(hydra_cfg.sweep.dir))
        if not sweep_dir.is_absolute():
            sweep_dir = Path(hydra_cfg.runtime.cwd or os.getcwd()) / sweep_dir
        path = sweep_dir / name
        if not path.is_file():
            return None
        return path.read_text().strip() or None
    except Exception as exc:  # noqa: BLE001 - no parent is better than a crashed job
        log.warning("MLflow: could not read the sweep's %s (%s)", name, exc)
        return None
