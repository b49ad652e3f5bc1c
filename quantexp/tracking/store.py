"""Where the MLflow store lives: tracking-URI resolution, the artifact root,
get-or-create of the experiment, the file lock that serialises the creation of a
sqlite schema, the retry every sqlite call goes through, and ``store_lock``: a named
lock shared by the processes using one store (sqlite, an Optuna journal, PostgreSQL).

mlflow is imported inside the functions so that importing this module stays
cheap (the Hydra callback imports it on every start).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

T = TypeVar("T")

DB_NAME = "mlflow.db"
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
DEFAULT_UI = "http://127.0.0.1:5000"  # `make ui`
ARTIFACTS_DIR = "mlartifacts"
_SQLITE = "sqlite:///"

# Several jobs (or processes) on one sqlite file collide; sqlite's own busy timeout
# (5 s) is not always enough under a parallel launcher. These errors are all
# "another connection is busy with the file" and go away on retry; anything else
# (no such table, a constraint) is a real error and is raised at once.
_TRANSIENT_MARKERS = ("database is locked", "database table is locked",
                      "database schema has changed", "unable to open database file",
                      "disk i/o error")
_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0)
# Creating MLflow's schema (a dozen alembic migrations) takes seconds on a fresh
# file; the lock is held that long by the first process and briefly by the others.
_SCHEMA_LOCK_TIMEOUT_S = 600


def is_transient_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(marker in text for marker in _TRANSIENT_MARKERS)


is_locked_error = is_transient_error  # the former name


def retry_locked(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn``; on a transient sqlite error (locked, busy, schema changed by
    another connection) wait briefly and try again (about 10 s in all), then let
    the last error through."""
    for delay in _RETRY_DELAYS:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not is_transient_error(exc):
                raise
            log.debug("sqlite store busy, retrying in %.2fs: %s", delay, exc)
            time.sleep(delay)
    return fn(*args, **kwargs)


def sqlite_path(uri: str) -> Path | None:
    """The file of an absolute ``sqlite:////abs/path.db[?query]`` URI, else None."""
    if not uri.startswith(_SQLITE):
        return None
    path = uri[len(_SQLITE):].partition("?")[0]
    return Path(path) if path.startswith("/") else None


@contextlib.contextmanager
def schema_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock on ``<db>.lock`` beside a sqlite store (nothing for
    other URIs), creating the store's folder first.

    MLflow and Optuna create their schema on the first connection to an empty file
    (create_all, then alembic migrations). Two processes doing that at once leave a
    half-migrated file ("duplicate column name", "table _alembic_tmp_tags already
    exists") that every later run fails on; under the lock the first process creates
    the schema and the others find it complete. filelock is a dependency of torch
    (flock on POSIX, msvcrt on Windows)."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    from filelock import FileLock

    # sqlite creates the file but not its folder ("unable to open database file").
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock", timeout=_SCHEMA_LOCK_TIMEOUT_S):
        yield


@contextlib.contextmanager
def store_lock(url: str | None, name: str) -> Iterator[bool]:
    """Hold the lock ``name`` among every process using the store at ``url``: a file
    lock beside a sqlite file or an Optuna journal file (``journal:///ABS/PATH``), a
    PostgreSQL advisory lock (keyed by a hash of ``name``) for a PostgreSQL URL. Yields
    False, holding nothing, for other stores."""
    import hashlib

    if not url:
        yield False
        return
    path = sqlite_path(url) or (Path(url[len("journal://"):]) if url.startswith("journal:///") else None)
    if path is not None:
        from filelock import FileLock

        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{path}.{hashlib.sha256(name.encode()).hexdigest()[:12]}.lock",
                      timeout=_SCHEMA_LOCK_TIMEOUT_S):
            yield True
        return
    if url.split(":", 1)[0].split("+")[0].lower() == "postgresql":
        from sqlalchemy import create_engine, text
        from sqlalchemy.pool import NullPool

        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        engine = create_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
                try:
                    yield True
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        finally:
            engine.dispose()
        return
    yield False


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
            return retry_locked(client.create_experiment, name, artifact_location=artifact_location,
                                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        experiment = retry_locked(client.get_experiment_by_name, name)
        if experiment is None:
            raise RuntimeError(f"MLflow experiment {name!r} exists but cannot be read back")
    if experiment.lifecycle_stage == "deleted":
        log.warning("MLflow experiment %r was deleted; restoring it", name)
        retry_locked(client.restore_experiment, experiment.experiment_id)
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        # MLflow 3's UI opens an experiment without this tag on its GenAI overview
        # (traces, token usage); tagged, it opens on the runs table.
        retry_locked(client.set_experiment_tag, experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


def ui_base(tracking_uri: str) -> str:
    """Where the MLflow UI of this store is: the server itself for an http(s) store,
    else $QUANTEXP_MLFLOW_UI or `make ui`'s address."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return os.environ.get("QUANTEXP_MLFLOW_UI", DEFAULT_UI).rstrip("/")


def run_url(base: str, experiment_id: str, run_id: str | None = None) -> str:
    """The runs table of an experiment (or one run) in MLflow 3's UI, as a model-training
    workflow (without workflowType the UI may open its GenAI views)."""
    path = f"#/experiments/{experiment_id}/runs" + (f"/{run_id}" if run_id else "")
    return f"{base}/{path}?workflowType=machine_learning"


def open_client(configured_uri: str | None, project_root: Path,
                experiment: str) -> tuple[MlflowClient, str]:
    """An MlflowClient on the resolved store and the id of ``experiment`` in it.

    Pass TrackingConfig's ``uri`` and ``experiment`` explicitly. Safe to call from
    any number of processes at once on a fresh sqlite file: the schema is created
    under ``schema_lock`` (MLflow builds its store, and with it the schema, on the
    client's first request; the client caches the store per URI, so later calls in
    the same process cost one lock and one query).
    """
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(configured_uri, project_root)
    # A tracking server chooses where artifacts go (its --artifacts-destination, served
    # over HTTP to every worker); a local folder would only exist on the first client.
    location = None if is_server_uri(uri) else artifact_root(project_root)
    with schema_lock(uri):
        client = MlflowClient(tracking_uri=uri)
        experiment_id = ensure_experiment(client, experiment, location)
    return client, experiment_id


def is_server_uri(uri: str) -> bool:
    """A tracking server (or a hosted one), as opposed to a store opened in-process."""
    return uri.split(":", 1)[0].lower() in ("http", "https", "databricks")
