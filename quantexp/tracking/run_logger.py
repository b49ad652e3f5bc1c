"""One MLflow run per experiment job: ``RunLogger`` (a context manager on
``MlflowClient`` with an explicit run id) and ``flatten`` for nested configs.

The fluent API (``mlflow.start_run``) keeps one global active run per process;
Hydra's basic launcher runs every job of a multirun in the same process, so
this module only ever talks to MlflowClient with the run id it created.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import numbers
import traceback
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Self

from quantexp.tracking.store import retry_locked

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

Scalar = str | int | float | bool | None

PARENT_TAG = "mlflow.parentRunId"
NOT_MEASURED_PREFIX = "not_measured."
TRACEBACK_FILE = "traceback.txt"

# MLflow's own limits (mlflow.utils.validation); copied so this module does not
# import mlflow at import time. Checked against the installed mlflow in tests.
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000


def flatten(d: Mapping | Any, prefix: str = "") -> dict[str, Scalar]:
    """Nested mapping -> {"model.name": "cnn", ...}.

    Lists and tuples become JSON strings (a param is one value, and JSON keeps
    the list readable and parseable); enums become their value, paths strings.
    An empty mapping is kept as "{}" so the key does not silently vanish.
    Works on OmegaConf DictConfigs (values resolve) and on dataclass instances
    such as ``ExperimentConfig`` too.
    """
    out: dict[str, Scalar] = {}
    for key, value in _as_mapping(d).items():
        name = f"{prefix}.{key}" if prefix else str(key)
        value = _as_mapping(value)
        if isinstance(value, Mapping):
            if len(value) == 0:
                out[name] = "{}"
            else:
                out.update(flatten(value, name))
        else:
            out[name] = _scalar(value)
    return out


def _as_mapping(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return value


def _scalar(value: Any) -> Scalar:
    # Enums first: the config's enums are str subclasses, whose str() is "DType.int8"
    if isinstance(value, Enum):
        return _scalar(value.value)
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Path):
        return str(value)
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        return _scalar(value.item())  # numpy scalars, np.bool_ included
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if _is_sequence(value):
        return json.dumps(_plain(value))
    return str(value)


def _is_sequence(value: Any) -> bool:
    from collections.abc import Sequence
    from collections.abc import Set as AbstractSet

    return isinstance(value, (Sequence, AbstractSet)) and not isinstance(value, (str, bytes))


def _plain(value: Any) -> Any:
    """A JSON-serialisable copy (OmegaConf containers, dataclasses, enums, paths included)."""
    value = _as_mapping(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if _is_sequence(value):
        return [_plain(v) for v in value]
    return _scalar(value)


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class NotMeasured(NamedTuple):
    metric: str
    message: str  # "not measured on this host: <reason>"


class RunLogger:
    """One MLflow run, opened on ``__enter__`` and closed on ``__exit__``.

    ``with RunLogger(client, exp_id, "cnn ptq_static", parent_run_id=pid) as run:``
    ``run.log_params(cfg)``; ``run.log_metrics({"accuracy": 0.98})``.
    An exception escaping the block marks the run FAILED (traceback.txt
    artifact, ``error`` tag) and is re-raised; otherwise the run is FINISHED.
    """

    def __init__(self, client: MlflowClient, experiment_id: str, run_name: str,
                 parent_run_id: str | None = None, tags: Mapping[str, Any] | None = None):
        self.client = client
        self.experiment_id = experiment_id
        self.run_name = run_name
        self.parent_run_id = parent_run_id
        self._tags = dict(tags or {})
        self._run_id: str | None = None
        self._ended = False
        self._not_measured: list[NotMeasured] = []

    @classmethod
    def attach(cls, client: MlflowClient, run_id: str) -> Self:
        """A logger on a run another process opened (to end one whose process died)."""
        logger = cls(client, "", "")
        logger._run_id = run_id
        return logger

    # ------------------------------------------------------------ lifecycle
    @property
    def run_id(self) -> str:
        if self._run_id is None:
            raise RuntimeError("RunLogger has not started a run yet (use it as a context manager)")
        return self._run_id

    @property
    def not_measured(self) -> list[NotMeasured]:
        return list(self._not_measured)

    def __enter__(self) -> Self:
        tags = {k: _truncate(str(v), MAX_TAG_VAL_LENGTH) for k, v in self._tags.items()}
        if self.parent_run_id:
            # The UI nests a run under the run named by this tag.
            tags[PARENT_TAG] = self.parent_run_id
        run = retry_locked(self.client.create_run, self.experiment_id,
                           tags=tags, run_name=self.run_name)
        self._run_id = run.info.run_id
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._run_id is None or self._ended:
            return False
        if exc is None:
            self._terminate("FINISHED")
        else:
            self.fail(exc)
        return False  # never swallow the exception

    def fail(self, exc: BaseException) -> None:
        """Record ``exc`` (traceback.txt + ``error`` tag) and end the run FAILED
        (KILLED for Ctrl-C). Tracking errors here are logged, not raised, so
        they never hide the exception being reported."""
        if self._ended:
            return
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        try:
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            self.log_text(text, TRACEBACK_FILE)
            first_line = (str(exc).strip().splitlines() or [""])[0]
            error = f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
            self.set_tags({"error": error})
        except Exception as tracking_exc:  # noqa: BLE001 - must not hide exc
            log.warning("could not record the failure of MLflow run %s: %s",
                        self._run_id, tracking_exc)
        try:
            self._terminate(status)
        except Exception as tracking_exc:  # noqa: BLE001 - must not hide exc
            log.warning("could not mark MLflow run %s as %s: %s",
                        self._run_id, status, tracking_exc)
            self._ended = True

    def _terminate(self, status: str) -> None:
        retry_locked(self.client.set_terminated, self.run_id, status=status)
        self._ended = True

    # -------------------------------------------------------------- logging
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Flattened, stringified, truncated to MLflow's param limit, batched."""
        from mlflow.entities import Param

        flat = flatten(params)
        entities = [Param(k, _truncate("None" if v is None else str(v), MAX_PARAM_VAL_LENGTH))
                    for k, v in flat.items()]
        for i in range(0, len(entities), MAX_PARAMS_TAGS_PER_BATCH):
            retry_locked(self.client.log_batch, self.run_id,
                         params=entities[i: i + MAX_PARAMS_TAGS_PER_BATCH])

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Numbers only. None means "no value" and is skipped, never replaced.

        NaN is logged (the store keeps it as NaN). +/-inf raises: the sqlite
        store would silently store +/-1.8e308 instead, a number nobody measured.
        """
        import time

        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        entities = []
        for key, value in flatten(metrics).items():
            if value is None:
                continue
            if isinstance(value, bool):
                value = int(value)
            if not isinstance(value, (int, float)):
                raise TypeError(f"metric {key!r} must be a number, got {value!r}")
            value = float(value)
            if math.isinf(value):
                raise ValueError(f"metric {key!r} is {value}: MLflow cannot store infinity "
                                 "faithfully; log None or mark it not measured instead")
            entities.append(Metric(key, value, timestamp, step or 0))
        for i in range(0, len(entities), MAX_METRICS_PER_BATCH):
            retry_locked(self.client.log_batch, self.run_id,
                         metrics=entities[i: i + MAX_METRICS_PER_BATCH])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        entities = [RunTag(k, _truncate(str(v), MAX_TAG_VAL_LENGTH)) for k, v in tags.items()]
        for i in range(0, len(entities), MAX_PARAMS_TAGS_PER_BATCH):
            retry_locked(self.client.log_batch, self.run_id,
                         tags=entities[i: i + MAX_PARAMS_TAGS_PER_BATCH])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        retry_locked(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def log_json(self, obj: Any, name: str) -> None:
        text = json.dumps(_plain(obj), indent=2, default=str)
        self.log_text(text + "\n", name)

    def log_text(self, text: str, name: str) -> None:
        retry_locked(self.client.log_text, self.run_id, text, name)

    def log_dataset(self, name: str, features: Mapping[str, Any], targets: Any, context: str,
                    source: Mapping[str, str]) -> None:
        """Record a data split as the run's input (MLflow's Datasets column): its name,
        digest, schema and shape, and ``source`` (tags saying where the data comes from,
        e.g. the package that ships it). The data itself is not copied."""
        import mlflow.data
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.entities import DatasetInput, InputTag

        dataset = mlflow.data.from_numpy(dict(features), targets=targets, name=name,
                                         source=CodeDatasetSource(tags=dict(source)))
        entity = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])
        retry_locked(self.client.log_inputs, self.run_id, datasets=[entity])

    def mark_not_measured(self, metric: str, reason: str) -> None:
        """Say, on the run, that ``metric`` has no value here and why (the
        metric itself is left absent rather than faked)."""
        message = f"not measured on this host: {reason}"
        self.set_tags({f"{NOT_MEASURED_PREFIX}{metric}": message})
        self._not_measured.append(NotMeasured(metric, message))
