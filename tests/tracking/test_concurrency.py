"""Processes started together on one fresh MLflow sqlite store (real processes, real
store, nothing pre-created): every run lands. In the default suite, four processes
doing what a run.py job does with the store (open_client, one RunLogger run), started
on a barrier so that all of them create the schema at the same moment; marked slow,
four real run.py processes, one of them a multirun with a failing job (which ends with
the one-screen summary and exit 1, not a traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model=cnn", "model.n_train=300", "model.n_test=100", "model.epochs=1", "+debug=tiny",
        "eval.bootstrap=100", "tracking.log_model=false", "compare_fp32=false"]


def _start(tmp: Path, i: int, *args: str) -> subprocess.Popen:
    # a cache per process: concurrent training into one fp32 cache is another matter
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args, *TINY,
                             f"cache_dir={tmp}/cache{i}", f"hydra.run.dir={tmp}/run{i}",
                             f"hydra.sweep.dir={tmp}/multirun{i}"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


WORKER = """
import sys, time
from pathlib import Path
import mlflow.tracking  # the slow import first, then wait for the others
from quantexp.tracking.run_logger import RunLogger
from quantexp.tracking.store import open_client
(Path(sys.argv[1]) / ("ready" + sys.argv[2])).touch()
go = Path(sys.argv[1]) / "go"
while not go.exists():
    time.sleep(0.01)
client, exp = open_client(None, Path(sys.argv[1]), "quantexp")
with RunLogger(client, exp, "worker " + sys.argv[2]) as run:
    run.log_metrics({"worker": int(sys.argv[2])})
"""


def start_workers(tmp: Path, n: int, uri: str | None = None) -> list[subprocess.Popen]:
    """``n`` processes each opening one run in ``uri`` (default: a sqlite file in ``tmp``)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": uri or f"sqlite:///{tmp}/mlflow.db"}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp), str(i)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(n)]
    # release them together once all have imported mlflow (a worker that died is
    # reported by its exit code below)
    deadline = time.time() + 300
    while (len(list(tmp.glob("ready*"))) < n and time.time() < deadline
           and all(p.poll() is None for p in procs)):
        time.sleep(0.05)
    (tmp / "go").touch()
    return procs


def test_concurrent_processes_on_one_fresh_store_all_land(tmp_path):
    procs = start_workers(tmp_path, 4)
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("quantexp").experiment_id])
    assert sorted(r.data.metrics["worker"] for r in runs) == [0.0, 1.0, 2.0, 3.0]
    assert {r.info.status for r in runs} == {"FINISHED"}


@pytest.mark.slow  # four run.py at once: ~70 s on 2 quiet cores, 150 s busy
def test_concurrent_runs_and_a_sweep_with_a_failing_job_on_one_fresh_store(tmp_path):
    procs = [_start(tmp_path, i, "method=fp32") for i in range(3)]
    # calibration larger than the training set: refused at quantize, after the MLflow run opened
    procs.append(_start(tmp_path, 3, "-m", "method=ptq_static", "method.calibration.size=32,100000"))
    outs = [p.communicate(timeout=900) for p in procs]
    for i, (p, (_, err)) in enumerate(zip(procs[:3], outs)):
        assert p.returncode == 0, f"run {i}: {err[-3000:]}"

    sweep, (_, sweep_err) = procs[3], outs[3]
    assert sweep.returncode == 1, sweep_err[-3000:]
    assert "sweep: 1 of 2 jobs failed" in sweep_err
    assert "Traceback (most recent call last)" not in sweep_err  # the summary instead
    failed_line = next(line for line in sweep_err.splitlines() if line.startswith("  job #1 "))
    assert "method.calibration.size=100000" in failed_line and "ConfigError" in failed_line
    assert "method=ptq_static" not in failed_line  # only what tells it from the other job
    traceback_file = next(tmp_path.glob("multirun3/1_*/traceback.txt"))
    assert "Traceback (most recent call last)" in traceback_file.read_text()
    assert str(traceback_file) in sweep_err
    assert (tmp_path / "multirun3" / "failed_jobs.txt").is_file()

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("quantexp").experiment_id])
    jobs = [r for r in runs if r.info.run_name.startswith("cnn/")]
    statuses = sorted(r.info.status for r in jobs)
    assert statuses == ["FAILED"] + ["FINISHED"] * 4, statuses  # 3 runs + the sweep's good job
    failed = next(r for r in jobs if r.info.status == "FAILED")
    assert failed.data.tags["error"].startswith("ConfigError: method.calibration.size=100000")
    assert failed.info.run_id in sweep_err
    assert "traceback.txt" in {a.path for a in client.list_artifacts(failed.info.run_id)}
    parent = next(r for r in runs if r.info.run_name.startswith("sweep "))
    assert parent.data.metrics == {"n_jobs": 2.0, "n_finished": 1.0, "n_failed": 1.0}
