"""The Optuna sweeper's loop (``hydra_plugins.hydra_optuna_sweeper._impl.OptunaSweeperImpl.sweep``),
with each batch claimed from a study other sweep processes may share.

What differs from the plugin's loop: a batch is asked under the study's lock
(``quantexp.search.shared.claim``) while the study has fewer trials than its total, so
several processes on one study end with exactly ``n_trials`` trials between them; the
batch is launched with the job number of its first trial (job number == trial number,
whichever process ran it); the trials' heartbeat is kept while they run; the sampler is
seeded, at the first claim, with the seed plus the trials already in the study, so
processes that start together do not propose the same configurations. Telling the
results, the failure rate and ``optimization_results.yaml`` are the plugin's.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from omegaconf import OmegaConf

from quantexp.search import shared

log = logging.getLogger(__name__)

SEED_OFFSET_ATTR = "quantexp.seed_offset"  # the sampler's seed = the configured seed + this


def sweep(impl: Any, arguments: list[str]) -> None:
    import optuna
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    impl._process_searchspace_config()
    params_conf = impl._parse_sweeper_params_config()
    params_conf.extend(arguments)
    is_grid = isinstance(impl.sampler, functools.partial) and impl.sampler.func == optuna.samplers.GridSampler
    space, fixed_params, fixed_overrides = create_params_from_overrides(params_conf)
    total = impl.total
    if is_grid:
        grid = {name: impl._to_grid_sampler_choices(d) for name, d in space.items()}
        impl.sampler = impl.sampler(grid)
        size = 1
        for values in grid.values():
            size *= len(values)
        total = min(total, size)
    for name in fixed_params:
        space.pop(name, None)
    directions = impl._get_directions()
    study = optuna.create_study(study_name=impl.study_name, storage=impl.storage, sampler=impl.sampler,
                                directions=directions, load_if_exists=True)
    log.info(f"Study name: {study.study_name}; storage: {impl.storage_url or 'in memory'}; "
             f"sampler: {type(impl.sampler).__name__}; directions: {directions}")

    def reseed(n_in_study: int) -> None:
        # the seed moves on with the trials already there, as on a resume: a process
        # that starts beside another must not replay the other's proposals
        if n_in_study != impl.seed_offset and impl.reseed is not None:
            study.sampler = impl.reseed(n_in_study)
            impl.seed_offset = n_in_study

    while True:
        trials = shared.claim(study, impl.storage_url, total, impl.n_jobs, before_ask=reseed)
        if not trials:
            break
        for trial in trials:  # which sampler proposed it: a resumed search must not replay a seed
            trial.set_user_attr(SEED_OFFSET_ATTR, impl.seed_offset)
        impl.job_idx = trials[0].number
        overrides = impl._configure_trials(trials, space, fixed_params, fixed_overrides)
        with shared.Heartbeat(trials):
            returns = impl.launcher.launch(overrides, initial_job_idx=impl.job_idx)
        impl.job_idx += len(returns)
        failures = [e for trial, ret in zip(trials, returns) if (e := _tell(study, trial, ret, directions))]
        if len(failures) / len(returns) > impl.max_failure_rate:
            log.error(f"Failed {failures} times out of {len(returns)} with max_failure_rate={impl.max_failure_rate}.")
            for ret in returns:
                ret.return_value  # JobReturn raises the job's own exception, with its traceback
    _save_results(impl, study, directions)


def _tell(study: Any, trial: Any, ret: Any, directions: list[str]) -> Exception | None:
    import optuna

    try:
        if len(directions) == 1:
            values = [float(ret.return_value)]
        else:
            values = [float(v) for v in ret.return_value]
            if len(values) != len(directions):
                raise ValueError(f"The number of the values and the number of the objectives are mismatched. "
                                 f"Expect {len(directions)}, but actually {len(values)}.")
        study.tell(trial=trial, state=optuna.trial.TrialState.COMPLETE, values=values)
        return None
    except Exception as exc:  # noqa: BLE001 - a failed job (or a value that is no float) is a FAIL trial
        study.tell(trial=trial, state=optuna.trial.TrialState.FAIL, values=None)
        log.warning(f"Failed experiment: {exc}")
        return exc


def _save_results(impl: Any, study: Any, directions: list[str]) -> None:
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        return
    if len(directions) < 2:
        best = study.best_trial
        results = {"name": "optuna", "best_params": best.params, "best_value": best.value}
        log.info(f"Best parameters: {best.params}; best value: {best.value}")
    else:
        front = study.best_trials
        results = {"name": "optuna", "solutions": [{"params": t.params, "values": t.values} for t in front]}
        log.info(f"Number of Pareto solutions: {len(front)}")
    OmegaConf.save(OmegaConf.create(results), f"{impl.config.hydra.sweep.dir}/optimization_results.yaml")


__all__ = ["SEED_OFFSET_ATTR", "sweep"]
