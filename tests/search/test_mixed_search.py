"""The mixed-precision Optuna search as a user runs it: ``run.py -m +search=mixed_precision``
with a persistent sqlite study, killed (SIGKILL mid-trial) and resumed by rerunning the
same command; sizing by ``hydra.sweeper.n_trials`` or ``search.n_trials`` alike; a
changed search gets a study of its own; failing trials that do not stop the search and
a budget no trial meets (non-zero exit, trials kept)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.mlflow_store import seeded_store

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model=cnn", "model.n_train=300", "model.epochs=1", "+debug=tiny", "eval.bootstrap=100",
        "method.calibration.size=32",
        "method.hessian_samples=0", "tracking.log_model=false"]


# The kernel micro-benchmarks behind the search space (~10 s a process, re-measured in
# every process while the host is busy) are the subject of the failed-trials test only.
NO_KERNEL_FILTER = "search.kernel_filter=false"


def _cmd(tmp: Path, sweep: str, *extra: str, storage: str = "study.db", name: str | None = "tiny") -> list[str]:
    return [sys.executable, str(ROOT / "run.py"), "-m", "+search=mixed_precision", *TINY,
            f"cache_dir={tmp}/cache", f"hydra.sweep.dir={tmp}/{sweep}",
            f"hydra.sweeper.storage=sqlite:///{tmp}/{storage}",
            *([f"hydra.sweeper.study_name={name}"] if name else []), *extra]


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": seeded_store(tmp)}


def _rows(db: Path, query: str) -> list[tuple]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db, timeout=1) as conn:
            return conn.execute(query).fetchall()
    except sqlite3.OperationalError:  # schema not created yet
        return []


def _states(db: Path) -> list[str]:
    return [r[0] for r in _rows(db, "select state from trials order by number")]


def _running_job_runs(tmp: Path) -> int:
    return len(_rows(tmp / "mlflow.db", "select 1 from runs where status = 'RUNNING' and name like 'cnn/%'"))


# In the default suite: ~60 s on 2 quiet cores: four run.py starts, four trials
def test_search_killed_and_resumed(tmp_path):
    import optuna
    from mlflow.tracking import MlflowClient

    db = tmp_path / "optuna" / "study.db"  # optuna/ does not exist yet
    storage = f"sqlite:///{db}"
    # hydra.sweeper.n_trials, the plain Hydra way, on a fresh folder; the default study name
    cmd = _cmd(tmp_path, "sweep1", "hydra.sweeper.n_trials=3", NO_KERNEL_FILTER, storage="optuna/study.db", name=None)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    # kill -9 once trial 0 is COMPLETE and trial 1's MLflow run is open
    while _states(db).count("COMPLETE") < 1 or _states(db)[-1:] != ["RUNNING"] or not _running_job_runs(tmp_path):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, "no trial completed in time"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    first_out = proc.communicate(timeout=60)[0]
    assert "unable to open database file" not in first_out and "UserWarning" not in first_out, first_out[-3000:]
    assert _states(db) == ["COMPLETE", "RUNNING"]

    # the same search again, sized by search.n_trials: resumes and runs only what is missing
    done = subprocess.run(_cmd(tmp_path, "sweep2", "search.n_trials=3", NO_KERNEL_FILTER, storage="optuna/study.db", name=None),
                          cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    (name,) = optuna.get_all_study_names(storage)
    assert name.startswith("mixed_cnn_") and len(name) == len("mixed_cnn_") + 10  # + the search hash
    study = optuna.load_study(study_name=name, storage=storage)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"], states  # trial 0 not redone
    assert study.trials[1].user_attrs["quantexp.interrupted"] is True
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    # No replayed proposals: the resumed process seeds its sampler past the two trials
    # already there. (Two distinct seeds may still propose one assignment by chance in a
    # space this small, so the check is on the seeds and on the sequence, not on uniqueness.)
    seeds = [t.user_attrs["quantexp.seed_offset"] for t in study.trials]
    assert seeds[0] == 0 and set(seeds[2:]).isdisjoint(seeds[:2]), seeds
    assert [study.trials[2].params, study.trials[3].params] != [study.trials[0].params, study.trials[1].params]
    for t in complete:
        assert set(t.params) == {f"++method.assignment.{n}" for n in ("conv1", "conv2", "fc1", "fc2")}
        assert Path(t.user_attrs["quantexp.results_path"]).is_file()
    assert study.metric_names == ["accuracy_drop", "size_mb"]
    assert f"Pareto front of study {name}" in done.stdout
    front = json.loads((tmp_path / "sweep2" / "pareto_front.json").read_text())
    assert front["objectives"] == ["accuracy_drop", "size_mb"] and front["pareto_front"]
    assert {r["trial"] for r in front["pareto_front"]} <= {t.number for t in study.best_trials}
    assert sorted(p.name for p in (tmp_path / "sweep2").iterdir()
                  if p.is_dir() and not p.name.startswith(".")) == ["2", "3"]  # job == trial

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("quantexp").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]  # one parent for the study
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]  # no zombie
    by_status = sorted(c.info.status for c in children)
    assert by_status == ["FINISHED"] * 3 + ["KILLED"], by_status
    killed = next(c for c in children if c.info.status == "KILLED")
    assert killed.data.tags["error"].startswith("interrupted")
    counts = {k: v for k, v in parents[0].data.metrics.items() if k.startswith("n_")}
    assert counts == {"n_jobs": 4.0, "n_finished": 3.0, "n_failed": 1.0}
    assert "best.drop_pts" in parents[0].data.metrics  # the report's best candidate, on the parent
    assert len({c.info.run_name for c in children}) == 4  # "... #0" .. "#3": no repeats
    assert {t.user_attrs["quantexp.mlflow_run_id"] for t in complete} == \
        {c.info.run_id for c in children if c.info.status == "FINISHED"}
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id, "search")}
    assert "search/pareto_front.json" in artifacts

    # hydra.sweeper.n_trials counts what already ran too: nothing left to do
    again = subprocess.run(_cmd(tmp_path, "sweep3", "hydra.sweeper.n_trials=3", NO_KERNEL_FILTER, storage="optuna/study.db", name=None),
                           cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=900, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(optuna.load_study(study_name=name, storage=storage).trials) == 4

    # a different search under the old study's name is refused, in one line
    refused = subprocess.run(_cmd(tmp_path, "sweep4", "search.n_trials=3", "search.choices=[fp32,int8]",
                                  NO_KERNEL_FILTER, storage="optuna/study.db", name=name),
                             cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=900, check=False)
    assert refused.returncode == 2, refused.stderr[-3000:]
    (line,) = [x for x in refused.stderr.splitlines() if x.startswith("error:")]
    assert f"study {name!r}" in line and "another search" in line
    assert "Traceback" not in refused.stderr
    assert len(optuna.load_study(study_name=name, storage=storage).trials) == 4


def test_failed_trials_do_not_stop_the_search_and_an_unmeetable_budget_exits_non_zero(tmp_path):
    import optuna

    # a calibration set larger than the training data: every trial fails (a user error
    # found while running); the sweep still finishes all its trials.
    proc = subprocess.run(_cmd(tmp_path, "sweep", "search.n_trials=2", "method.calibration.size=100000",
                               "search.budget.max_accuracy_drop=1.0"),
                          cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 3, proc.stderr[-3000:]  # the budget's code wins over the failures' 1
    assert "no configuration meets max_accuracy_drop=1; closest:" in proc.stderr
    assert "sweep: 2 of 2 jobs failed" in proc.stderr and "Traceback" not in proc.stderr
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/study.db")
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]  # kept in the study
