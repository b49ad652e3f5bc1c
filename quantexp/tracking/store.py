"""Where the MLflow store lives: tracking-URI resolution, the artifact root,
get-or-create of the experiment, and the retry every sqlite write goes through.

mlflow is imported inside the functions so that importing this module stays
cheap (the Hydra callback imports it on every start).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

T = TypeVar("T")

DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
_SQLITE = "sqlite:///"

# Several jobs (or processes) writing one sqlite file can collide; sqlite's own
# busy timeout (5 s) is not always enough under a parallel launcher.
_LOCK_MARKERS = ("database is locked", "database table is locked")
_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0)


def is_locked_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(marker in text for marker in _LOCK_MARKERS)


def retry_locked(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn``; on sqlite "database is locked" wait briefly and try again
    (about 10 s in all), then let the last error through."""
    for delay in _RETRY_DELAYS:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not is_locked_error(exc):
                raise
            log.debug("mlflow store locked, retrying in %.2fs: %s", delay, exc)
            time.sleep(delay)
    return fn(*args, **kwargs)


def resolve_tracking_uri(configured: str | None, project_root: Path) -> str:
    """configured > $MLFLOW_TRACKING_URI > sqlite:///<abs project_root>/mlflow.db.

    A relative sqlite path is made absolute against ``project_root``: Hydra may
    change the working directory of a job (hydra.job.chdir), and a relative
    path would then put every job's runs in a different database. Any other
    scheme (http://, https://, databricks, file:) passes through untouched.
    """
    root = Path(project_root).resolve()
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or None
    if uri is None:
        return f"{_SQLITE}{root / DB_NAME}"
    if not uri.startswith(_SQLITE):
        return uri
    # sqlite:///rel/path.db is relative, sqlite:////abs/path.db is absolute.
    rest = uri[len(_SQLITE):]
    path, sep, query = rest.partition("?")
    if path == "" or path.startswith("/") or path == ":memory:":
        return uri
    return f"{_SQLITE}{(root / path).resolve()}{sep}{query}"


def artifact_root(project_root: Path) -> str:
    """file URI of <project_root>/mlartifacts (absolute, for the same reason as above)."""
    return (Path(project_root).resolve() / ARTIFACTS_DIR).as_uri()


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """Get or create the experiment ``name`` and return its id.

    Race-safe: when two processes create it at once, the loser's create fails
    with RESOURCE_ALREADY_EXISTS and it reads the winner's experiment instead.
    A deleted experiment of that name is restored (MLflow refuses new runs in
    it and refuses to create a second one with the same name).
    """
    from mlflow.exceptions import MlflowException

    experiment = retry_locked(client.get_experiment_by_name, name)
    if experiment is None:
        try:
            return retry_locked(client.create_experiment, name, artifact_location=artifact_location)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        experiment = retry_locked(client.get_experiment_by_name, name)
        if experiment is None:
            raise RuntimeError(f"MLflow experiment {name!r} exists but cannot be read back")
    if experiment.lifecycle_stage == "deleted":
        log.warning("MLflow experiment %r was deleted; restoring it", name)
        retry_locked(client.restore_experiment, experiment.experiment_id)
    return experiment.experiment_id


def open_client(configured_uri: str | None, project_root: Path,
                experiment: str) -> tuple[MlflowClient, str]:
    """An MlflowClient on the resolved store and the id of ``experiment`` in it.

    Pass TrackingConfig's ``uri`` and ``experiment`` explicitly. The first call
    on a fresh sqlite file creates its schema; do it once before launching
    parallel jobs (the sweep callback does) to avoid the schema-creation race.
    """
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(configured_uri, project_root)
    client = MlflowClient(tracking_uri=uri)
    experiment_id = ensure_experiment(client, experiment, artifact_root(project_root))
    return client, experiment_id
