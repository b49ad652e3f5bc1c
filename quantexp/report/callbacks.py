"""Sweep callbacks that report across the jobs of a Hydra multirun.

``ReportCallback`` writes the cross-run report (comparison table, Pareto fronts,
report.html, CSV/Markdown, PNGs; quantexp.report.build) into the sweep folder at the
end of every multirun, prints the table, and logs the files to the sweep's MLflow
parent run under ``report/``.

``PtqVsQatCallback`` (named in conf/config.yaml under hydra.callbacks, after the
MLflow one) writes ptq_static vs qat/qat_finetune side by side when the sweep ran
them, into the sweep folder and onto the sweep's MLflow parent run. Hydra calls
``on_multirun_end`` in reverse order, so this runs while the parent is still open.
Reporting problems are warnings: they never fail the sweep.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from quantexp.tracking import PARENT_RUN_ENV, PARENT_RUN_FILE
from quantexp.tracking.callbacks import project_root_of, sweep_dir_of

log = logging.getLogger(__name__)


def _parent_client(config: DictConfig, sweep_dir):
    """(client, parent run id) of the sweep's MLflow parent run, or (None, None)."""
    parent = os.environ.get(PARENT_RUN_ENV)
    if parent is None and (sweep_dir / PARENT_RUN_FILE).is_file():
        parent = (sweep_dir / PARENT_RUN_FILE).read_text().strip() or None
    if parent is None or not OmegaConf.select(config, "tracking.enabled", default=True):
        return None, None
    from quantexp.tracking.store import open_client

    client, _ = open_client(OmegaConf.select(config, "tracking.uri", default=None), project_root_of(config),
                            OmegaConf.select(config, "tracking.experiment", default="quantexp"))
    return client, parent


class ReportCallback(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from rich.console import Console

        from quantexp.report.build import write_report
        from quantexp.report.sweeps import read_sweep

        sweep_dir = sweep_dir_of(config)
        try:
            results = read_sweep(sweep_dir)
            if not results:
                log.warning("no report for sweep %s: no job wrote results.json", sweep_dir)
                return
            console = Console(width=None if sys.stdout.isatty() else 220)
            rows, files = write_report(results, sweep_dir, f"sweep {sweep_dir}", console=console)
            client, parent = _parent_client(config, sweep_dir)
            if client is not None:
                _log_best(client, parent, rows, OmegaConf.select(config, "eval.max_accuracy_drop", default=None),
                          files["comparison.md"].read_text())
            if client is not None:
                from quantexp.tracking.store import retry_locked

                for path in files.values():
                    retry_locked(client.log_artifact, parent, str(path), "report")
        except Exception as exc:  # noqa: BLE001 - reporting must never stop the sweep
            log.warning("no report for sweep %s (%s: %s)", sweep_dir, type(exc).__name__, exc)


def _log_best(client, parent: str, rows, max_drop, table_md: str) -> None:
    """The parent run's headline: the best candidate's figures as ``best.*`` metrics, its
    run and label as tags, and the comparison table as the run's description."""
    import time

    from mlflow.entities import Metric, RunTag

    from quantexp.report.compare import best_row
    from quantexp.tracking.store import retry_locked

    best = best_row(rows, max_drop)
    tags = [RunTag("mlflow.note.content", table_md[:8000])]
    metrics = []
    if best is not None:
        now = int(time.time() * 1000)
        values = {"best.accuracy_pct": best.accuracy_pct, "best.drop_pts": best.drop_pts, "best.p50_ms": best.p50_ms,
                  "best.speedup": best.speedup, "best.size_mb": best.size_mb}
        metrics = [Metric(k, float(v), now, 0) for k, v in values.items() if v is not None]
        tags += [RunTag("quantexp.best", best.label), RunTag("quantexp.best_run_id", best.run_id or "-")]
    retry_locked(client.log_batch, parent, metrics=metrics, tags=tags)


class PtqVsQatCallback(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from quantexp.report.ptq_vs_qat import log_comparison, write_comparison

        sweep_dir = sweep_dir_of(config)
        try:
            client, parent = _parent_client(config, sweep_dir)
            if client is None:
                write_comparison(sweep_dir)
                return
            log_comparison(client, parent, sweep_dir)
        except Exception as exc:  # noqa: BLE001 - reporting must never stop the sweep
            log.warning("no PTQ-vs-QAT comparison for sweep %s (%s: %s)", sweep_dir, type(exc).__name__, exc)
