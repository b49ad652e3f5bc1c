"""Where a run to compare comes from: a results.json (or the run folder holding it), an
MLflow run id, or a pinned baseline (``@name``: the run tagged ``quantexp.baseline =
name`` by ``quantexp baseline set``). Each becomes a ``RunRecord``: the typed results,
the per-item test predictions (for the paired accuracy test) and the MLflow run id
when there is one (the compare verdict is tagged onto it).

A spec that names nothing (a missing file, an unknown run id, no pinned baseline of
that name) is a ``SourceError``: one line for the command to print, exit code 2.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantexp.results import Results

BASELINE_TAG = "quantexp.baseline"
PREDICTIONS = "predictions.npz"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class SourceError(ValueError):
    """A run that cannot be found or read; one line."""


@dataclass
class RunRecord:
    results: Results
    predictions: dict[str, np.ndarray] | None  # labels, ids, one array per candidate; None: not kept
    run_id: str | None
    where: str  # how the user named it, for messages

    @property
    def correct(self) -> np.ndarray | None:
        """Per-item correctness of the run's candidate (the method's artifact)."""
        if self.predictions is None or self.results.label not in self.predictions:
            return None
        return self.predictions[self.results.label] == self.predictions["labels"]


def _read_predictions(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    with np.load(path) as data:
        return {name: data[name] for name in data.files}


def from_path(path: Path) -> RunRecord:
    path = path / "results.json" if path.is_dir() else path
    if not path.is_file():
        raise SourceError(f"{path} does not exist (give a results.json, a run folder, an MLflow run id or @name)")
    try:
        results = Results.from_json(path)
    except (ValueError, KeyError) as exc:
        raise SourceError(f"{path} is not a quantexp results.json: {exc}") from exc
    # beside the results first (a copied run folder), then where the run wrote it
    predictions = _read_predictions(path.parent / PREDICTIONS)
    if predictions is None and results.predictions_path:
        predictions = _read_predictions(Path(results.predictions_path))
    return RunRecord(results, predictions, results.mlflow_run_id, str(path))


def from_mlflow(client, run_id: str, where: str | None = None) -> RunRecord:
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise SourceError(f"no MLflow run {run_id} in this store") from exc
    names = {a.path for a in client.list_artifacts(run_id)}
    if "results.json" not in names:
        raise SourceError(f"MLflow run {run_id} ({run.info.run_name}) has no results.json: a sweep's parent "
                          "run, or a run that failed")
    with tempfile.TemporaryDirectory(prefix="quantexp-compare-") as tmp:
        results = Results.from_json(client.download_artifacts(run_id, "results.json", tmp))
        predictions = (_read_predictions(Path(client.download_artifacts(run_id, PREDICTIONS, tmp)))
                       if PREDICTIONS in names else None)
    return RunRecord(results, predictions, run_id, where or run_id)


def pinned_run_id(client, experiment_id: str, name: str) -> str | None:
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{BASELINE_TAG}` = '{name}'",
                              max_results=2, order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


def resolve(spec: str, client_factory, experiment: str = "quantexp") -> RunRecord:
    """``spec``: a path, a 32-hex MLflow run id, or ``@name`` (a pinned baseline).
    ``client_factory()`` opens the MLflow client only when the spec needs one."""
    if spec.startswith("@"):
        client = client_factory()
        found = client.get_experiment_by_name(experiment)
        run_id = pinned_run_id(client, found.experiment_id, spec[1:]) if found else None
        if run_id is None:
            raise SourceError(f"no baseline pinned as {spec[1:]!r} in experiment {experiment!r}: "
                              f"quantexp baseline set <run id> --name {spec[1:]}")
        return from_mlflow(client, run_id, spec)
    if _RUN_ID.match(spec) and not Path(spec).exists():
        return from_mlflow(client_factory(), spec)
    return from_path(Path(spec))


__all__ = ["BASELINE_TAG", "RunRecord", "SourceError", "from_mlflow", "from_path", "pinned_run_id", "resolve"]
