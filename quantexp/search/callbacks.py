"""End of a precision search: the Pareto front, written, logged and checked.

``SearchCallback`` (hydra.callbacks.search in conf/search/*.yaml):

- its constructor registers the resumable Optuna sweeper (quantexp.search.sweeper)
  with Hydra, which instantiates callbacks before the sweeper;
- on_multirun_end: reads every COMPLETE trial of the study (this sweep's and
  earlier ones'), writes ``pareto_front.json`` / ``.csv`` in the sweep directory,
  logs them to the sweep's MLflow parent run, prints the front, and checks
  ``search.budget``: when no trial meets it, prints
  ``no configuration meets <budget>; closest: ...`` and makes run.py exit with
  EXIT_NO_CONFIGURATION (the study and its trials are kept).

Hydra imports this module on every start: optuna/mlflow are imported inside.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from quantexp.search import EXIT, EXIT_NO_CONFIGURATION

log = logging.getLogger(__name__)

BUDGET_OBJECTIVE = {"max_accuracy_drop": "accuracy_drop", "max_size_mb": "size_mb",
                    "max_latency_ms": "latency_ms"}


def _study(config: DictConfig):
    import optuna

    from quantexp.search.shared import open_storage

    storage = OmegaConf.select(config, "hydra.sweeper.storage", default=None)
    name = OmegaConf.select(config, "hydra.sweeper.study_name", default=None)
    if not storage or not name:
        return None
    try:
        return optuna.load_study(study_name=str(name), storage=open_storage(str(storage)))
    except KeyError:
        return None


def _directions(config: DictConfig) -> list[str]:
    d = OmegaConf.select(config, "hydra.sweeper.direction")
    d = list(d) if not isinstance(d, str) else [d]
    return [str(getattr(x, "name", x)) for x in d]


class SearchCallback(Callback):
    def __init__(self) -> None:
        from quantexp.search.sweeper import register

        register()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if isinstance(sys.exc_info()[1], SystemExit):
            return  # the sweep was refused (a study of another search) or exited: no report
        try:
            self._report(config)
        except Exception as exc:  # noqa: BLE001 - the report must not hide the sweep's own errors
            log.error("search report failed: %s: %s", type(exc).__name__, exc)

    def _report(self, config: DictConfig) -> None:
        import optuna

        from quantexp.analysis.pareto import pareto_front
        from quantexp.quant.solver import Budget

        study = _study(config)
        if study is None:
            return
        objectives = [str(o) for o in OmegaConf.select(config, "objectives")]
        directions = _directions(config)
        trials = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
        counts = {s.name: sum(t.state == s for t in study.get_trials(deepcopy=False))
                  for s in optuna.trial.TrialState}
        front_idx = pareto_front([t.values for t in trials], directions) if trials else []
        front = sorted((trials[i] for i in front_idx), key=lambda t: t.values[0])
        rows = [{"trial": t.number, **dict(zip(objectives, t.values)), **_assignment(t.params)}
                for t in front]
        budget_cfg = OmegaConf.select(config, "search.budget")
        budget = Budget(budget_cfg.max_accuracy_drop, budget_cfg.max_size_mb, budget_cfg.max_latency_ms)
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_absolute():
            sweep_dir = Path(str(config.hydra.runtime.cwd)) / sweep_dir
        sweep_dir.mkdir(parents=True, exist_ok=True)
        summary: dict[str, Any] = {"study": study.study_name, "objectives": objectives,
                                   "directions": directions, "trials": counts, "pareto_front": rows}
        meeting, closest = self._budget(budget, objectives, trials)
        if budget.items():
            summary["budget"] = {"limits": budget.items(), "n_meeting": len(meeting),
                                 "closest": closest}
        (sweep_dir / "pareto_front.json").write_text(json.dumps(summary, indent=2, default=str))
        with (sweep_dir / "pareto_front.csv").open("w", newline="") as fh:
            cols = list(dict.fromkeys(k for r in rows for k in r)) or ["trial"]
            writer = csv.DictWriter(fh, fieldnames=cols)
            writer.writeheader()
            writer.writerows(rows)
        self._log_mlflow(config, sweep_dir, summary)
        print(f"\nPareto front of study {study.study_name} ({len(trials)} complete, "
              f"{counts.get('FAIL', 0)} failed trials): {' / '.join(f'{o} ({d})' for o, d in zip(objectives, directions))}")
        for r in rows:
            values = "  ".join(f"{o}={r[o]:.4g}" for o in objectives)
            layers = ", ".join(f"{k}={v}" for k, v in r.items() if k not in objectives and k != "trial")
            print(f"  trial {r['trial']:>3}: {values}  |  {layers}")
        print(f"written: {sweep_dir / 'pareto_front.json'}")
        if budget.items():
            if meeting:
                print(f"{len(meeting)} trial(s) meet {budget}")
                for i, (name, direction) in enumerate(zip(objectives, directions)):
                    sign = 1.0 if direction == "minimize" else -1.0
                    best = min(meeting, key=lambda t, i=i, sign=sign: sign * t.values[i])
                    summary.setdefault("best_under_budget", {})[name] = {
                        "trial": best.number, **dict(zip(objectives, best.values)), **_assignment(best.params)}
                    print(f"  best {name} under the budget: trial {best.number}: "
                          + "  ".join(f"{o}={v:.4g}" for o, v in zip(objectives, best.values))
                          + "  |  " + ", ".join(f"{k}={v}" for k, v in _assignment(best.params).items()))
                (sweep_dir / "pareto_front.json").write_text(json.dumps(summary, indent=2, default=str))
            else:
                print(f"no configuration meets {budget}; closest: {closest}", file=sys.stderr)
                EXIT.code = EXIT_NO_CONFIGURATION

    @staticmethod
    def _budget(budget, objectives: list[str], trials: list) -> tuple[list, dict]:
        checkable = {k: v for k, v in budget.items().items() if BUDGET_OBJECTIVE[k] in objectives}
        if not budget.items():
            return [], {}
        if not trials:
            return [], {"none": "no trial completed"}
        if len(checkable) < len(budget.items()):
            missing = [k for k in budget.items() if k not in checkable]
            log.warning("search.budget %s cannot be checked: objectives do not include %s",
                        missing, [BUDGET_OBJECTIVE[k] for k in missing])
        meeting, scored = [], []
        for t in trials:
            values = dict(zip(objectives, t.values))
            excess = budget.excess(values)
            if budget.met_by(values):
                meeting.append(t)
            scored.append((sum(excess.values()), t))
        best = min(scored, key=lambda s: s[0])[1]
        return meeting, {"trial": best.number, **dict(zip(objectives, best.values)),
                         **_assignment(best.params)}

    @staticmethod
    def _log_mlflow(config: DictConfig, sweep_dir: Path, summary: dict[str, Any]) -> None:
        from quantexp.tracking import PARENT_RUN_FILE

        parent_file = sweep_dir / PARENT_RUN_FILE
        if not parent_file.is_file() or not OmegaConf.select(config, "tracking.enabled", default=True):
            return
        try:
            from quantexp.tracking.store import open_client, retry_locked

            client, _ = open_client(OmegaConf.select(config, "tracking.uri", default=None),
                                    Path(str(config.hydra.runtime.cwd)),
                                    OmegaConf.select(config, "tracking.experiment", default="quantexp"))
            parent = parent_file.read_text().strip()
            for name in ("pareto_front.json", "pareto_front.csv"):
                retry_locked(client.log_artifact, parent, str(sweep_dir / name), "search")
            retry_locked(client.set_tag, parent, "quantexp.pareto_size", str(len(summary["pareto_front"])))
        except Exception as exc:  # noqa: BLE001
            log.warning("MLflow: could not log the Pareto front (%s: %s)", type(exc).__name__, exc)


def _assignment(params: dict[str, Any]) -> dict[str, Any]:
    from quantexp.search.space import assignment_of

    a = assignment_of(params)
    return a if a else dict(params)


__all__ = ["SearchCallback"]
