"""``run.py`` as a user runs it, in a subprocess, for the end-to-end tests: the model
cache, sweep/run directories and the MLflow store all under the test's ``tmp`` folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.mlflow_store import seeded_store

ROOT = Path(__file__).resolve().parents[1]


def run_py(args: list[str], tmp: Path, cache: Path | None = None,
           timeout: int = 900, store: bool = True) -> subprocess.CompletedProcess:
    """Run ``run.py *args``; ``cache`` (default ``tmp/cache``) may be shared across tests
    so a model is trained once. The MLflow store ``tmp/mlflow.db`` starts empty
    (``tests/mlflow_store.py``); ``store=False``: no file there, as a run that must not
    open MLflow has to leave it. Never raises on a non-zero exit: tests assert on it."""
    uri = seeded_store(tmp) if store else f"sqlite:///{tmp}/mlflow.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": uri}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args,
                           f"cache_dir={cache or tmp / 'cache'}", f"hydra.sweep.dir={tmp}/multirun",
                           f"hydra.run.dir={tmp}/run"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
