"""An empty MLflow sqlite store for a test's folder, copied from one that MLflow itself
created once per test session.

Building the schema of a fresh sqlite store (MLflow's migrations) costs ~1.7 s, paid by
every test whose run or command finds no store. The copy is the same file MLflow's
migrations wrote, with no experiment of quantexp's in it. The tests of a store's first
use (processes starting together on a fresh store, refusals that must leave no store
behind) do not take one.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

from tests.session import built_once


@functools.cache
def _template() -> Path:
    return built_once("empty-mlflow-store", _migrate) / "mlflow.db"  # workers of one session: the first builds it


def _migrate(folder: Path) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()  # the store's first use: migrations


def seeded_store(folder: Path) -> str:
    """The URI of ``folder/mlflow.db``, an empty store copied in if the file is missing."""
    db = folder / "mlflow.db"
    if not db.exists():
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_template(), db)
    return f"sqlite:///{db}"
