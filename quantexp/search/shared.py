"""Several sweep processes on one Optuna study (distributed search).

Optuna's storages already let several processes ask and tell trials of one study; what
a resumable, sized search adds needs these pieces, used by the sweeper
(``quantexp.search.sweeper``):

- ``open_storage(url)``: RDB URLs (``sqlite:///ABS/PATH.db``, ``postgresql+psycopg2://...``,
  ``mysql://...``) as ``RDBStorage`` (the sqlite schema built under the store's file
  lock), and ``journal:///ABS/PATH.log`` as Optuna's ``JournalStorage`` on a file:
  processes of one machine append to it, no database needed.
- ``study_lock(url, study)``: the lock workers take around "count the study's trials,
  ask a batch": a file lock beside a sqlite or journal file, a PostgreSQL advisory
  lock (``quantexp.tracking.store.store_lock``). Under it a batch is claimed whole, so the study ends with exactly
  ``n_trials`` (the total), trial numbers of a batch follow each other (job number ==
  trial number, in any worker) and no two workers claim the last slot.
- owners and heartbeats: each trial records the process that asked it (host, pid,
  start time) and a heartbeat it refreshes while the trial runs. A RUNNING trial is
  interrupted (its worker died: kill -9, a crash, a lost node) when its owner is on
  this host and gone, or on another host and silent for ``GRACE_S``; a live worker's
  trials are never touched, so a second worker starting on the study leaves the
  first one's running trials alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from quantexp.provenance import process_alive, process_identity

log = logging.getLogger(__name__)

JOURNAL = "journal:///"
OWNER_ATTR = "quantexp.owner"
HEARTBEAT_ATTR = "quantexp.heartbeat"
HEARTBEAT_S = 30.0
GRACE_S = 300.0  # a trial of another host silent this long is taken as interrupted


def journal_path(url: str) -> Path | None:
    return Path(url[len(JOURNAL) - 1:]) if url.startswith(JOURNAL) else None


def open_storage(url: str) -> Any:
    """The Optuna storage of ``url`` (see the module docstring); folders are created."""
    import optuna

    journal = journal_path(url)
    if journal is not None:
        from optuna.storages.journal import JournalFileBackend

        journal.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    from quantexp.search import ensure_sqlite_dir
    from quantexp.tracking.store import retry_locked, schema_lock

    ensure_sqlite_dir(url)
    with schema_lock(url):
        return retry_locked(optuna.storages.RDBStorage, url)


@contextlib.contextmanager
def study_lock(url: str | None, study_name: str) -> Iterator[None]:
    """Hold the claim lock of study ``study_name`` in ``url`` (``tracking.store.store_lock``:
    a file lock for sqlite and journal files, an advisory lock in PostgreSQL)."""
    from quantexp.tracking.store import store_lock

    with store_lock(url, f"quantexp.claim:{study_name}") as held:
        if url and not held:
            log.warning("no lock for a study in %s: processes sharing it may overshoot n_trials by a batch",
                        url.split(":", 1)[0])
        yield


def owner() -> dict[str, Any]:
    """This process, as a trial records its owner."""
    return process_identity()


def owner_alive(user_attrs: dict[str, Any], now: float | None = None) -> bool:
    """Is the process that asked this trial still there? (No owner recorded: no.) On this
    host its pid says; on another, a heartbeat newer than ``GRACE_S``."""
    raw = user_attrs.get(OWNER_ATTR)
    if not raw:
        return False
    alive = process_alive(json.loads(raw) if isinstance(raw, str) else dict(raw))
    if alive is None:
        return (now or time.time()) - float(user_attrs.get(HEARTBEAT_ATTR) or 0.0) < GRACE_S
    return alive


def stamp(trial: Any, me: dict[str, Any]) -> None:
    trial.set_user_attr(OWNER_ATTR, json.dumps(me))
    trial.set_user_attr(HEARTBEAT_ATTR, time.time())


class Heartbeat:
    """While the block runs, refresh the heartbeat of ``trials`` every ``HEARTBEAT_S``."""

    def __init__(self, trials: list[Any], interval_s: float = HEARTBEAT_S) -> None:
        self.trials = trials
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="quantexp-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for trial in self.trials:
                try:
                    trial.set_user_attr(HEARTBEAT_ATTR, time.time())
                except Exception as exc:  # noqa: BLE001 - a missed beat is not fatal
                    log.debug("heartbeat of trial %d failed: %s", trial.number, exc)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def claim(study: Any, url: str | None, total: int, batch: int,
          before_ask: Callable[[int], None] | None = None) -> list[Any]:
    """Under the study lock: mark the trials of dead workers interrupted, then ask up to
    ``batch`` trials while the study has fewer than ``total`` (done + running). Each
    trial is stamped with its owner; [] when the study has its trials. ``before_ask``
    gets the number of trials in the study (the number the first new one will have)."""
    from quantexp.search.study import mark_interrupted, taken_count

    with study_lock(url, study.study_name):
        mark_interrupted(study)
        existing = study.get_trials(deepcopy=False)
        free = total - taken_count(existing)
        if free > 0 and before_ask is not None:
            before_ask(len(existing))
        trials = [study.ask() for _ in range(max(0, min(batch, free)))]
        me = owner()
        for trial in trials:
            stamp(trial, me)
    return trials


__all__ = ["GRACE_S", "HEARTBEAT_ATTR", "HEARTBEAT_S", "Heartbeat", "JOURNAL", "OWNER_ATTR", "claim",
           "journal_path", "open_storage", "owner", "owner_alive", "stamp", "study_lock"]
