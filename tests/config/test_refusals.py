"""Bad input is refused before any model loads and before an MLflow run opens: one
ConfigError line per refusal class, in-process (compose + validate, the pre-flight),
and through the real run.py: exit code 2, one line on stderr, nothing left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from quantexp.api import compose, validate
from quantexp.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("overrides, message", [
    (["+model.epoch=10"], "unknown config key 'model.epoch'; did you mean model.epochs?"),
    (["+foo=1"], "unknown config key 'foo'; valid keys: model, method"),
    (["+method.calibraton.size=8"], "did you mean method.calibration?"),
    (["hardware.threads=999"], "hardware.threads must be in [1, "),
    (["eval.max_accuracy_drop=-5"], "eval.max_accuracy_drop is in points"),
    (["model.lr=nan"], "model.lr must be > 0 and finite"),
    (["model.lr=0"], "model.lr must be > 0 and finite"),
    (["seed=-1"], "seed must be in [0, 4294967295]"),
    (["seed=4294967296"], "seed must be in [0, 4294967295]"),
    (["model.name=../../../escape"], "is not a safe name"),
    (["tracking.uri=not-a-uri://x"], "is not an MLflow tracking URI"),
    (["tracking.experiment="], "tracking.experiment must be a non-empty name"),
    (["model.channels=[8]"], "model.channels must be two channel counts"),
    (["model.channels=[0,8]"], "model.channels must be two channel counts"),
    (["model.hidden=0"], "model.hidden must be >= 1"),
    (["model=lstm", "model.layers=0"], "model.layers must be >= 1"),
    (["bench.drift_stretches=1"], "bench.drift_stretches must be 0 (off) or >= 2, got 1"),
])
def test_schema_refusals_are_one_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(compose(overrides))
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("uri", ["sqlite:////tmp/x.db", "postgresql+psycopg2://u@h/db", "http://127.0.0.1:5000",
                                 "file:///tmp/mlruns"])
def test_valid_tracking_uris_pass(uri):
    assert validate(compose([f"tracking.uri={uri}"])).tracking.uri == uri


def test_preflight_refusals(tmp_path):
    from quantexp.preflight import preflight

    def refused(overrides: list[str]) -> str:
        with pytest.raises(ConfigError) as err:
            preflight(validate(compose(overrides)), tmp_path)
        return str(err.value)

    assert "cannot be written" in refused(["cache_dir=/dev/null/x"])
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"SQLite format 3\x00" + b"\x07" * 4096)
    assert "not a readable sqlite database" in refused([f"tracking.uri=sqlite:///{corrupt}"])
    assert corrupt.read_bytes()[16:20] == b"\x07" * 4  # read-only: nothing was repaired or migrated
    assert "larger than the training set (4000 items)" in refused(["method.calibration.size=100000"])
    assert "unknown layer name(s) in method.assignment: nolayer" in refused(
        ["method=mixed", "+method.assignment={nolayer:int8}"])
    assert "does not exist" in refused(["model=hf", "model.path=/no/such/dir"])
    preflight(validate(compose(["method=fp32", "method.calibration.size=100000"])), tmp_path)  # fp32 draws none


BAD_COMMAND_LINES = [
    ["+model.epoch=10"], ["hardware.threads=999"], ["model.name=../../../escape"], ["seed=-1"],
    ["tracking.uri=not-a-uri://x"], ["model.lr=nan"], ["model.channels=[8]"], ["cache_dir=/dev/null/x"],
    ["model=resnet"], ["model.hidden=abc"], ["model.channels=[a"], ["method=qat", "model=minilm"],
    ["tracking.uri=sqlite:///{tmp}/corrupt.db"], ["method.calibration.size=100000"],
]


def _run(overrides: list[str], tmp: Path) -> subprocess.CompletedProcess:
    tmp.mkdir(parents=True)
    (tmp / "corrupt.db").write_bytes(b"SQLite format 3\x00" + b"\x07" * 4096)
    args = [o.replace("{tmp}", str(tmp)) for o in overrides]
    cache = [] if any(a.startswith("cache_dir=") for a in args) else [f"cache_dir={tmp}/cache"]
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args, *cache, f"hydra.run.dir={tmp}/run"],
                          cwd=ROOT, env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"},
                          capture_output=True, text=True, timeout=300, check=False)


def test_run_py_refuses_each_with_one_line_exit_2_and_leaves_nothing(tmp_path):
    with ThreadPoolExecutor(2) as pool:
        procs = list(pool.map(lambda ia: _run(ia[1], tmp_path / str(ia[0])), enumerate(BAD_COMMAND_LINES)))
    for i, (overrides, proc) in enumerate(zip(BAD_COMMAND_LINES, procs)):
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (overrides, proc.stderr)
        assert not (tmp_path / str(i) / "mlflow.db").exists(), overrides  # no MLflow run was opened
        assert not list((tmp_path / str(i)).rglob("model.pt")), overrides  # no model was trained
