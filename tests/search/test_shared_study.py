"""Several sweep processes on one Optuna study (quantexp.search.shared): two run.py
searches started together on one study share its total (``search.n_trials``) with no
trial run twice and none left behind; job numbers are trial numbers in both; one MLflow
parent run for the study. In the default suite on Optuna's journal file (one machine);
marked slow, the same on PostgreSQL with the runs going to a tracking server over
PostgreSQL too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import needs_postgres

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model=cnn", "model.n_train=300", "model.epochs=1", "+debug=tiny", "eval.bootstrap=100",
        "method.calibration.size=32", "method.hessian_samples=0", "tracking.log_model=false"]


def run_workers(tmp: Path, storage: str, n_workers: int, total: int, tracking_uri: str) -> list[subprocess.CompletedProcess]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": tracking_uri}
    procs = [subprocess.Popen([sys.executable, str(ROOT / "run.py"), "-m", "+search=mixed_precision", *TINY,
                               f"cache_dir={tmp}/cache", f"hydra.sweep.dir={tmp}/worker{i}",
                               f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=shared",
                               f"search.n_trials={total}"],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(n_workers)]  # started together: both claim from an empty study
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=1200), *p.communicate()) for p in procs]


def check_shared(tmp: Path, study, n_workers: int, total: int, client: MlflowClient) -> None:
    trials = study.get_trials(deepcopy=False)
    assert [t.number for t in trials] == list(range(total))  # the total, between them
    assert [t.state.name for t in trials] == ["COMPLETE"] * total  # lost: 0
    owners = {json.loads(t.user_attrs["quantexp.owner"])["pid"] for t in trials}
    assert len(owners) == n_workers  # every process ran trials: the study was shared
    for t in trials:  # job number == trial number, whichever process ran it
        out = Path(t.user_attrs["quantexp.output_dir"])
        assert out.name == str(t.number) and out.parent.name.startswith("worker")
    dirs = [p.name for w in range(n_workers) for p in (tmp / f"worker{w}").iterdir() if p.name.isdigit()]
    assert sorted(dirs, key=int) == [str(n) for n in range(total)]  # duplicates: 0

    runs = client.search_runs([client.get_experiment_by_name("quantexp").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1  # one parent for the study, found by both processes
    assert parents[0].info.status == "FINISHED" and parents[0].data.metrics["n_finished"] == float(total)
    assert sorted(c.info.status for c in children) == ["FINISHED"] * total
    assert sorted(int(c.info.run_name.rsplit("#", 1)[1]) for c in children) == list(range(total))
    assert {t.user_attrs["quantexp.mlflow_run_id"] for t in trials} == {c.info.run_id for c in children}


# ~70 s on 2 quiet cores (two searches of two trials each, side by side). Slow: the default
# suite reaches the same lines elsewhere (benchmarks/suite_coverage.py; the heartbeat in
# tests/search/test_heartbeat.py, the parent left open in tests/tracking/test_tracking.py)
@pytest.mark.slow
def test_two_processes_share_one_study_in_a_journal_file(tmp_path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    procs = run_workers(tmp_path, f"journal:///{tmp_path}/optuna/study.log", 2, 4, f"sqlite:///{tmp_path}/mlflow.db")
    for p in procs:
        assert p.returncode == 0, p.stderr[-3000:]
    study = optuna.load_study(study_name="shared", storage=JournalStorage(JournalFileBackend(
        str(tmp_path / "optuna" / "study.log"))))
    check_shared(tmp_path, study, 2, 4, MlflowClient(f"sqlite:///{tmp_path}/mlflow.db"))


@pytest.mark.slow  # ~3 min on 2 quiet cores: 2 processes x 8 trials, a tracking server
@needs_postgres
def test_two_processes_share_one_study_in_postgresql_logging_to_a_server(tmp_path, postgres):
    import optuna

    from quantexp.tracking.server import MlflowServer

    storage = postgres.database("optuna_shared")
    with MlflowServer(postgres.database("mlflow_shared"), tmp_path / "artifacts", workers=2) as server:
        procs = run_workers(tmp_path, storage, 2, 16, server.uri)
        for p in procs:
            assert p.returncode == 0, p.stderr[-3000:]
        check_shared(tmp_path, optuna.load_study(study_name="shared", storage=storage), 2, 16,
                     MlflowClient(server.uri))
