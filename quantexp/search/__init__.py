"""Precision search: the solver (``solver``), the Optuna search space generated from
the model (``space``), the end-of-sweep Pareto report (``callbacks``), and the
Pareto/hypervolume maths (``quantexp.analysis.pareto``).

This package's ``__init__`` stays free of heavy imports: ``register_resolvers`` runs
on every ``run.py`` start. ``EXIT`` carries an exit code set by the end-of-sweep
report (a budget no trial meets) to ``run.py``, which Hydra gives no other way to
set after a multirun.
"""

from __future__ import annotations

from typing import Any


class _Exit:
    code: int = 0


EXIT = _Exit()
EXIT_NO_CONFIGURATION = 3
INTERRUPTED_ATTR = "quantexp.interrupted"


def remaining_trials(storage: Any, study_name: Any, total: Any) -> int:
    """``total`` minus the trials the study has already finished (COMPLETE, or FAIL
    other than trials marked interrupted): rerunning an interrupted search runs only
    what is missing. A study that does not exist yet needs all ``total``."""
    total = int(total)
    if storage in (None, "", "None") or study_name in (None, "", "None"):
        return total
    ensure_sqlite_dir(str(storage))
    import optuna

    try:
        study = optuna.load_study(study_name=str(study_name), storage=str(storage))
    except KeyError:  # no such study yet
        return total
    done = 0
    for t in study.get_trials(deepcopy=False):
        if t.state == optuna.trial.TrialState.COMPLETE or (
                t.state == optuna.trial.TrialState.FAIL and not t.user_attrs.get(INTERRUPTED_ATTR)):
            done += 1
    return max(total - done, 0)


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


__all__ = ["EXIT", "EXIT_NO_CONFIGURATION", "ensure_sqlite_dir", "register_resolvers", "remaining_trials"]
