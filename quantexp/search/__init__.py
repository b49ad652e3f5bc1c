"""Precision search: the Optuna search space generated from the model (``space``), the
persistent study's definition and resume rules (``study``), the resumable Optuna
sweeper (``sweeper``), the end-of-sweep Pareto report (``callbacks``); the
Pareto/hypervolume maths live in ``quantexp.analysis.pareto``.

This package's ``__init__`` stays free of heavy imports: ``register_resolvers`` runs
on every ``run.py`` start. ``EXIT`` (``quantexp.tracking.EXIT``, shared with the sweep
summary) carries an exit code set by the end-of-sweep report (a budget no trial
meets) to ``run.py``, which Hydra gives no other way to set after a multirun.
"""

from __future__ import annotations

from typing import Any

from quantexp.tracking import EXIT

EXIT_NO_CONFIGURATION = 3
INTERRUPTED_ATTR = "quantexp.interrupted"  # quantexp.search.study.INTERRUPTED_ATTR


def remaining_trials(storage: Any, study_name: Any, total: Any) -> int:
    """``total`` minus the trials the study has already finished (COMPLETE, or FAIL
    other than trials marked interrupted). A study that does not exist yet needs all
    ``total``. (The sweeper counts the same way itself: ``study.done_count``.)"""
    total = int(total)
    if storage in (None, "", "None") or study_name in (None, "", "None"):
        return total
    import optuna

    from quantexp.search.shared import open_storage
    from quantexp.search.study import done_count

    try:
        study = optuna.load_study(study_name=str(study_name), storage=open_storage(str(storage)))
    except KeyError:  # no such study yet
        return total
    return max(total - done_count(study.get_trials(deepcopy=False)), 0)


def ensure_sqlite_dir(storage: str) -> None:
    """Create the folder of a ``sqlite:///ABS/PATH.db`` storage: SQLite creates the
    file but not its folder ("unable to open database file" on a first search,
    where ``optuna/`` does not exist yet)."""
    from pathlib import Path

    prefix = "sqlite:///"
    if storage.startswith(prefix) and storage[len(prefix):] not in ("", ":memory:"):
        Path(storage[len(prefix):]).parent.mkdir(parents=True, exist_ok=True)


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("quantexp.remaining_trials"):
        OmegaConf.register_resolver("quantexp.remaining_trials", remaining_trials,
                                    annotation_validation="off")
    if not OmegaConf.has_resolver("quantexp.search_key"):
        from quantexp.search.study import search_key

        OmegaConf.register_resolver("quantexp.search_key", search_key, annotation_validation="off")


__all__ = ["EXIT", "EXIT_NO_CONFIGURATION", "ensure_sqlite_dir", "register_resolvers", "remaining_trials"]
