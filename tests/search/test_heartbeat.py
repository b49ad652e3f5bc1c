"""A running trial's heartbeat (quantexp.search.shared.Heartbeat): refreshed while its
job runs, so that another process on the study does not take it for a dead worker's."""

from __future__ import annotations

import time

import optuna

from quantexp.search.shared import HEARTBEAT_ATTR, Heartbeat, owner, stamp


def test_the_heartbeat_is_refreshed_while_the_block_runs_and_stops_after():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    trial = study.ask()
    stamp(trial, owner())
    first = study.trials[0].user_attrs[HEARTBEAT_ATTR]
    with Heartbeat([trial], interval_s=0.05):
        time.sleep(0.4)
    beat = study.trials[0].user_attrs[HEARTBEAT_ATTR]
    assert beat > first
    time.sleep(0.2)
    assert study.trials[0].user_attrs[HEARTBEAT_ATTR] == beat  # the thread has stopped
