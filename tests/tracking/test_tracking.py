"""quantexp.tracking against a real MLflow sqlite store in tmp dirs, and the
sweep callback inside a real Hydra multirun (subprocess)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from quantexp.tracking import PARENT_RUN_ENV, PARENT_RUN_FILE
from quantexp.tracking import run_logger as rl
from quantexp.tracking.callbacks import MlflowSweepCallback, parent_run_id
from quantexp.tracking.run_logger import RunLogger, flatten
from quantexp.tracking.store import (
    artifact_root,
    ensure_experiment,
    open_client,
    resolve_tracking_uri,
    retry_locked,
)
from tests.mlflow_store import seeded_store

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store shared by the module's tests (one experiment per test)."""
    root = tmp_path_factory.mktemp("store")
    uri = seeded_store(root)
    client, _ = open_client(uri, root, "warmup")
    return client, root


@pytest.fixture
def exp(store, request):
    client, root = store
    return client, ensure_experiment(client, request.node.name, artifact_root(root))


@pytest.fixture(autouse=True)
def _no_parent_env(monkeypatch):
    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)


# ------------------------------------------------------------------ store
def test_uri_precedence_configured_env_default(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env-host:5000")
    assert resolve_tracking_uri("http://configured:5000", tmp_path) == "http://configured:5000"
    assert resolve_tracking_uri(None, tmp_path) == "http://env-host:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    default = resolve_tracking_uri(None, tmp_path)
    assert default == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert default.startswith("sqlite:////")


def test_uri_relative_sqlite_is_made_absolute_against_project_root(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # as Hydra may do; must not matter
    root = tmp_path / "proj"
    assert resolve_tracking_uri("sqlite:///runs/m.db", root) == f"sqlite:///{root}/runs/m.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db?timeout=30")
    assert resolve_tracking_uri(None, root) == f"sqlite:///{root}/env.db?timeout=30"
    absolute = f"sqlite:///{tmp_path}/abs.db"
    assert resolve_tracking_uri(absolute, root) == absolute
    for uri in ("https://mlflow.example.com", "databricks", "http://127.0.0.1:5000"):
        assert resolve_tracking_uri(uri, root) == uri


def test_artifact_root_is_absolute_file_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert artifact_root(Path(".")) == f"file://{tmp_path.resolve()}/mlartifacts"


def test_ensure_experiment_is_idempotent(store):
    client, root = store
    first = ensure_experiment(client, "twice", artifact_root(root))
    assert ensure_experiment(client, "twice", artifact_root(root)) == first
    assert client.get_experiment(first).artifact_location == artifact_root(root)


def test_ensure_experiment_restores_a_deleted_one(store):
    client, root = store
    exp_id = ensure_experiment(client, "deleted", artifact_root(root))
    client.delete_experiment(exp_id)
    assert ensure_experiment(client, "deleted", artifact_root(root)) == exp_id
    assert client.get_experiment(exp_id).lifecycle_stage == "active"


def test_retry_locked_retries_only_lock_errors():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert retry_locked(flaky) == "ok" and len(calls) == 3

    def broken():
        calls.append(1)
        raise ValueError("no such table")

    calls.clear()
    with pytest.raises(ValueError):
        retry_locked(broken)
    assert len(calls) == 1


@pytest.mark.parametrize("message", ["(sqlite3.OperationalError) database schema has changed",
                                     "(sqlite3.OperationalError) unable to open database file",
                                     "(sqlite3.OperationalError) disk I/O error",
                                     "database table is locked"])
def test_retry_locked_retries_every_transient_sqlite_error(message):
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 2:
            raise RuntimeError(message)
        return "ok"

    assert retry_locked(flaky) == "ok" and len(calls) == 2


def test_schema_lock_creates_the_folder_and_excludes_a_second_holder(tmp_path):
    from filelock import FileLock, Timeout

    from quantexp.tracking.store import schema_lock

    db = tmp_path / "new" / "folder" / "mlflow.db"
    with schema_lock(f"sqlite:///{db}"):
        assert db.parent.is_dir()
        with pytest.raises(Timeout):
            FileLock(f"{db}.lock", timeout=0.1).acquire()
    FileLock(f"{db}.lock", timeout=0.1).acquire()  # released on exit
    with schema_lock("http://127.0.0.1:5000"):  # not sqlite: no lock, nothing created
        pass


# ------------------------------------------------------------- run logger
def test_flatten_dotted_keys_lists_as_json():
    flat = flatten({"model": {"name": "cnn", "channels": [16, 32], "opt": {}},
                    "seed": 0, "n": None, "ok": True})
    assert flat == {"model.name": "cnn", "model.channels": "[16, 32]", "model.opt": "{}",
                    "seed": 0, "n": None, "ok": True}
    cfg = OmegaConf.create({"a": {"b": "${c}", "l": [1, {"d": 2}]}, "c": 3})
    assert flatten(cfg) == {"a.b": 3, "a.l": '[1, {"d": 2}]', "c": 3}


def test_flatten_experiment_dataclass():
    from quantexp.config import TrackingConfig
    from quantexp.models.cnn.config import CNNConfig

    flat = flatten({"model": CNNConfig(name="cnn", dataset="mnist"), "tracking": TrackingConfig()})
    assert flat["model.family"] == "cnn"  # the enum's value, not "Family.cnn"
    assert flat["model.channels"] == "[16, 32]" and flat["tracking.uri"] is None


def test_limits_match_installed_mlflow():
    from mlflow.utils import validation

    assert rl.MAX_PARAM_VAL_LENGTH == validation.MAX_PARAM_VAL_LENGTH
    assert rl.MAX_TAG_VAL_LENGTH == validation.MAX_TAG_VAL_LENGTH
    assert rl.MAX_PARAMS_TAGS_PER_BATCH == validation.MAX_PARAMS_TAGS_PER_BATCH
    assert rl.MAX_METRICS_PER_BATCH == validation.MAX_METRICS_PER_BATCH


def test_success_is_finished_with_params_metrics_tags(exp):
    client, exp_id = exp
    many = {f"p{i}": i for i in range(150)}  # more than one log_batch of params
    with RunLogger(client, exp_id, "ok run", tags={"quantexp.kind": "unit"}) as run:
        run.log_params({"model": {"name": "cnn", "channels": [16, 32]}, "long": "x" * 7000, **many})
        run.log_metrics({"accuracy": 0.975, "latency_ms": None, "nan_metric": float("nan")})
        run.log_metrics({"loss": 0.5}, step=3)
        run.set_tags({"host": "ci"})
        with pytest.raises(ValueError, match="infinity"):
            run.log_metrics({"speedup": float("inf")})
    data = client.get_run(run.run_id)
    assert data.info.status == "FINISHED"
    assert data.info.run_name == "ok run"
    params = data.data.params
    assert params["model.name"] == "cnn" and params["model.channels"] == "[16, 32]"
    assert len(params["long"]) == rl.MAX_PARAM_VAL_LENGTH and params["p149"] == "149"
    metrics = data.data.metrics
    assert metrics["accuracy"] == 0.975 and math.isnan(metrics["nan_metric"])
    assert "latency_ms" not in metrics and "speedup" not in metrics  # never faked
    assert [m.step for m in client.get_metric_history(run.run_id, "loss")] == [3]
    assert data.data.tags["host"] == "ci" and data.data.tags["quantexp.kind"] == "unit"
    assert "mlflow.parentRunId" not in data.data.tags


def test_exception_marks_failed_with_traceback_and_reraises(exp, tmp_path):
    client, exp_id = exp
    with (pytest.raises(RuntimeError, match="calibration exploded"),
          RunLogger(client, exp_id, "bad run") as run):
        run.log_metrics({"accuracy": 0.5})
        raise RuntimeError("calibration exploded\nsecond line")
    data = client.get_run(run.run_id)
    assert data.info.status == "FAILED"
    assert data.data.tags["error"] == "RuntimeError: calibration exploded"
    local = client.download_artifacts(run.run_id, rl.TRACEBACK_FILE, str(tmp_path))
    text = Path(local).read_text()
    assert "calibration exploded" in text and "Traceback (most recent call last)" in text


def test_child_has_parent_tag(exp):
    client, exp_id = exp
    with RunLogger(client, exp_id, "parent") as parent, \
            RunLogger(client, exp_id, "child", parent_run_id=parent.run_id) as child:
        pass
    assert client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == parent.run_id


def test_mark_not_measured_tag_text(exp):
    client, exp_id = exp
    with RunLogger(client, exp_id, "partial") as run:
        run.mark_not_measured("energy_j", "no RAPL counters")
    tags = client.get_run(run.run_id).data.tags
    assert tags["not_measured.energy_j"] == "not measured on this host: no RAPL counters"
    assert run.not_measured == [("energy_j", "not measured on this host: no RAPL counters")]
    assert "energy_j" not in client.get_run(run.run_id).data.metrics


def test_artifacts_json_text_and_file(exp, tmp_path):
    client, exp_id = exp
    src = tmp_path / "report.md"
    src.write_text("# report\n")
    with RunLogger(client, exp_id, "artifacts") as run:
        run.log_json({"a": [1, 2], "p": Path("/x")}, "summary.json")
        run.log_text("hello", "notes/hello.txt")
        run.log_artifact(src, "reports")
    names = {a.path for a in client.list_artifacts(run.run_id)}
    assert {"summary.json", "notes", "reports"} <= names
    out = Path(client.download_artifacts(run.run_id, "summary.json", str(tmp_path)))
    assert '"p": "/x"' in out.read_text()


# ------------------------------------------------------------- callback
def _sweep_config(tmp_path: Path, uri: str, enabled: bool = True):
    return OmegaConf.create({
        "tracking": {"uri": uri, "experiment": "sweeps", "enabled": enabled},
        "hydra": {"sweep": {"dir": "multirun/2026-01-01/10-00-00"},
                  "runtime": {"cwd": str(tmp_path)},
                  "overrides": {"task": ["x=1,2", "seed=3"]}},
    })


def _started_sweep(tmp_path):
    """A sweep's callback started in this process: (config, callback, parent run id, client,
    experiment id)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = _sweep_config(tmp_path, uri)
    callback = MlflowSweepCallback()
    callback.on_multirun_start(cfg)
    client, exp_id = open_client(uri, tmp_path, "sweeps")
    return cfg, callback, os.environ[PARENT_RUN_ENV], client, exp_id


def test_callback_in_process_counts_children(tmp_path):
    cfg, callback, pid, client, exp_id = _started_sweep(tmp_path)
    sweep_dir = tmp_path / "multirun/2026-01-01/10-00-00"
    assert (sweep_dir / PARENT_RUN_FILE).read_text().strip() == pid
    assert parent_run_id() == pid
    with RunLogger(client, exp_id, "job 0", parent_run_id=parent_run_id()):
        pass
    with (pytest.raises(KeyError),
          RunLogger(client, exp_id, "job 1", parent_run_id=parent_run_id())):
        {}["missing"]
    callback.on_multirun_end(cfg)
    assert PARENT_RUN_ENV not in os.environ
    parent = client.get_run(pid)
    assert parent.info.status == "FINISHED" and re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d sweep x=1,2", parent.info.run_name)
    assert parent.data.tags["quantexp.overrides"] == "x=1,2 seed=3"
    assert parent.data.tags["quantexp.sweep_dir"] == str(sweep_dir)
    assert parent.data.metrics == {"n_jobs": 2.0, "n_finished": 1.0, "n_failed": 1.0}


def test_a_job_another_sweep_process_still_measures_keeps_the_parent_open(tmp_path):
    from quantexp.provenance import process_identity

    cfg, callback, pid, client, exp_id = _started_sweep(tmp_path)
    # a job of a second process on the same study, still RUNNING: this process measures it
    tags = {f"quantexp.process.{k}": str(v) for k, v in process_identity().items()}
    with RunLogger(client, exp_id, "job 0", parent_run_id=pid, tags=tags):
        callback.on_multirun_end(cfg)
        parent = client.get_run(pid)
        assert parent.info.status == "RUNNING"  # the other process ends it
        assert parent.data.metrics == {"n_jobs": 1.0, "n_finished": 0.0, "n_failed": 0.0}


def test_resumed_study_closes_runs_a_killed_sweep_left_running(tmp_path):
    uri = seeded_store(tmp_path)
    cfg = _sweep_config(tmp_path, uri)
    cfg.hydra.sweeper = {"storage": f"sqlite:///{tmp_path}/study.db", "study_name": "s"}
    MlflowSweepCallback().on_multirun_start(cfg)
    pid = os.environ.pop(PARENT_RUN_ENV)
    client, exp_id = open_client(uri, tmp_path, "sweeps")
    with RunLogger(client, exp_id, "job 0", parent_run_id=pid):
        pass
    # kill -9 in the middle of job 1: its run is never ended, nor is the parent
    zombie = client.create_run(exp_id, run_name="job 1", tags={"mlflow.parentRunId": pid}).info.run_id

    resumed = MlflowSweepCallback()
    resumed.on_multirun_start(cfg)  # the rerun of the same study
    assert os.environ[PARENT_RUN_ENV] == pid  # the study keeps its parent
    run = client.get_run(zombie)
    assert run.info.status == "KILLED" and run.info.end_time is not None
    assert run.data.tags["error"].startswith("interrupted: the sweep process ended")
    assert run.data.tags["quantexp.interrupted"] == "true"
    with RunLogger(client, exp_id, "job 2", parent_run_id=parent_run_id()):
        pass
    resumed.on_multirun_end(cfg)
    assert client.get_run(pid).data.metrics == {"n_jobs": 3.0, "n_finished": 2.0, "n_failed": 1.0}


def test_sweep_summary_names_jobs_by_what_varies():
    from quantexp.tracking.sweep_summary import Failure, summary_lines

    every = [["a=1", "x=1"], ["a=1", "x=2"], ["a=1", "x=3"]]
    fail = Failure(1, every[1], "RuntimeError: boom", "/s/1", "/s/1/traceback.txt", RuntimeError(), "abc")
    assert summary_lines([fail], 3, every) == [
        "sweep: 1 of 3 jobs failed", "  job #1 [x=2]: RuntimeError: boom",
        "      traceback: /s/1/traceback.txt; MLflow run abc FAILED"]
    many = [Failure(i, ["y=" + "9" * 200], "E", "/d", None, RuntimeError()) for i in range(20)]
    lines = summary_lines(many, 20, [["y=" + "9" * 200]], limit=15)
    assert len(lines) == 1 + 2 * 15 + 1 and lines[-1] == "  ... and 5 more"
    assert len(lines[1]) < 120 and lines[2] == "      traceback: /d"


def test_callback_disabled_or_broken_store_never_raises(tmp_path, caplog):
    callback = MlflowSweepCallback()
    cfg = _sweep_config(tmp_path, f"sqlite:///{tmp_path}/off.db", enabled=False)
    callback.on_multirun_start(cfg)
    callback.on_multirun_end(cfg)
    assert PARENT_RUN_ENV not in os.environ and not (tmp_path / "off.db").exists()

    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    cfg = _sweep_config(tmp_path, f"sqlite:///{not_a_dir}/mlflow.db")
    callback.on_multirun_start(cfg)  # the store cannot be opened: a warning, no exception
    callback.on_multirun_end(cfg)
    assert PARENT_RUN_ENV not in os.environ
    assert "no parent run for this sweep" in caplog.text


APP = '''
import os
from pathlib import Path

import hydra

from quantexp.tracking import PARENT_RUN_ENV
from quantexp.tracking.callbacks import parent_run_id
from quantexp.tracking.run_logger import RunLogger
from quantexp.tracking.store import open_client


@hydra.main(config_path=".", config_name="config")
def main(cfg):
    client, exp_id = open_client(cfg.tracking.uri, Path.cwd(), cfg.tracking.experiment)
    from_env = parent_run_id()
    saved = os.environ.pop(PARENT_RUN_ENV)  # as a job in another process sees it
    try:
        from_file = parent_run_id()
    finally:
        os.environ[PARENT_RUN_ENV] = saved
    from hydra.core.hydra_config import HydraConfig

    # as quantexp.api.execute tags its runs (the sweep summary finds a failed job's run by it)
    output_dir = HydraConfig.get().runtime.output_dir
    with RunLogger(client, exp_id, f"job x={cfg.x}", parent_run_id=from_env,
                   tags={"from_file": from_file, "quantexp.output_dir": output_dir}) as run:
        run.log_metrics({"x": cfg.x})
        if cfg.x == cfg.fail_at:
            raise RuntimeError(f"boom at x={cfg.x}")
    return float(cfg.x)


if __name__ == "__main__":
    main()
'''

CONFIG = '''
x: 0
fail_at: -1
tracking:
  uri: sqlite:///@DB@
  experiment: e2e
  enabled: true
hydra:
  job:
    chdir: false
  sweep:
    dir: multirun/sweep-${now:%H-%M-%S}
  callbacks:
    sweep_summary:
      _target_: quantexp.tracking.sweep_summary.SweepSummaryCallback
    mlflow_sweep:
      _target_: quantexp.tracking.callbacks.MlflowSweepCallback
'''


def _run_sweep(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    seeded_store(tmp_path)
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "config.yaml").write_text(CONFIG.replace("@DB@", str(tmp_path / "mlflow.db")))
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", PARENT_RUN_ENV)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "app.py", "-m", *overrides], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180, check=False)


def _parent_and_children(tmp_path: Path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp_id = client.get_experiment_by_name("e2e").experiment_id
    runs = client.search_runs([exp_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1  # every job nested under the one parent
    return parent, sorted(children, key=lambda r: r.data.metrics["x"])


def test_hydra_multirun_end_to_end(tmp_path):
    proc = _run_sweep(tmp_path, "x=1,2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    parent, children = _parent_and_children(tmp_path)
    assert [c.info.status for c in children] == ["FINISHED", "FINISHED"]
    assert [c.data.metrics["x"] for c in children] == [1.0, 2.0]
    pid = parent.info.run_id
    assert all(c.data.tags["from_file"] == pid for c in children)  # the cross-process path
    assert parent.info.status == "FINISHED" and parent.info.run_name.endswith(" sweep x=1,2")
    assert parent.data.tags["quantexp.overrides"] == "x=1,2"
    assert parent.data.metrics == {"n_jobs": 2.0, "n_finished": 2.0, "n_failed": 0.0}
    sweep_dir = Path(parent.data.tags["quantexp.sweep_dir"])
    assert sweep_dir.parent == tmp_path / "multirun"
    assert (sweep_dir / PARENT_RUN_FILE).read_text().strip() == pid


def test_hydra_multirun_failing_job_is_failed_and_sweep_goes_on(tmp_path):
    # Hydra's basic launcher runs every job of a batch, then re-raises the first
    # failure; the sweep summary replaces Hydra's traceback with one screen and exit 1.
    proc = _run_sweep(tmp_path, "x=1,2,3", "fail_at=2")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    summary = proc.stderr[proc.stderr.index("sweep: 1 of 3 jobs failed"):].splitlines()
    assert summary[1] == "  job #1 [x=2]: RuntimeError: boom at x=2"
    traceback_file = Path(summary[2].split("traceback: ")[1].split(";")[0])
    assert traceback_file.name == "traceback.txt" and "boom at x=2" in traceback_file.read_text()
    parent, children = _parent_and_children(tmp_path)
    assert f"MLflow run {children[1].info.run_id} FAILED" in summary[2]
    assert [c.info.status for c in children] == ["FINISHED", "FAILED", "FINISHED"]
    assert children[1].data.tags["error"] == "RuntimeError: boom at x=2"
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics == {"n_jobs": 3.0, "n_finished": 2.0, "n_failed": 1.0}
