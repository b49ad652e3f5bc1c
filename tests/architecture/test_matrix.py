"""The compatibility matrix says what run.py says: a sample of its cells composed and
validated exactly as a run is, refused with the same line iff the cell is refused; the
methods' own refusals of a model; the command end to end."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from quantexp.api import CONF_DIR, compose, validate
from quantexp.architecture.matrix import (
    NOT_HERE,
    NOT_MEASURABLE,
    REFUSED,
    RUNNABLE,
    compatibility_matrix,
    option_configs,
)
from quantexp.config import ConfigError
from quantexp.hardware.probe import HardwareUnavailable
from tests.mlflow_store import seeded_store

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cells():
    base = validate(compose(["model=cnn"]))
    return base, compatibility_matrix(base, option_configs(["model=cnn"], CONF_DIR))


def test_every_cell_is_decided_and_the_grid_is_complete(cells):
    _, grid = cells
    groups = [sorted(p.stem for p in (CONF_DIR / g).glob("*.yaml")) for g in ("method", "precision", "exporter", "hardware")]
    assert len(grid) == len(groups[0]) * len(groups[1]) * len(groups[2]) * len(groups[3])
    assert {c.status for c in grid} == {RUNNABLE, REFUSED, NOT_HERE, NOT_MEASURABLE} - (
        {NOT_MEASURABLE} if sys.platform == "darwin" else set())
    assert all(c.reason for c in grid if c.status != RUNNABLE)


def test_a_sample_of_cells_agrees_with_what_a_run_would_do(cells):
    _, grid = cells
    rng = random.Random(0)
    sample = rng.sample([c for c in grid if c.status == REFUSED], 12) + [c for c in grid if c.status != REFUSED][:10]
    for cell in sample:
        overrides = ["model=cnn", f"method={cell.method}", f"precision={cell.precision}", f"exporter={cell.exporter}",
                     f"hardware={cell.hardware}"]
        try:
            validate(compose(overrides))
            outcome, reason = "ok", ""
        except ConfigError as exc:
            outcome, reason = REFUSED, str(exc)
        except HardwareUnavailable as exc:
            outcome, reason = NOT_HERE, str(exc)
        if cell.status == REFUSED:
            assert (outcome, reason) == (REFUSED, cell.reason), cell
        elif cell.status == NOT_HERE:
            assert outcome == NOT_HERE, cell
        else:
            assert outcome == "ok", (cell, reason)


def test_a_methods_own_refusal_of_the_model_is_a_refused_cell(cells):
    import torch
    from torch import nn

    from quantexp.models.base import ModelBundle

    base, _ = cells
    conv_only = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.AdaptiveAvgPool1d(10)).eval()
    bundle = ModelBundle.from_module(conv_only, example_inputs=(torch.randn(2, 1, 8, 8),))
    options = option_configs(["model=cnn"], CONF_DIR)
    options = {**options, "method": {k: options["method"][k] for k in ("bnb_int8", "ptq_dynamic")},
               "hardware": {"cpu": options["hardware"]["cpu"]}, "exporter": {"none": options["exporter"]["none"]}}
    grid = {(c.method, c.precision): c for c in compatibility_matrix(base, options, bundle)}
    assert grid[("bnb_int8", "int8")].status == REFUSED and "Linear" in grid[("bnb_int8", "int8")].reason


def test_quantexp_analyze_end_to_end(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = ["model=cnn", "model.epochs=1", "model.n_train=300", f"cache_dir={tmp_path}/cache",
            f"tracking.uri={seeded_store(tmp_path)}"]
    proc = subprocess.run([sys.executable, "-m", "quantexp", "analyze", *args, "--out", str(tmp_path / "out")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "family cnn" in proc.stdout and "what can run" in proc.stdout
    for name in ("layers.csv", "layer_stats.csv", "compatibility.csv", "compatibility.png", "analysis.json"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("quantexp").experiment_id])
    assert run.info.run_name == "analyze cnn" and run.data.params["analysis.family"] == "cnn"
    assert "feature.mac_share.conv" in run.data.metrics
    bad = subprocess.run([sys.executable, "-m", "quantexp", "analyze", "model=resnet"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
