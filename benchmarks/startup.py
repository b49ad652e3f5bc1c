"""Start-up cost of the CLI: wall time of `run.py --help` and `run.py --cfg job`
(median of N runs, each a fresh process), and proof that neither imports the
heavy optional back-ends.

    .venv/bin/python benchmarks/startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "litert_torch", "ai_edge_litert", "coremltools", "jax", "bitsandbytes",
         "onnxruntime", "mlflow", "torch")
# run.py executed as __main__; Hydra exits with SystemExit after --help / --cfg.
PROBE = """
import runpy, sys
sys.argv = ["run.py", *sys.argv[1:]]
try:
    runpy.run_path("run.py", run_name="__main__")
except SystemExit:
    pass
finally:
    heavy = [m for m in {heavy!r} if m in sys.modules]
    print("HEAVY_IMPORTED=" + ",".join(heavy), file=sys.stderr)
"""


def timed(args: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - start
    line = [x for x in proc.stderr.splitlines() if x.startswith("HEAVY_IMPORTED=")][-1]
    return elapsed, line.split("=", 1)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    repeat = parser.parse_args().repeat
    print(f"{'command':28} {'median s':>9} {'min s':>7} {'max s':>7}  heavy modules imported")
    for args in (["--help"], ["--cfg", "job"], ["--cfg", "job", "model=minilm", "method=ptq_dynamic"]):
        times, heavy = [], ""
        for _ in range(repeat):
            seconds, heavy = timed(args)
            times.append(seconds)
        print(f"{'run.py ' + ' '.join(args):28} {statistics.median(times):9.2f} {min(times):7.2f} "
              f"{max(times):7.2f}  {heavy or 'none'}")


if __name__ == "__main__":
    main()
