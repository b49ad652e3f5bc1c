"""Where a result came from: library versions, the git commit of the project, and the
process that produced it (``process_identity``; ``process_alive`` tells whether that
process still runs, which is how a resumed or shared sweep tells a dead job from a
live one)."""

from __future__ import annotations

import os
import socket
import subprocess
from importlib import metadata
from pathlib import Path

LIBRARIES = ("torch", "torchao", "onnxruntime", "onnx", "bitsandbytes", "transformers",
             "coremltools", "litert-torch", "ai-edge-litert", "mlflow", "optuna", "hydra-core",
             "omegaconf", "numpy")


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit(root: Path) -> str:
    """HEAD's hash, with "+dirty" when the tree has uncommitted changes; "unknown"
    outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def process_identity() -> dict[str, str | int | float]:
    """This process: host name, pid and start time (a pid alone can be reused)."""
    import psutil

    return {"host": socket.gethostname(), "pid": os.getpid(), "started": psutil.Process().create_time()}


def process_alive(identity: dict) -> bool | None:
    """True/False for a process of this host; None for one on another host (unknown)."""
    if identity.get("host") != socket.gethostname():
        return None
    import psutil

    try:
        return abs(psutil.Process(int(identity["pid"])).create_time() - float(identity["started"])) < 1.0
    except (psutil.NoSuchProcess, KeyError, TypeError, ValueError):
        return False
