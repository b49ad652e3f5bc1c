"""quantexp recommend end to end on tiny CNN settings: history from a real sweep in a real
MLflow store, the ranked options, verify=true running the top option for real, an
impossible constraint (exit 3, the closest named) and bad settings (exit 2, one line)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.command_here import quantexp_here
from tests.mlflow_store import seeded_store
from tests.session import built_once

ROOT = Path(__file__).resolve().parents[2]
MODEL = ["model=cnn", "model.epochs=1", "model.n_train=400", "model.n_test=200", "+debug=tiny"]


def quantexp(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
    return subprocess.run([sys.executable, "-m", "quantexp", *args], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=900, check=False)


def _history(tmp: Path) -> None:
    seeded_store(tmp)  # what `quantexp` below reaches through MLFLOW_TRACKING_URI
    proc = quantexp(["run", "-m", *MODEL, "method=fp32,ptq_static,ptq_dynamic", f"cache_dir={tmp}/cache",
                     f"hydra.sweep.dir={tmp}/history"], tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def store():
    return built_once("recommend_history", _history)  # once per session, whichever worker comes first


def test_recommend_ranks_from_history_and_verifies_the_top_option(store):
    proc = quantexp(["recommend", *MODEL, f"cache_dir={store}/cache", "constraints.max_accuracy_drop=50",
                     "verify=true", "top_k=1"], store)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "history: 3 measured runs of 1 models" in proc.stdout and "measured on this model" in proc.stdout
    advice = json.loads((store / "reports" / "recommend" / "cnn" / "recommendation.json").read_text())
    first = advice["ranked"][0]
    assert first["meets"] and advice["verified"]["best"] == first["option"]
    assert Path(advice["verified"]["report"]).is_file() and len(advice["verified"]["runs"]) == 1
    measured = [r for r in advice["ranked"] if r["history"]["measured"]]
    assert {r["option"].split("@")[0] for r in measured} == {"ptq_static", "ptq_dynamic"}


def test_an_impossible_constraint_names_the_closest_option(store, tmp_path, capsys, monkeypatch):
    # in this process (the command line is the subject of the test above), in a folder of its
    # own: it writes its recommendation.json where the test above reads its own
    proc = quantexp_here(["recommend", *MODEL, f"cache_dir={store}/cache", "constraints.max_size_mb=0.0001"],
                         tmp_path, capsys, monkeypatch, store=store / "mlflow.db")
    assert proc.returncode == 3, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no runnable method meets max_accuracy_drop=1.0, max_size_mb=0.0001") and "closest:" in last


@pytest.mark.parametrize("setting, message", [
    ("constraints.max_accuracy_drop=-1", "must be >= 0"), ("constraints.max_latency=3", "unknown setting"),
    ("verify=maybe", "verify must be"), ("top_k=0", "top_k"), ("model=resnet", "resnet"),
])
def test_bad_settings_are_one_line(store, setting, message, capsys, monkeypatch):
    proc = quantexp_here(["recommend", setting], store, capsys, monkeypatch)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
