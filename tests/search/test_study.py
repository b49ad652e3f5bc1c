"""What names a persistent search study: the default study name carries a hash of the
search's definition (real Hydra composition of conf/, no sweep run), so a changed
search does not resume an old study; what only sizes or judges the search does not
change it. Also what counts as done on resume (a real Optuna study in sqlite)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from quantexp.api import CONF_DIR, register
from quantexp.search.study import DEFINITION_ATTR, INTERRUPTED_ATTR, done_count, mark_interrupted


def _study_name(*overrides: str) -> str:
    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name="config", overrides=["+search=mixed_precision", *overrides],
                      return_hydra_config=True)
    return str(OmegaConf.select(cfg, "hydra.sweeper.study_name"))


def test_default_study_name_is_keyed_by_the_search_definition():
    base = _study_name()
    assert base.startswith("mixed_cnn_") and len(base) == len("mixed_cnn_") + 10
    assert _study_name() == base  # deterministic
    # sizing, budget, where things go and the per-trial assignment: the same search
    assert _study_name("search.n_trials=3", "hydra.sweeper.n_trials=5", "search.budget.max_size_mb=1",
                       "cache_dir=/elsewhere", "tracking.experiment=other",
                       "++method.assignment.conv1=int8") == base
    changed = {
        "choices": _study_name("search.choices=[fp32,int8]"),
        "objectives": _study_name("objectives=[accuracy_drop,latency_ms]"),
        "model config": _study_name("model.channels=[8,16]"),
        "model data": _study_name("model.n_train=300"),
        "directions": _study_name("hydra.sweeper.direction=[minimize,maximize]"),
        "measurement": _study_name("+debug=tiny"),
        "seed": _study_name("seed=1"),
    }
    assert base not in changed.values(), changed
    assert len(set(changed.values())) == len(changed), changed


def test_sensitivity_table_content_is_part_of_the_definition(tmp_path):
    table = tmp_path / "sensitivity.csv"
    table.write_text("layer,dtype,accuracy_drop_points\nconv1,int4,5.0\n")
    first = _study_name(f"search.sensitivity_table={table}")
    table.write_text("layer,dtype,accuracy_drop_points\nconv1,int4,0.1\n")
    assert _study_name(f"search.sensitivity_table={table}") != first


def test_done_count_and_interrupted_trials(tmp_path):
    import optuna

    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/s.db",
                                directions=["minimize", "minimize"])
    study.tell(study.ask(), [1.0, 2.0])
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)  # a trial that really failed
    study.ask()  # left RUNNING by a killed sweeper
    assert done_count(study.get_trials()) == 2
    assert mark_interrupted(study) == 1
    trials = study.get_trials()
    assert trials[2].state.name == "FAIL" and trials[2].user_attrs[INTERRUPTED_ATTR] is True
    assert done_count(trials) == 2  # the interrupted one is redone, not counted
    assert DEFINITION_ATTR == "quantexp.search_definition"


def test_search_key_refuses_a_partial_config():
    from quantexp.search.study import search_definition

    with pytest.raises(ValueError, match="whole config"):
        search_definition(OmegaConf.create({"hydra": {"sweeper": {"direction": ["minimize"]}}}))


def test_resumable_sweeper_counts_done_trials_and_moves_the_seed_on(tmp_path):
    import optuna

    from quantexp.search.sweeper import ResumableOptunaSweeper

    storage = f"sqlite:///{tmp_path}/new/folder/s.db"  # the folder does not exist yet

    def sweeper(n_trials: int) -> ResumableOptunaSweeper:
        sampler = OmegaConf.create({"_target_": "optuna.samplers.RandomSampler", "seed": 7})
        return ResumableOptunaSweeper(sampler, ["minimize", "minimize"], storage, "s", n_trials, 1, 1.0,
                                      None, None)

    fresh = sweeper(4)
    assert fresh.sweeper.n_trials == 4 and fresh.n_existing == 0
    study = optuna.create_study(study_name="s", storage=storage, directions=["minimize", "minimize"])
    study.tell(study.ask(), [1.0, 2.0])
    study.ask()  # killed mid-trial
    resumed = sweeper(4)
    assert resumed.sweeper.n_trials == 3  # 1 done; the interrupted one is redone
    assert resumed.sweeper.first_job == 2  # job numbers continue after trials 0 and 1
    assert study.get_trials()[1].state.name == "FAIL"
    # the sampler does not replay seed 7's proposals: it is seeded 7 + 2
    reference = optuna.samplers.RandomSampler(seed=9)
    dist = optuna.distributions.CategoricalDistribution(list(range(1000)))
    ours = [resumed.sweeper.sampler.sample_independent(study, t, "x", dist) for t in study.get_trials()[:1]]
    assert ours == [reference.sample_independent(study, t, "x", dist) for t in study.get_trials()[:1]]
    assert sweeper(1).sweeper.n_trials == 0  # a total already reached: nothing to run


def test_only_trials_of_dead_processes_are_marked_interrupted(tmp_path):
    import json
    import socket
    import time

    import optuna

    from quantexp.search.shared import GRACE_S, HEARTBEAT_ATTR, OWNER_ATTR, owner, stamp

    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/s.db")
    mine = study.ask()
    stamp(mine, owner())  # this process: alive
    gone = study.ask()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone.set_user_attr(OWNER_ATTR, json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout),
                                               "started": 0.0}))
    remote_live, remote_silent = study.ask(), study.ask()
    for trial, beat in ((remote_live, time.time()), (remote_silent, time.time() - GRACE_S - 1)):
        trial.set_user_attr(OWNER_ATTR, json.dumps({"host": "another-node", "pid": 1, "started": 0.0}))
        trial.set_user_attr(HEARTBEAT_ATTR, beat)
    assert mark_interrupted(study) == 2
    states = {t.number: (t.state.name, t.user_attrs.get(INTERRUPTED_ATTR)) for t in study.get_trials()}
    assert states == {0: ("RUNNING", None), 1: ("FAIL", True), 2: ("RUNNING", None), 3: ("FAIL", True)}


def test_claims_stop_at_the_studys_total_across_processes(tmp_path):
    import optuna

    from quantexp.search.shared import claim, open_storage

    url = f"journal:///{tmp_path}/j/study.log"  # the folder does not exist yet
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    other = optuna.load_study(study_name="s", storage=open_storage(url))  # a second process's view
    seen = []
    first = claim(study, url, total=5, batch=2, before_ask=seen.append)
    second = claim(other, url, total=5, batch=2, before_ask=seen.append)
    third = claim(study, url, total=5, batch=2, before_ask=seen.append)  # one slot left
    assert [t.number for t in first + second + third] == [0, 1, 2, 3, 4] and seen == [0, 2, 4]
    assert claim(other, url, total=5, batch=2) == []  # running trials of a live process count
    study.tell(first[0], state=optuna.trial.TrialState.FAIL)  # a trial that really failed: done
    assert claim(other, url, total=5, batch=2) == []
