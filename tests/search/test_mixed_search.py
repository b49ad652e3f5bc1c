"""The mixed-precision Optuna search as a user runs it: ``run.py -m +search=mixed_precision``
with a persistent sqlite study, interrupted (SIGINT mid-sweep) and resumed by rerunning
the same command; plus failing trials that do not stop the search and a budget no
trial meets (non-zero exit, trials kept)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model=cnn", "model.n_train=300", "model.epochs=1", "+debug=tiny", "eval.bootstrap=100",
        "method.calibration.size=32",
        "method.hessian_samples=0", "tracking.log_model=false"]


def _cmd(tmp: Path, sweep: str, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "run.py"), "-m", "+search=mixed_precision", *TINY,
            f"cache_dir={tmp}/cache", f"hydra.sweep.dir={tmp}/{sweep}",
            f"hydra.sweeper.storage=sqlite:///{tmp}/study.db", "hydra.sweeper.study_name=tiny",
            *extra]


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}


def _states(tmp: Path) -> list[str]:
    if not (tmp / "study.db").exists():
        return []
    try:
        with sqlite3.connect(tmp / "study.db", timeout=1) as db:
            return [r[0] for r in db.execute("select state from trials order by number")]
    except sqlite3.OperationalError:  # schema not created yet
        return []


# In the default suite: ~50 s on 2 quiet cores (2.5 min busy): two run.py starts, four trials
def test_search_interrupted_and_resumed(tmp_path):
    import optuna
    from mlflow.tracking import MlflowClient

    cmd = _cmd(tmp_path, "sweep1", "search.n_trials=3")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while _states(tmp_path).count("COMPLETE") < 1 or _states(tmp_path)[-1:] != ["RUNNING"]:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, "no trial completed in time"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # Ctrl-C while the second trial runs
    proc.communicate(timeout=300)
    first = _states(tmp_path)
    assert first.count("COMPLETE") == 1 and "RUNNING" in first, first

    # the same command again: resumes the study and runs only the missing trials
    done = subprocess.run(_cmd(tmp_path, "sweep2", "search.n_trials=3"), cwd=ROOT, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/study.db")
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 3, states
    interrupted = [t for t in study.trials if t.user_attrs.get("quantexp.interrupted")]
    assert len(interrupted) == 1 and interrupted[0].state.name == "FAIL"
    assert len(study.trials) == 4  # the completed trial was not redone
    for t in study.trials:
        if t.state.name == "COMPLETE":
            assert set(t.params) == {f"++method.assignment.{n}" for n in ("conv1", "conv2", "fc1", "fc2")}
    assert "Pareto front of study tiny" in done.stdout
    front = json.loads((tmp_path / "sweep2" / "pareto_front.json").read_text())
    assert front["objectives"] == ["accuracy_drop", "size_mb"] and front["pareto_front"]
    assert {r["trial"] for r in front["pareto_front"]} <= {t.number for t in study.best_trials}

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("quantexp").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]  # one parent for the study
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert len(finished) == 3 and all("size_bytes" in c.data.metrics for c in finished)
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id, "search")}
    assert "search/pareto_front.json" in artifacts


def test_failed_trials_do_not_stop_the_search_and_an_unmeetable_budget_exits_non_zero(tmp_path):
    import optuna

    # a calibration set larger than the training data: every trial fails (a user error
    # found while running); the sweep still finishes all its trials.
    proc = subprocess.run(_cmd(tmp_path, "sweep", "search.n_trials=2", "method.calibration.size=100000",
                               "search.budget.max_accuracy_drop=1.0"),
                          cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "no configuration meets max_accuracy_drop=1; closest:" in proc.stderr
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/study.db")
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]  # kept in the study
