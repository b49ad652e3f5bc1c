"""Sweeps on real launchers, end to end through run.py: a 2-job joblib sweep logging to an
``mlflow server`` started on a free port (one store, artifacts served over HTTP, threads
per job and the co-location flag recorded); a job killed by SIGSEGV mid-measurement is
FAILED with faulthandler's stack while the other jobs land, and each job's peak RSS is
its own; marked slow, a 2-job Ray sweep on a local Ray cluster started here (``ray
start --head``, reached through ``hydra.launcher.ray.init.address``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from quantexp.config import usable_cpus
from quantexp.tracking.server import MlflowServer, free_port
from tests.mlflow_store import seeded_store
from tests.run_py import run_py

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model=cnn", "model.n_train=300", "model.n_test=200", "model.epochs=1", "+debug=tiny",
        "eval.bootstrap=100", "tracking.log_model=false"]


def _results(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))}


def _jobs_of(client: MlflowClient) -> tuple[dict, list]:
    runs = client.search_runs([client.get_experiment_by_name("quantexp").experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    return parent, [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


# In the default suite: ~60 s on 2 quiet cores (the server's start-up, two loky workers)
def test_joblib_sweep_runs_jobs_side_by_side_into_a_tracking_server(tmp_path):
    with MlflowServer(seeded_store(tmp_path / "server"), tmp_path / "server" / "artifacts",
                      workers=1) as server:
        proc = run_py(["-m", "method=fp32,ptq_static", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                       *TINY, f"tracking.uri={server.uri}"], tmp_path, store=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        client = MlflowClient(server.uri)
        parent, jobs = _jobs_of(client)
        assert sorted(r.info.status for r in jobs) == ["FINISHED", "FINISHED"]
        assert parent.info.status == "FINISHED" and parent.data.metrics["n_finished"] == 2.0
        results = _results(tmp_path / "multirun")
        assert len(results) == 2
        # both jobs needed the same fp32 model of an empty cache: one trained it, the other waited
        assert sorted(job["model"]["from_cache"] for job in results.values()) == [False, True]
        threads = max(1, len(usable_cpus()) // 2)  # the cores of this (pinned) worker
        for job in results.values():
            placement = job["placement"]
            assert (placement["launcher"], placement["concurrent_jobs"], placement["threads"]) == ("joblib", 2, threads)
            assert placement["co_located"] is True and placement["isolation"] == "process"
            assert job["config"]["hardware"]["threads"] == threads  # what the job really ran with
        for run in jobs:
            assert run.data.tags["quantexp.co_located"] == "true"
            assert run.data.params["hardware.threads"] == str(threads)
            # artifacts went through the server, into its artifact root
            assert run.info.artifact_uri.startswith("mlflow-artifacts:")
            local = client.download_artifacts(run.info.run_id, "results.json", str(tmp_path / run.info.run_id))
            assert json.loads(Path(local).read_text())["mlflow_run_id"] == run.info.run_id
        assert any((tmp_path / "server" / "artifacts").rglob("results.json"))
    assert proc.stdout.count("latency measured under co-location") == 2
    assert f"{threads} intra-op thread" in proc.stdout
    assert not (tmp_path / "mlflow.db").exists()  # tracking.uri won over $MLFLOW_TRACKING_URI


def _job_process(sweep: subprocess.Popen):
    """The process measuring the current job: a child of the sweep's fork server."""
    import psutil

    for child in psutil.Process(sweep.pid).children(recursive=True):
        parent = child.parent()
        if parent is not None and parent.pid != sweep.pid and "forkserver" in " ".join(parent.cmdline()):
            return child
    return None


def _running_job(db: Path) -> str | None:
    try:
        with sqlite3.connect(db, timeout=1) as conn:
            row = conn.execute("select name from runs where status = 'RUNNING' and name like 'cnn/%'").fetchone()
    except sqlite3.OperationalError:
        return None
    return row[0] if row else None


