"""The persistent Optuna study of a search: what defines it, what counts as done,
and the clean-up a resume needs after an interrupted (or kill -9'd) sweep.

- ``search_definition(cfg)``: everything that decides what a trial measures (the
  model, method, precision, hardware, exporter, objectives and their directions,
  the choices, eval/bench settings, a sensitivity table's content), minus what only
  sizes or judges the search (``search.n_trials``, ``search.budget``), what says
  where and how things run (``hydra``, ``tracking``, ``cache_dir``, ``launch``) and the per-trial
  ``method.assignment``. ``search_hash`` is its short sha256; the
  ``quantexp.search_key`` resolver puts it in the default study name, so a changed
  search starts a new study instead of mixing incomparable values as one objective.
- ``done_count``: COMPLETE trials plus FAIL ones that really failed (not the ones
  marked interrupted), what ``hydra.sweeper.n_trials`` / ``search.n_trials`` count.
- ``mark_interrupted``: trials a dead sweeper left RUNNING become FAIL with
  ``quantexp.interrupted`` (they do not count as done; the rerun redoes them).
  Trials of a live sweeper are left alone: several sweepers may work on one study
  at a time (``quantexp.search.shared``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

INTERRUPTED_ATTR = "quantexp.interrupted"
DEFINITION_ATTR = "quantexp.search_definition"
HASH_ATTR = "quantexp.search_hash"
RUN_ID_ATTR = "quantexp.mlflow_run_id"
RESULTS_ATTR = "quantexp.results_path"
OUTPUT_DIR_ATTR = "quantexp.output_dir"

_NOT_DEFINING = ("hydra", "tracking", "cache_dir", "launch")
_NOT_DEFINING_NESTED = (("search", "n_trials"), ("search", "budget"), ("method", "assignment"))


def search_definition(cfg: DictConfig) -> dict[str, Any]:
    """The part of the composed config ``cfg`` that defines the search (see above)."""
    if "model" not in cfg or "objectives" not in cfg:
        # A config without them (a masked copy of the hydra node) would hash to the
        # same value for every search: refuse instead.
        raise ValueError("quantexp.search_key needs the whole config (model, objectives)")
    out: dict[str, Any] = {}
    for key in cfg:
        if key in _NOT_DEFINING:
            continue
        node = cfg._get_node(key)
        out[str(key)] = (OmegaConf.to_container(node, resolve=True)  # type: ignore[arg-type]
                         if OmegaConf.is_config(node) else cfg[key])
    for outer, inner in _NOT_DEFINING_NESTED:
        if isinstance(out.get(outer), dict):
            out[outer].pop(inner, None)
    directions = OmegaConf.select(cfg, "hydra.sweeper.direction", default=None)
    if directions is not None:
        directions = [directions] if isinstance(directions, str) else list(directions)
        out["directions"] = [str(getattr(d, "name", d)) for d in directions]
    table = (out.get("search") or {}).get("sensitivity_table")
    if table and Path(str(table)).is_file():
        # the path alone would miss a rewritten table (it prunes the space)
        out["sensitivity_table_sha256"] = hashlib.sha256(Path(str(table)).read_bytes()).hexdigest()
    return out


def search_hash(definition: dict[str, Any]) -> str:
    text = json.dumps(definition, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def search_key(*, _root_: DictConfig) -> str:
    """The ``${quantexp.search_key:}`` resolver: the hash of the whole config's search."""
    return search_hash(search_definition(_root_))


def done_count(trials: list[Any]) -> int:
    import optuna

    state = optuna.trial.TrialState
    return sum(t.state == state.COMPLETE
               or (t.state == state.FAIL and not t.user_attrs.get(INTERRUPTED_ATTR))
               for t in trials)


def taken_count(trials: list[Any]) -> int:
    """Trials that count toward the study's total now: done ones and those still
    running or waiting (a live worker's; dead workers' are marked interrupted first)."""
    import optuna

    state = optuna.trial.TrialState
    return done_count(trials) + sum(t.state in (state.RUNNING, state.WAITING) for t in trials)


def mark_interrupted(study: Any) -> int:
    """RUNNING trials of ``study`` whose worker is gone (``shared.owner_alive``) -> FAIL +
    interrupted; returns how many. A live worker's running trials are left alone."""
    import optuna

    from quantexp.search.shared import owner_alive

    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    now = time.time()
    dead = [t for t in running if not owner_alive(t.user_attrs, now)]
    for t in dead:
        study._storage.set_trial_user_attr(t._trial_id, INTERRUPTED_ATTR, True)
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        log.warning("trial %d was left RUNNING by an interrupted sweep: marked FAIL, redone", t.number)
    return len(dead)


__all__ = ["DEFINITION_ATTR", "HASH_ATTR", "INTERRUPTED_ATTR", "OUTPUT_DIR_ATTR", "RESULTS_ATTR",
           "RUN_ID_ATTR", "done_count", "mark_interrupted", "search_definition", "search_hash",
           "search_key", "taken_count"]
