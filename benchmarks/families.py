"""fp32 vs ptq_static vs ptq_dynamic for every model family, through run.py as a
user runs it (one Hydra multirun per family), summarised from results.json.

    .venv/bin/python benchmarks/families.py [--families cnn,lstm,minilm] [--extra "bench.min_seconds=2"]

``run_sweep`` and ``format_row`` are shared with the other sweep benchmarks.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HEADER = (f"{'model':8} {'method':14} {'runtime':12} {'acc %':>7} {'Δ pts [95% CI]':>22} {'agree %':>8} "
          f"{'p50 ms':>8} {'fp32 p50':>9} {'speed-up':>8} {'size MB':>8} {'size ratio':>10} {'bits/p':>7}")


def run_sweep(sweep_dir: Path, overrides: list[str]) -> tuple[list[dict], float]:
    """One ``run.py -m`` with ``overrides``; the results.json of every job that finished, and
    the wall time. A failed job is reported by run.py (FAILED in MLflow) and has no row."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "-m", *overrides,
                           f"hydra.sweep.dir={sweep_dir}"], cwd=ROOT, check=False,
                          stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(f"warning: run.py -m {' '.join(overrides)} exited {proc.returncode}", file=sys.stderr)
    return [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/results.json"))], wall


def format_row(r: dict, label: str | None = None) -> str:
    """One results.json as a table row (speed-up: vs the same run's fp32 artifact, i.e. the
    same runtime)."""
    c, name = r["comparison"], r["method"]["name"]
    cand = r["candidates"][name]
    fp32 = r["candidates"].get("fp32", cand)
    return (f"{r['model']['name']:8} {label or name:14} {cand['runtime']:12} {100 * c['accuracy']:7.2f} "
            f"{100 * c['accuracy_delta']:+6.2f} [{100 * c['accuracy_delta_ci_low']:+5.2f},"
            f"{100 * c['accuracy_delta_ci_high']:+5.2f}] {100 * c['agreement_fp32']:8.2f} "
            f"{cand['latency']['p50_ms']:8.3f} {fp32['latency']['p50_ms']:9.3f} "
            f"{c.get('speedup_p50', 1.0):7.2f}x {cand['size_bytes'] / 1e6:8.3f} "
            f"{c.get('size_ratio', 1.0):10.3f} {cand['bits_per_param']:7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="cnn,lstm,minilm")
    parser.add_argument("--methods", default="fp32,ptq_static,ptq_dynamic")
    parser.add_argument("--extra", default="", help="extra Hydra overrides, quoted")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="quantexp-families-"))
    lines = [HEADER]
    for family in args.families.split(","):
        results, wall = run_sweep(out / family, [f"model={family}", f"method={args.methods}",
                                                 *shlex.split(args.extra)])
        lines += [format_row(r) for r in results]
        first = results[0]
        lines.append(f"{family}: sweep wall time {wall:.1f} s (batch "
                     f"{first['candidates'][first['method']['name']]['latency']['batch_size']:.0f}, "
                     f"threads {first['host']['threads']})")
    print("\n".join(lines))
    print(f"results under {out}")


if __name__ == "__main__":
    main()
