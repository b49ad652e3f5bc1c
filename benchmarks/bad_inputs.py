"""Bad-input drill: >= 40 wrong command lines through the real ``run.py``, each in a fresh
folder with a fresh MLflow store and model cache. Refused cleanly = exit code 2, exactly
one line on stderr, no traceback, no MLflow run and no trained model left behind.

    .venv/bin/python benchmarks/bad_inputs.py [--jobs 2]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASES = [  # (label, overrides); "{tmp}" is the case's own folder
    ("typo behind +", ["+model.epoch=10"]), ("unknown top-level key", ["+foo=1"]),
    ("typo in a nested key", ["+bench.warmpu=2"]), ("unknown method key", ["+method.calibraton.size=8"]),
    ("too many threads", ["hardware.threads=999"]), ("zero threads", ["hardware.threads=0"]),
    ("negative gate", ["eval.max_accuracy_drop=-5"]), ("gate over 100 points", ["eval.max_accuracy_drop=250"]),
    ("path traversal in model.name", ["model.name=../../../escape"]), ("slash in model.name", ["model.name=a/b"]),
    ("bad tracking uri", ["tracking.uri=not-a-uri://x"]), ("sqlite uri with 2 slashes", ["tracking.uri=sqlite://x.db"]),
    ("negative seed", ["seed=-1"]), ("seed over 32 bits", ["seed=4294967296"]),
    ("empty experiment name", ["tracking.experiment="]), ("lr nan", ["model.lr=nan"]),
    ("lr inf", ["model.lr=inf"]), ("lr zero", ["model.lr=0"]), ("one channel count", ["model.channels=[8]"]),
    ("zero channels", ["model.channels=[0,8]"]), ("three channel counts", ["model.channels=[4,8,16]"]),
    ("zero hidden", ["model.hidden=0"]), ("zero lstm layers", ["model=lstm", "model.layers=0"]),
    ("zero lstm hidden", ["model=lstm", "model.hidden=0"]), ("zero epochs", ["model.epochs=0"]),
    ("zero batch", ["model.batch_size=0"]), ("test fraction 1", ["model.test_fraction=1.0"]),
    ("unwritable cache dir", ["cache_dir=/dev/null/x"]), ("unknown model", ["model=resnet"]),
    ("unknown method", ["method=awq"]), ("unknown precision", ["precision=int3"]),
    ("unknown hardware", ["hardware=tpu"]), ("unknown exporter", ["exporter=tensorrt"]),
    ("string for an int", ["model.hidden=abc"]), ("unparsable list", ["model.channels=[a"]),
    ("bad observer", ["method.calibration.observer=magic"]), ("zero calibration", ["method.calibration.size=0"]),
    ("zero bench batch", ["bench.batch_size=0"]), ("negative warmup", ["bench.warmup=-1"]),
    ("zero bootstrap", ["eval.bootstrap=0"]), ("confidence 1", ["eval.confidence=1.0"]),
    ("unknown objective", ["objectives=[speed]"]), ("missing model.path", ["model=hf", "model.path=/no/such/dir"]),
    ("incompatible method x family", ["method=qat", "model=minilm"]),
    ("incompatible exporter x method", ["method=ptq_dynamic", "exporter=onnx"]),
    ("ane with onnx", ["hardware=ane", "exporter=onnx"]), ("bf16 precision (no method takes it)", ["precision=bf16"]),
    ("corrupt mlflow.db", ["tracking.uri=sqlite:///{tmp}/corrupt.db"]),
    ("calibration larger than the training split", ["method.calibration.size=100000"]),
    ("unknown layer in a manual assignment", ["method=mixed", "+method.assignment={nolayer:int8}"]),
    ("postgres-less mysql typo scheme", ["tracking.uri=mysq://u@h/db"]),
    ("one timing round (no CI)", ["bench.min_rounds=1"]), ("unknown outlier mode", ["method.outlier_layers=bogus"]),
    ("torch-only int8 embeddings to onnx", ["exporter=onnx", "method.embeddings=int8"]),
    ("cascade of one precision", ["method=cascade", "precision=fp32"]),
    ("cascade target over 100 points", ["method=cascade", "method.target_drop=150"]),
    ("scenario without the cascade", ["method=ptq_static", "+scenario=drift"]),
    ("gate that fails a run but no gate", ["eval.gate_fails_run=maybe"]),
]


def run_case(label: str, overrides: list[str]) -> tuple[str, str, int, int, bool, float, str]:
    tmp = Path(tempfile.mkdtemp(prefix="quantexp-bad-"))
    (tmp / "corrupt.db").write_bytes(b"SQLite format 3\x00" + os.urandom(2048))  # truncated garbage
    args = [o.replace("{tmp}", str(tmp)) for o in overrides]
    cache = [] if any(a.startswith("cache_dir=") for a in args) else [f"cache_dir={tmp}/cache"]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *args, *cache, f"hydra.run.dir={tmp}/run"],
                          cwd=tmp, env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"},
                          capture_output=True, text=True, timeout=600, check=False)
    seconds = time.perf_counter() - start
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    runs = 0
    if (tmp / "mlflow.db").is_file():
        with sqlite3.connect(tmp / "mlflow.db") as db:
            try:
                runs = db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
            except sqlite3.DatabaseError:
                runs = 0
    trained = any((tmp / "cache").rglob("model.pt")) if (tmp / "cache").exists() else False
    clean = proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr and not runs and not trained
    return label, " ".join(overrides), proc.returncode, len(lines), clean, seconds, lines[-1] if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda case: run_case(*case), CASES))
    print(f"{'input':52} {'exit':>4} {'lines':>5} {'clean':>5} {'s':>5}  message")
    for label, overrides, code, n, clean, seconds, message in rows:
        print(f"{overrides[:52]:52} {code:4d} {n:5d} {'yes' if clean else 'NO':>5} {seconds:5.1f}  {message[:110]}")
    print(f"refused cleanly {sum(r[4] for r in rows)}/{len(rows)}")


if __name__ == "__main__":
    main()
