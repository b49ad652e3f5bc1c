"""Sweep callbacks that report across the jobs of a Hydra multirun.

``PtqVsQatCallback`` (named in conf/config.yaml under hydra.callbacks, after the
MLflow one) writes ptq_static vs qat/qat_finetune side by side when the sweep ran
them, into the sweep folder and onto the sweep's MLflow parent run. Hydra calls
``on_multirun_end`` in reverse order, so this runs while the parent is still open.
Reporting problems are warnings: they never fail the sweep.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from quantexp.tracking import PARENT_RUN_ENV, PARENT_RUN_FILE
from quantexp.tracking.callbacks import project_root_of, sweep_dir_of

log = logging.getLogger(__name__)


class PtqVsQatCallback(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from quantexp.report.ptq_vs_qat import log_comparison, write_comparison

        sweep_dir = sweep_dir_of(config)
        try:
            parent = os.environ.get(PARENT_RUN_ENV)
            if parent is None and (sweep_dir / PARENT_RUN_FILE).is_file():
                parent = (sweep_dir / PARENT_RUN_FILE).read_text().strip() or None
            if parent is None or not OmegaConf.select(config, "tracking.enabled", default=True):
                write_comparison(sweep_dir)
                return
            from quantexp.tracking.store import open_client

            client, _ = open_client(OmegaConf.select(config, "tracking.uri", default=None),
                                    project_root_of(config),
                                    OmegaConf.select(config, "tracking.experiment", default="quantexp"))
            log_comparison(client, parent, sweep_dir)
        except Exception as exc:  # noqa: BLE001 - reporting must never stop the sweep
            log.warning("no PTQ-vs-QAT comparison for sweep %s (%s: %s)", sweep_dir, type(exc).__name__, exc)
