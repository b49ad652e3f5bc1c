"""``ResumableOptunaSweeper``: Hydra's Optuna sweeper, made safe to rerun.

conf/hydra/sweeper/quantexp_optuna.yaml selects it (``override /hydra/sweeper:
quantexp_optuna`` in conf/search/*.yaml). What it adds to the plugin's sweeper, all
of it before the first trial:

- the storage is opened by ``quantexp.search.shared.open_storage`` (an RDB URL, its
  sqlite folder created and schema built under the store's file lock; or
  ``journal:///ABS/PATH`` for Optuna's journal file);
- trials a killed sweeper left RUNNING are marked FAIL + interrupted (those of a
  sweeper still alive, in another process on the same study, are left alone);
- ``n_trials`` is the total the study should end with: trials already done
  (``study.done_count``) are subtracted, whether it came from ``search.n_trials``
  or a plain ``hydra.sweeper.n_trials=N``; with several processes on one study the
  total is theirs together (``quantexp.search.sweep_loop``);
- the sampler's seed is offset by the trials already in the study: a fixed seed
  would replay the same proposals after every restart (or in a second process);
- job numbers are trial numbers, so run names / job folders do not repeat across
  resumes or processes;
- the study records its search definition; a study of that name created for a
  different search is refused with one line (exit 2); objective names are set on
  the study (``set_metric_names``);
- each trial gets user attrs: its output folder, MLflow run id and results path.

Hydra finds a sweeper only among registered plugins: ``register()`` adds this
class (SearchCallback's constructor calls it, before Hydra instantiates the sweeper).
Importing this module stays cheap; optuna and the plugin are imported when used.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from quantexp.search import shared
from quantexp.search import study as st

log = logging.getLogger(__name__)

EXIT_BAD_STUDY = 2


def register() -> None:
    from hydra.core.plugins import Plugins

    Plugins.instance().register(ResumableOptunaSweeper)


def _seeded(sampler: DictConfig, offset: int) -> DictConfig:
    if offset and OmegaConf.select(sampler, "seed", default=None) is not None:
        sampler = OmegaConf.merge(sampler, {"seed": int(sampler.seed) + offset})
    return sampler


class ResumableOptunaSweeper(Sweeper):
    def __init__(self, sampler: Any, direction: Any, storage: Any | None, study_name: str | None,
                 n_trials: int, n_jobs: int, max_failure_rate: float,
                 custom_search_space: str | None, params: DictConfig | None) -> None:
        import optuna
        from hydra.utils import instantiate

        existing: list[Any] = []
        url = str(storage) if storage and study_name else None
        if url:
            storage = shared.open_storage(url)
            try:
                study = optuna.load_study(study_name=str(study_name), storage=storage)
            except KeyError:  # a new study
                study = None
            if study is not None:
                with shared.study_lock(url, str(study_name)):
                    st.mark_interrupted(study)  # trials of dead sweepers only
                existing = study.get_trials(deepcopy=False)
        self.n_existing = len(existing)
        done = st.done_count(existing)
        remaining = max(int(n_trials) - done, 0)
        running = st.taken_count(existing) - done
        self._progress = (f"study {study_name}: {done} trials done of {n_trials}"
                          + (f", {running} running in other processes" if running else "")
                          + f"; up to {remaining - running} to run here" if existing else None)

        def make_sampler(offset: int) -> Any:
            return instantiate(_seeded(sampler, offset), _execution_whitelist_=(
                "hydra_plugins.hydra_optuna_sweeper.*", "optuna.samplers.*"))

        self.sweeper = _impl_class()(make_sampler(self.n_existing), direction, storage, study_name, remaining,
                                     n_jobs, max_failure_rate, custom_search_space, params)
        self.sweeper.first_job = self.n_existing
        self.sweeper.total = int(n_trials)  # the study's total, shared by every process on it
        self.sweeper.storage_url = url
        self.sweeper.seed_offset = self.n_existing
        self.sweeper.reseed = make_sampler

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)
        if self.sweeper.storage and self.sweeper.study_name:
            _check_and_label(self.sweeper)  # needs the config, which setup brings
        if self._progress:
            log.info(self._progress)

    def sweep(self, arguments: list[str]) -> None:
        return self.sweeper.sweep(arguments)


_IMPL: type | None = None


def _impl_class() -> type:
    """A subclass of the plugin's OptunaSweeperImpl, defined on first use (the plugin
    imports optuna at module level)."""
    global _IMPL
    if _IMPL is not None:
        return _IMPL
    from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl

    class Impl(OptunaSweeperImpl):  # type: ignore[misc, valid-type]
        first_job = 0
        total = 0
        storage_url: str | None = None
        seed_offset = 0
        reseed: Any = None
        _pending: list[Any]

        def sweep(self, arguments: list[str]) -> None:
            from quantexp.search.sweep_loop import sweep

            sweep(self, arguments)  # the plugin's loop, with batches claimed from a shared study

        def setup(self, **kwargs: Any) -> None:
            super().setup(**kwargs)
            self.job_idx = self.first_job  # the plugin restarts at 0
            self.launcher = _TrialLauncher(self.launcher, self)

        def _configure_trials(self, trials: list[Any], *args: Any) -> Any:
            self._pending = list(trials)  # the trials of the batch about to be launched
            return super()._configure_trials(trials, *args)

    _IMPL = Impl
    return Impl


def _check_and_label(impl: Any) -> None:
    """Create (or load) the study as the plugin will; refuse a study of this name that
    was created for another search; record the definition and the objective names."""
    import optuna

    directions = impl._get_directions()
    study = optuna.create_study(study_name=impl.study_name, storage=impl.storage,
                                sampler=impl.sampler, directions=directions, load_if_exists=True)
    definition = st.search_definition(impl.config)
    digest = st.search_hash(definition)
    stored = study.user_attrs.get(st.HASH_ATTR)
    if stored is not None and stored != digest:
        print(f"error: study {impl.study_name!r} in {impl.storage_url} was created for another "
              f"search (definition {stored}, this one {digest}; see its user attr "
              f"{st.DEFINITION_ATTR}); drop hydra.sweeper.study_name to get a study of its own",
              file=sys.stderr)
        sys.exit(EXIT_BAD_STUDY)
    if stored is None:
        study.set_user_attr(st.HASH_ATTR, digest)
        study.set_user_attr(st.DEFINITION_ATTR, json.dumps(definition, sort_keys=True, default=str))
    objectives = [str(o) for o in OmegaConf.select(impl.config, "objectives", default=None) or []]
    if objectives and len(objectives) == len(directions) and study.metric_names != objectives:
        import warnings

        with warnings.catch_warnings():  # "experimental since 3.2", stable in use since
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(objectives)


class _TrialLauncher:
    """The sweeper's launcher, plus trial user attrs once each job has returned (the
    plugin tells the trial its state right after, so the trial is still RUNNING)."""

    def __init__(self, launcher: Any, impl: Any) -> None:
        self._launcher = launcher
        self._impl = impl

    def __getattr__(self, name: str) -> Any:
        return getattr(self._launcher, name)

    def launch(self, job_overrides: Any, initial_job_idx: int) -> Any:
        returns = self._launcher.launch(job_overrides, initial_job_idx=initial_job_idx)
        trials = getattr(self._impl, "_pending", [])
        for trial, ret in zip(trials, returns):
            try:
                for key, value in _trial_attrs(ret).items():
                    trial.set_user_attr(key, value)
            except Exception as exc:  # noqa: BLE001 - labels must not fail the trial
                log.warning("trial %d: could not record its run (%s)", trial.number, exc)
        return returns


def _trial_attrs(ret: Any) -> dict[str, str]:
    out_dir = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir", default=None) \
        if ret.hydra_cfg is not None else None
    if out_dir is None:
        return {}
    attrs = {st.OUTPUT_DIR_ATTR: str(out_dir)}
    results = Path(str(out_dir)) / "results.json"
    if results.is_file():
        data = json.loads(results.read_text())
        attrs[st.RESULTS_ATTR] = str(results)
        if data.get("mlflow_run_id"):
            attrs[st.RUN_ID_ATTR] = str(data["mlflow_run_id"])
    else:
        run_id = _run_id_of(ret, str(out_dir))
        if run_id:
            attrs[st.RUN_ID_ATTR] = run_id
    return attrs


def _run_id_of(ret: Any, out_dir: str) -> str | None:
    """The MLflow run of a failed job (no results.json), by its output-folder tag."""
    from quantexp.tracking.lookup import run_id_for_output_dir

    root = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.cwd", default=None)
    return run_id_for_output_dir(ret.cfg, Path(str(root or ".")), out_dir)


__all__ = ["EXIT_BAD_STUDY", "ResumableOptunaSweeper", "register"]