# In the default suite: ~30 s on one core (three jobs, each timed for 2 x 1 s: job #1 is still
# measuring when its MLflow run is seen RUNNING, polled every 0.1 s)
def test_a_job_killed_by_a_segfault_fails_alone_and_each_job_reports_its_own_peak_rss(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": seeded_store(tmp_path)}
    # job 0 evaluates the test set in one batch of 1000 (a high peak), jobs 1 and 2 in 8s
    sweep = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "-m", "method=ptq_static",
                              "eval.batch_size=1000,16,8", *TINY, "model.n_test=1000", "bench.min_seconds=1",
                              f"cache_dir={tmp_path}/cache", f"hydra.sweep.dir={tmp_path}/multirun"],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while not (_running_job(tmp_path / "mlflow.db") or "").endswith("#1"):
        assert sweep.poll() is None, sweep.communicate()[1][-3000:]
        assert time.time() < deadline, "job #1 never started"
        time.sleep(0.1)
    victim = _job_process(sweep)
    assert victim is not None
    victim.send_signal(signal.SIGSEGV)  # what a crash in native code delivers
    out, err = sweep.communicate(timeout=600)

    assert sweep.returncode == 1, err[-3000:]
    assert "sweep: 1 of 3 jobs failed" in err
    line = next(x for x in err.splitlines() if x.startswith("  job #1 "))
    assert "JobCrashed" in line and "SIGSEGV" in line
    traceback_txt = (tmp_path / "multirun" / "1_cnn_ptq_static" / "traceback.txt").read_text()
    assert "Segmentation fault" in traceback_txt  # faulthandler's stack of the dead process

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    parent, jobs = _jobs_of(client)
    by_name = {r.info.run_name.rsplit("#", 1)[1]: r for r in jobs}
    assert {k: r.info.status for k, r in by_name.items()} == {"0": "FINISHED", "1": "FAILED", "2": "FINISHED"}
    assert by_name["1"].data.tags["error"].startswith("JobCrashed: ")
    assert "traceback.txt" in {a.path for a in client.list_artifacts(by_name["1"].info.run_id)}
    assert {k: parent.data.metrics[k] for k in ("n_jobs", "n_finished", "n_failed")} == \
        {"n_jobs": 3.0, "n_finished": 2.0, "n_failed": 1.0}

    rss = {name: job["process_peak_rss_mb"] for name, job in _results(tmp_path / "multirun").items()}
    # one process for the whole sweep would report job 2 >= job 0 (the sweep's peak so far)
    assert rss["2_cnn_ptq_static"] < rss["0_cnn_ptq_static"] - 40, rss


@pytest.fixture
def local_ray(tmp_path, monkeypatch):
    """A local Ray cluster of 2 CPUs started with Ray's own command line, as a user starts
    a head node (``--block``: it runs until told to stop, in a session of its own, so the
    end of the test stops this cluster's processes and no one else's). Ray's token
    authentication with a token of its own, given to the head and to run.py."""
    import secrets
    import socket

    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    port = free_port()
    temp = Path("/tmp") / f"qx-ray-{port}"  # Ray's socket paths must stay short
    head = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                             f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                             f"--temp-dir={temp}", "--disable-usage-stats"],
                            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 300
        while True:  # the head's GCS answers on the port once the cluster is up
            assert head.poll() is None, head.stderr.read()[-3000:]
            assert time.time() < deadline, "the Ray head did not start"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # ray start --block stops what it started
        try:
            head.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow  # a Ray cluster's start-up, a sweep and a search: ~2 min on 2 quiet cores
def test_ray_sweep_and_search_on_a_local_cluster(tmp_path, local_ray):
    proc = run_py(["-m", "method=fp32,ptq_static", "hydra/launcher=ray",
                   f"hydra.launcher.ray.init.address={local_ray}", *TINY], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = _results(tmp_path / "multirun")
    assert len(results) == 2
    for job in results.values():
        assert job["placement"]["launcher"] == "ray" and job["placement"]["co_located"] is True
        assert job["placement"]["threads"] == 1  # Ray gave each task 1 of the node's 2 CPUs
    # the Ray workers did not see this process's $MLFLOW_TRACKING_URI: the sweep's store
    # reached them through the sweep folder, and every run landed in it
    _, jobs = _jobs_of(MlflowClient(f"sqlite:///{tmp_path}/mlflow.db"))
    assert sorted(r.info.status for r in jobs) == ["FINISHED", "FINISHED"]

    # a precision search on the same cluster, two trials at once
    import optuna

    from tests.search.test_shared_study import TINY as SEARCH_TINY

    storage = f"journal:///{tmp_path}/study.log"
    search = run_py(["-m", "+search=mixed_precision", *SEARCH_TINY, "hydra/launcher=ray",
                     f"hydra.launcher.ray.init.address={local_ray}", "hydra.sweeper.n_jobs=2", "search.n_trials=2",
                     f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=on_ray"], tmp_path)
    assert search.returncode == 0, search.stderr[-3000:]
    from quantexp.search.shared import open_storage

    trials = optuna.load_study(study_name="on_ray", storage=open_storage(storage)).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert all(Path(t.user_attrs["quantexp.results_path"]).is_file() for t in trials)
