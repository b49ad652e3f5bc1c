"""A ``quantexp`` command run in the test's own process (``quantexp.cli.main``), set up as
a ``quantexp`` process is: the folder it runs in and the MLflow store it finds through
$MLFLOW_TRACKING_URI. A process costs 2.5-4 s of imports (torch, MLflow); each command's
module keeps at least one test that starts the real command line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


def quantexp_here(args: list[str], cwd: Path, capsys: pytest.CaptureFixture,
                  monkeypatch: pytest.MonkeyPatch, store: Path | None = None) -> subprocess.CompletedProcess:
    """``quantexp *args`` in ``cwd`` with the store ``store`` (default ``cwd/mlflow.db``);
    its exit code, stdout and stderr as a finished process would give them."""
    from quantexp.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store or cwd / 'mlflow.db'}")
    monkeypatch.chdir(cwd)
    capsys.readouterr()  # what came before is not this command's
    with pytest.raises(SystemExit) as stop:
        main(args)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, stop.value.code or 0, out, err)
