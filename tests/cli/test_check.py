"""`python run.py --check` (alias --dry-run, `quantexp check`), run as a user runs it: it
validates and lists the model's layers, and trains nothing, opens no MLflow run and
writes nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(args: list[str], tmp: Path, *, script: list[str] | None = None) -> subprocess.CompletedProcess:
    """run.py (or ``script``) in the project root; MLflow store, model cache, Hydra's
    run/sweep folders and the temporary folder all under ``tmp``."""
    (tmp / "tmpdir").mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",
           "TMPDIR": str(tmp / "tmpdir")}
    return subprocess.run([sys.executable, *(script or ["run.py"]), *args, f"cache_dir={tmp}/cache",
                           f"hydra.run.dir={tmp}/run", f"hydra.sweep.dir={tmp}/multirun"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)


def assert_nothing_ran(tmp: Path) -> None:
    cache = tmp / "cache"
    assert not cache.exists() or not any(cache.iterdir()), "an fp32 model was trained or cached"
    assert not list(tmp.rglob("results.json"))
    assert not (tmp / "run").exists() and not (tmp / "multirun").exists()
    # (onnxruntime leaves a .ses file of its own in TMPDIR when it is imported.)
    assert not list((tmp / "tmpdir").glob("quantexp-check-*")), "the throwaway Hydra run folder was left behind"
    db = tmp / "mlflow.db"
    if db.exists():  # nothing opened it so far; if something does, it must hold no run
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{db}")
        experiments = [e.experiment_id for e in client.search_experiments()]
        assert not client.search_runs(experiments)


def cnn_layers() -> dict[str, tuple[str, ...]]:
    """The default model's assignable layers and their dtypes, from the model itself."""
    from quantexp.api import compose, validate
    from quantexp.models.zoo import family_builder
    from quantexp.quant.mixed_layers import assignable_layers, supported_dtypes

    exp = validate(compose([]))
    module = family_builder(exp.model).build(10)
    return {name: supported_dtypes(m) for name, m in assignable_layers(module).items()}


def test_check_of_the_default_config(tmp_path):
    outputs = set((ROOT / "outputs").glob("*")) if (ROOT / "outputs").exists() else set()
    proc = run(["--check"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "check: cnn/ptq_static/int8/cpu is valid" in out
    for group, name in [("model", "cnn"), ("method", "ptq_static"), ("precision", "int8"),
                        ("hardware", "cpu"), ("exporter", "none")]:
        assert re.search(rf"^  {group} +{name}\b", out, re.MULTILINE), group
    assert "calibration 256 items" in out
    layers = cnn_layers()
    assert {"conv1", "fc1"} <= set(layers)
    for name, dtypes in layers.items():
        assert re.search(rf"^  {name} +\w+ +{' '.join(dtypes)}$", out, re.MULTILINE), name
    assert "speed-up" not in out and "accuracy" not in out  # no summary of a run
    assert_nothing_ran(tmp_path)
    assert (set((ROOT / "outputs").glob("*")) if (ROOT / "outputs").exists() else set()) == outputs


def test_dry_run_shows_what_a_mixed_assignment_gives_each_layer(tmp_path):
    proc = run(["--dry-run", "method=mixed", "+method.assignment={conv1: int8, fc2: fp16}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assigned = dict(re.findall(r"^  (\w+) .* -> (\w+)$", proc.stdout, re.MULTILINE))
    assert assigned == {"conv1": "int8", "conv2": "fp32", "fc1": "fp32", "fc2": "fp16"}
    assert_nothing_ran(tmp_path)


def test_check_shows_the_values_the_compatibility_check_resolved(tmp_path):
    proc = run(["--check", "exporter=tflite"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # exporter.quantization=auto, resolved from method=ptq_static.
    assert re.search(r"^  resolved +.*exporter\.quantization=full_int8", proc.stdout, re.MULTILINE)
    assert_nothing_ran(tmp_path)


@pytest.mark.parametrize("args,message", [
    (["method=ort_static"],
     "error: method=ort_static cannot run with exporter=none; valid exporter values for ort_static: onnx"),
    # Found only by building the model: conv1 is a Conv2d, int4 is for Linear layers.
    (["method=mixed", "+method.assignment={conv1: int4}"],
     "error: layer conv1 (Conv2d) cannot run in int4 on this backend; valid dtypes for conv1: fp32, fp16, bf16, int8"),
    # Found only with the data: a run would refuse it after the model loaded.
    (["method.calibration.size=100000"],
     "error: method.calibration.size=100000 is larger than the training set"),
    (["-m", "method=fp32,ptq_static"], "error: --check validates one configuration; drop -m/--multirun"),
    # The run's pre-flight (quantexp.preflight): refused by --check as by a run.
    (["model=hf", "model.path=/no/such/dir"], "error: model.path"),
])
def test_check_refuses_bad_input_in_one_line(tmp_path, args, message):
    proc = run(["--check", *args], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr[-3000:]
    assert proc.stdout == ""
    assert_nothing_ran(tmp_path)


def test_check_refuses_a_corrupt_tracking_store_as_a_run_would(tmp_path):
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"not a sqlite database, " * 100)
    proc = run(["--check", f"tracking.uri=sqlite:///{corrupt}"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        f"error: the MLflow store {corrupt} is not a readable sqlite database (file is not a database); "
        "move it aside or set tracking.uri to another store"]
    assert corrupt.read_bytes() == b"not a sqlite database, " * 100  # read, never repaired or replaced


def test_quantexp_check_is_run_check(tmp_path):
    proc = run(["check", "method=ort_static"], tmp_path, script=["-c", "from quantexp.cli import main; main()"])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: method=ort_static cannot run with exporter=none; valid exporter values for ort_static: onnx"]
    proc = run(["run", "--check", "exporter=onnx", "method=ort_static"], tmp_path,
               script=["-c", "from quantexp.cli import main; main()"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "check: cnn/ort_static/int8/cpu is valid" in proc.stdout
    assert_nothing_ran(tmp_path)
