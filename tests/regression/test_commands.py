"""quantexp compare / baseline / history on real runs (CNN, tiny settings) in a real
MLflow store: a rerun is no regression, planted damage is, bad input is one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import quantexp as qx
from tests.command_here import quantexp_here
from tests.mlflow_store import seeded_store

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model=cnn", "model.epochs=1", "model.n_train=400", "model.n_test=200", "+debug=tiny",
        "method=ptq_static", "method.calibration.size=32"]


def quantexp(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
    return subprocess.run([sys.executable, "-m", "quantexp", *args], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=600, check=False)


def run(tmp: Path, name: str, *extra: str) -> dict:
    """One run in-process into ``tmp/name``, its MLflow run in the store ``tmp/mlflow.db``."""
    results = qx.run(None, None, *TINY, *extra, f"cache_dir={tmp / 'cache'}",
                     f"tracking.uri={seeded_store(tmp)}", output_dir=tmp / name)
    return results.to_dict()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs of one configuration and a third on a different test set, in one store."""
    tmp = tmp_path_factory.mktemp("regression")
    for name, extra in (("first", []), ("second", []), ("other_items", ["model.n_test=300"])):
        run(tmp, name, *extra)
    return tmp, {name: tmp / name for name in ("first", "second", "other_items")}


def test_a_rerun_is_no_regression_and_a_planted_drop_is(runs, tmp_path):
    tmp, run = runs
    # the rerun: same predictions (deterministic), latency within noise; gate on accuracy + speed-up
    proc = quantexp(["compare", "--baseline", str(run["first"]), "--candidate", str(run["second"]),
                     "--json", str(tmp_path / "same.json"), "--no-tag", "--set", "fail_on=[accuracy,speedup]"],
                    tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    verdict = json.loads((tmp_path / "same.json").read_text())
    assert verdict["regressed"] == []
    by_metric = {v["metric"]: v for v in verdict["verdicts"]}
    assert by_metric["accuracy"]["status"] == "unchanged" and by_metric["accuracy"]["estimate"] == 0
    assert by_metric["speedup"]["status"] in ("unchanged", "improved", "regressed")  # measured, not gated here
    assert by_metric["latency"]["ci_low"] <= by_metric["latency"]["estimate"] <= by_metric["latency"]["ci_high"]

    # planted: a copy of the second run whose candidate got 10 % of the items wrong
    planted = tmp_path / "planted"
    shutil.copytree(run["second"], planted)
    data = dict(np.load(planted / "predictions.npz"))
    right = np.flatnonzero(data["ptq_static"] == data["labels"])[:20]
    data["ptq_static"][right] = (data["labels"][right] + 1) % 10
    np.savez_compressed(planted / "predictions.npz", **data)
    proc = quantexp(["compare", "--baseline", str(run["first"]), "--candidate", str(planted),
                     "--json", str(tmp_path / "planted.json"), "--no-tag"], tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "REGRESSION in accuracy" in proc.stdout
    accuracy = json.loads((tmp_path / "planted.json").read_text())["verdicts"][0]
    assert accuracy["status"] == "regressed" and accuracy["estimate"] == pytest.approx(-10.0)

    # both reruns as the baseline: accuracy paired against the first, timing judged against each
    proc = quantexp(["compare", "--baseline", str(run["first"]), "--baseline", str(run["second"]),
                     "--candidate", str(planted), "--json", str(tmp_path / "two.json"), "--no-tag"], tmp_path)
    assert proc.returncode == 1 and "(+1 reruns)" in proc.stdout, proc.stdout + proc.stderr
    two = json.loads((tmp_path / "two.json").read_text())
    assert [Path(b["where"]).parent for b in [two["baseline"], *two["more_baselines"]]] == [run["first"], run["second"]]
    assert two["verdicts"][0] == accuracy
    assert "judged against each of 2 baseline runs" in two["verdicts"][1]["detail"]


def test_runs_on_different_test_sets_are_refused(runs, tmp_path):
    _, run = runs
    proc = quantexp(["compare", "--baseline", str(run["first"]), "--candidate", str(run["other_items"])], tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "different test sets" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--baseline", "/nonexistent/results.json", "--candidate", "/nonexistent"], "does not exist"),
    (["--baseline", "@nope", "--candidate", "/nonexistent"], "no MLflow store"),
    (["--baseline", ".", "--candidate", ".", "--set", "latency_min_effect=2"], "latency_min_effect"),
])
def test_bad_input_is_one_line(args, message, tmp_path, capsys, monkeypatch):
    proc = quantexp_here(["compare", *args], tmp_path, capsys, monkeypatch)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


def test_pinned_baseline_tags_and_history(tmp_path, capsys, monkeypatch):
    """Three runs in one store: pin the first, compare the last with @main by run id
    (the verdict lands as tags on the candidate), then the history of the configuration."""
    from mlflow.tracking import MlflowClient

    ids = [run(tmp_path, f"r{i}")["mlflow_run_id"] for i in range(3)]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")

    def command(args: list[str]) -> subprocess.CompletedProcess:
        # in this process (the command line is the subject of the tests above), the store
        # found through MLFLOW_TRACKING_URI=sqlite:///<tmp>/mlflow.db
        return quantexp_here(args, tmp_path, capsys, monkeypatch)

    assert command(["baseline", "set", ids[0], "--name", "main"]).returncode == 0
    shown = command(["baseline", "show", "--name", "main"])
    assert ids[0] in shown.stdout
    proc = command(["compare", "--baseline", "@main", "--candidate", ids[2], "--set", "fail_on=[accuracy]"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tags = client.get_run(ids[2]).data.tags
    assert tags["quantexp.regression"] == "none" and tags["quantexp.regression.accuracy"] == "unchanged"
    assert tags["quantexp.regression.baseline"] == ids[0]
    # re-pinning moves the tag
    assert command(["baseline", "set", ids[1], "--name", "main"]).returncode == 0
    assert "quantexp.baseline" not in client.get_run(ids[0]).data.tags

    proc = command(["history", "model.name=cnn", "method.name=ptq_static", "--out", str(tmp_path / "h")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "(3 runs)" in proc.stdout and "latest vs previous: unchanged" in proc.stdout
    rows = (tmp_path / "h" / "history.csv").read_text().splitlines()
    assert len(rows) == 4 and (tmp_path / "h" / "history.png").stat().st_size > 10_000
    proc = command(["history", "model.name=lstm"])
    assert proc.returncode == 2 and "no finished run matches" in proc.stderr
