"""Where a result came from: library versions and the git commit of the project."""

from __future__ import annotations

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
