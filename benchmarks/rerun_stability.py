"""Is the headline speed-up stable across reruns? Runs the default experiment (``make
run``: CNN, fp32 vs ptq_static, interleaved timing) N times, one process after another,
and prints each rerun's speed-up with its 95% CI, the spread (min/median/max), whether
every rerun's CI contains the median of all reruns, and the verdicts (no rerun should
say the opposite of another). The coverage is printed twice: for the reported CI and for
its round-bootstrap part alone (``interleaved.rounds_ci``), the same reruns scored both
ways. With ``bench.processes`` > 1 (the default) each rerun also prints the speed-up
each of its processes measured.

    .venv/bin/python benchmarks/rerun_stability.py [--reruns 10] [extra overrides...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from quantexp.bench.interleaved import describe_speedup
from quantexp.results import Results

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reruns", type=int, default=10)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every rerun")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="quantexp-reruns-"))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db"}
    rows, rounds_only = [], []
    for i in range(args.reruns):
        out = work / f"run{i}"
        subprocess.run([sys.executable, str(ROOT / "run.py"), *args.overrides, f"hydra.run.dir={out}",
                        f"cache_dir={work / 'cache'}"], cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        results = Results.from_json(out / "results.json")
        c = results.comparison
        rounds_only.append(tuple((results.interleaved or {}).get("rounds_ci") or (c.speedup_ci_low, c.speedup_ci_high)))
        rows.append((c.speedup_p50, c.speedup_ci_low, c.speedup_ci_high, c.speedup_verdict, c.speedup_noisy))
        levels = ", ".join(f"{r:.2f}" for r in (results.interleaved or {}).get("process_ratios") or [])
        print(f"rerun {i}: {describe_speedup(*rows[-1])}" + (f"  (per process: {levels})" if levels else ""),
              flush=True)
    ratios = [r[0] for r in rows]
    median = statistics.median(ratios)
    covering = sum(low <= median <= high for _, low, high, _, _ in rows)
    verdicts = Counter(r[3] for r in rows)
    widths = [100 * (high - low) / 2 / ratio for ratio, low, high, _, _ in rows]
    print(f"\n{args.reruns} reruns of the default experiment {' '.join(args.overrides)}")
    print(f"speed-up min {min(ratios):.3f}x, median {median:.3f}x, max {max(ratios):.3f}x")
    print(f"CI half-width (% of the ratio): min {min(widths):.1f}, median {statistics.median(widths):.1f}, "
          f"max {max(widths):.1f}")
    print(f"reruns whose CI contains the median of all reruns: {covering}/{args.reruns}")
    covering_rounds = sum(low <= median <= high for low, high in rounds_only)
    print(f"... with the round bootstrap alone (no batch means over stretches or processes): "
          f"{covering_rounds}/{args.reruns}")
    opposite = verdicts.get("faster", 0) and verdicts.get("slower", 0)
    print(f"verdicts: {dict(verdicts)} -> {'OPPOSITE verdicts' if opposite else 'no opposite verdicts'}")


if __name__ == "__main__":
    main()
