"""A shared MLflow tracking server: ``mlflow server`` on 127.0.0.1 over a database.

``MlflowServer(backend_uri, artifacts_dir, port).start()`` starts ``mlflow server
--backend-store-uri <db> --artifacts-destination <dir>`` (artifacts proxied over HTTP,
so every worker of a cluster reads and writes them through the server) in a process
group of its own and waits for ``/health``; ``stop()`` ends that group. Runs reach it
with ``tracking.uri=http://127.0.0.1:PORT`` (or ``MLFLOW_TRACKING_URI``).

``python -m quantexp.tracking.server [--backend sqlite|postgres] [--port N] [--dir D]``
is ``make server`` / ``make server-postgres``: it serves until Ctrl-C, with the
database and artifacts under ``--dir`` (default ``server/``): ``mlflow.db`` for
sqlite, a PostgreSQL cluster in ``pgdata/`` for postgres (``quantexp.tracking.postgres``).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

STARTUP_TIMEOUT_S = 300  # a cold start imports MLflow in every worker: ~15 s quiet, minutes when busy


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    def __init__(self, backend_uri: str, artifacts_dir: str | Path, port: int | None = None,
                 workers: int = 2, log_file: str | Path | None = None) -> None:
        self.backend_uri = backend_uri
        self.artifacts_dir = Path(artifacts_dir).resolve()
        self.port = port or free_port()
        self.workers = workers
        self.log_file = Path(log_file) if log_file else self.artifacts_dir.parent / f"mlflow-server-{self.port}.log"
        self._proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MlflowServer:
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        mlflow = Path(sys.executable).with_name("mlflow")
        cmd = [str(mlflow) if mlflow.exists() else "mlflow", "server", "--backend-store-uri", self.backend_uri,
               "--artifacts-destination", str(self.artifacts_dir), "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", str(self.workers)]
        log = open(self.log_file, "ab")  # noqa: SIM115 - the server writes to it until stop()
        # its own session: stop() ends the server and the worker processes it forks
        # MLflow's job runner (huey consumers for its GenAI jobs) is not used by tracking
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        deadline = time.time() + STARTUP_TIMEOUT_S
        while time.time() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with code {self._proc.returncode}; "
                                   f"see {self.log_file}:\n{self._tail()}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server on {self.uri} did not answer within {STARTUP_TIMEOUT_S} s:\n{self._tail()}")

    def _tail(self) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-15:])
        except OSError:
            return ""

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)  # the group this server leads (start_new_session)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quantexp.tracking.server",
                                     description="A shared MLflow tracking server on 127.0.0.1.")
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--dir", default="server", help="where the database and the artifacts live")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args(argv)
    root = Path(args.dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    cluster = None
    if args.backend == "postgres":
        from quantexp.tracking.postgres import PostgresCluster

        cluster = PostgresCluster(root / "pgdata" / "data").start()
        backend = cluster.database("mlflow")
        print(f"PostgreSQL on 127.0.0.1:{cluster.port} (data: {cluster.data_dir}); "
              f"a shared Optuna study: hydra.sweeper.storage={cluster.database('optuna')}", flush=True)
    else:
        backend = f"sqlite:///{root / 'mlflow.db'}"
    server = MlflowServer(backend, root / "artifacts", args.port, args.workers, root / "mlflow-server.log")
    try:
        server.start()
        print(f"MLflow tracking server: {server.uri} (store: {backend}, artifacts: {server.artifacts_dir}, "
              f"log: {server.log_file})\nrun with: tracking.uri={server.uri}   (Ctrl-C stops it)", flush=True)
        while server._proc is not None and server._proc.poll() is None:
            time.sleep(1)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()
        if cluster is not None:
            cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
