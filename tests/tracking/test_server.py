"""The shared tracking server (quantexp.tracking.server): ``mlflow server`` over a
PostgreSQL database of a throw-away cluster (Debian's postgresql, started by the
test), several processes writing runs at once through it (all land), and
``python -m quantexp.tracking.server`` as ``make server`` runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from quantexp.tracking.server import MlflowServer, free_port
from tests.conftest import needs_postgres
from tests.tracking.test_concurrency import start_workers

ROOT = Path(__file__).resolve().parents[2]


# In the default suite: ~40 s on 2 quiet cores (a server start, four worker processes)
@needs_postgres
def test_concurrent_runs_land_in_a_server_over_postgresql(tmp_path, postgres):
    backend = postgres.database("mlflow_concurrent")
    with MlflowServer(backend, tmp_path / "artifacts", workers=2) as server:
        procs = start_workers(tmp_path, 4, uri=server.uri)
        outs = [p.communicate(timeout=300) for p in procs]
        for p, (_, err) in zip(procs, outs):
            assert p.returncode == 0, err[-3000:]
        client = MlflowClient(server.uri)
        runs = client.search_runs([client.get_experiment_by_name("quantexp").experiment_id])
        assert sorted(r.data.metrics["worker"] for r in runs) == [0.0, 1.0, 2.0, 3.0]
        assert {r.info.status for r in runs} == {"FINISHED"}
    # the runs are rows of the PostgreSQL database, not of a local file
    import sqlalchemy

    engine = sqlalchemy.create_engine(backend)
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("select count(*) from runs")).scalar() == 4
    engine.dispose()
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow  # ~30 s: the command line of make server; the server class is in the default suite
def test_make_server_serves_a_sqlite_store_until_interrupted(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "quantexp.tracking.server", "--port", str(port),
                             "--dir", str(tmp_path / "server"), "--workers", "1"], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 300
        while True:
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        client = MlflowClient(f"http://127.0.0.1:{port}")
        client.create_experiment("probe")
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the server and its workers stop
        out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out[-3000:]
    assert f"tracking.uri=http://127.0.0.1:{port}" in out
    assert (tmp_path / "server" / "mlflow.db").is_file()
