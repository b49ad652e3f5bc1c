"""How long ``quantexp report --experiment`` takes over N runs in MLflow, and how big
report.html gets. One real tiny run is made, then its results.json is logged as the
artifact of N MLflow runs in a fresh sqlite store (the report reads exactly what a run
logs); the report is then timed as a user runs it (a fresh process).

    .venv/bin/python benchmarks/report_scale.py [--runs 50]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="quantexp-report-scale-"))
    import quantexp

    results = quantexp.run("cnn", "ptq_dynamic", "+debug=tiny", "model.n_train=300", "model.epochs=1",
                           "tracking.enabled=false", f"cache_dir={tmp}/cache", output_dir=tmp / "run")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("scale", artifact_location=(tmp / "artifacts").as_uri())
    start = time.perf_counter()
    for i in range(args.runs):
        run = client.create_run(experiment, run_name=f"copy {i}")
        client.log_artifact(run.info.run_id, str(tmp / "run" / "results.json"))
        client.set_terminated(run.info.run_id)
    print(f"logged {args.runs} runs in {time.perf_counter() - start:.1f} s ({results.label})")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "quantexp", "report", "--experiment", "scale",
                           "--tracking-uri", uri, "--out", str(tmp / "report")], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
        sys.exit(proc.returncode)
    size = (tmp / "report" / "report.html").stat().st_size
    print(f"quantexp report over {args.runs} MLflow runs: {wall:.1f} s wall (process start included); "
          f"report.html {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
