"""The end of a multirun with failed jobs: one screen that says which, and an exit code.

``SweepSummaryCallback`` (first under hydra.callbacks in conf/config.yaml, so that
Hydra, which ends callbacks in reverse, ends it last):

- on_job_end: a job that raised has its traceback written to
  ``<job dir>/traceback.txt`` (its MLflow run, if it opened one, is already FAILED
  with the same traceback as an artifact);
- on_multirun_end: prints ``sweep: k of n jobs failed`` with one line per failed
  job (number, overrides, error, where its traceback is, its MLflow run) to stderr,
  writes the same to ``<sweep dir>/failed_jobs.txt`` and sets ``EXIT`` to 1 (unless
  the search report set a more specific code). Hydra's basic sweeper re-raises the
  first failed job's exception after the batch, which Hydra would print as a
  traceback and exit 1: that exception (and only that one: any other error still
  propagates) is replaced by ``SystemExit`` with the code.

Jobs interrupted by Ctrl-C are not listed: the interruption propagates as it is.
"""

from __future__ import annotations

import logging
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from quantexp.tracking import EXIT

log = logging.getLogger(__name__)

EXIT_JOBS_FAILED = 1
TRACEBACK_FILE = "traceback.txt"
SUMMARY_FILE = "failed_jobs.txt"
_MAX_LISTED = 15      # one screen; the file has them all
_MAX_OVERRIDES = 90   # characters of a job's overrides on its line


@dataclass
class Failure:
    num: Any
    overrides: list[str]
    error: str
    output_dir: str
    traceback_path: str | None
    exception: BaseException
    run_id: str | None = None


class SweepSummaryCallback(Callback):
    def __init__(self) -> None:
        self._overrides: list[list[str]] = []  # of every job, to show what varies
        self._failures: list[Failure] = []

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._overrides = []
        self._failures = []

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        self._overrides.append([str(o) for o in (job_return.overrides or [])])
        exc = getattr(job_return, "_return_value", None)
        if job_return.status != JobStatus.FAILED or not isinstance(exc, Exception):
            return
        out_dir = str(OmegaConf.select(config, "hydra.runtime.output_dir", default="") or "")
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        tb_path = None
        try:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            (Path(out_dir) / TRACEBACK_FILE).write_text(text)
            tb_path = str(Path(out_dir) / TRACEBACK_FILE)
        except OSError as write_error:
            log.warning("could not write the traceback of job %s: %s", out_dir, write_error)
        first = (str(exc).strip().splitlines() or [""])[0]
        self._failures.append(Failure(
            num=OmegaConf.select(config, "hydra.job.num", default="?"),
            overrides=self._overrides[-1],
            error=f"{type(exc).__name__}: {first}" if first else type(exc).__name__,
            output_dir=out_dir, traceback_path=tb_path, exception=exc,
            run_id=_run_id(config, out_dir)))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self._failures:
            return
        n_jobs = len(self._overrides)
        lines = summary_lines(self._failures, n_jobs, self._overrides)
        sweep_dir = _sweep_dir(config)
        try:
            sweep_dir.mkdir(parents=True, exist_ok=True)
            (sweep_dir / SUMMARY_FILE).write_text("\n".join(summary_lines(
                self._failures, n_jobs, self._overrides, limit=None)) + "\n")
            lines.append(f"  (all of them: {sweep_dir / SUMMARY_FILE})")
        except OSError:
            pass
        print("\n" + "\n".join(lines), file=sys.stderr, flush=True)
        EXIT.code = EXIT.code or EXIT_JOBS_FAILED
        in_flight = sys.exc_info()[1]
        failed = [f.exception for f in self._failures]
        if in_flight is not None and any(in_flight is exc for exc in failed):
            # the basic sweeper's re-raise of a job's exception, already reported above
            raise SystemExit(EXIT.code)


def summary_lines(failures: list[Failure], n_jobs: int, all_overrides: list[list[str]],
                  limit: int | None = _MAX_LISTED) -> list[str]:
    """``sweep: k of n jobs failed`` and two lines per failed job; a job is named by
    its number and the overrides that tell it from the other jobs of the sweep."""
    common = set.intersection(*map(set, all_overrides)) if len(all_overrides) > 1 else set()
    lines = [f"sweep: {len(failures)} of {n_jobs} jobs failed"]
    for f in failures[:limit]:
        own = " ".join(o for o in f.overrides if o not in common) or " ".join(f.overrides)
        overrides = own if len(own) <= _MAX_OVERRIDES else own[:_MAX_OVERRIDES - 3] + "..."
        where = f.traceback_path or f.output_dir
        run = f"; MLflow run {f.run_id} FAILED" if f.run_id else ""
        lines.append(f"  job #{f.num} [{overrides}]: {f.error}")
        lines.append(f"      traceback: {where}{run}")
    if limit is not None and len(failures) > limit:
        lines.append(f"  ... and {len(failures) - limit} more")
    return lines


def _sweep_dir(config: DictConfig) -> Path:
    from quantexp.tracking.callbacks import sweep_dir_of

    return sweep_dir_of(config)


def _run_id(config: DictConfig, out_dir: str) -> str | None:
    if not out_dir:
        return None
    from quantexp.tracking.lookup import run_id_for_output_dir

    root = OmegaConf.select(config, "hydra.runtime.cwd", default=None)
    return run_id_for_output_dir(config, Path(str(root or ".")), out_dir)


__all__ = ["EXIT_JOBS_FAILED", "SUMMARY_FILE", "TRACEBACK_FILE", "SweepSummaryCallback", "summary_lines"]
