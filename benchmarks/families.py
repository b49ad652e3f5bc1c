"""fp32 vs ptq_static vs ptq_dynamic for every model family, through run.py as a
user runs it (one Hydra multirun per family), summarised from results.json.

    .venv/bin/python benchmarks/families.py [--families cnn,lstm,minilm] [--extra "bench.min_seconds=2"]
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


def run_family(family: str, methods: str, extra: list[str], out: Path) -> tuple[list[dict], float]:
    sweep_dir = out / family
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "run.py"), "-m", f"model={family}", f"method={methods}",
                    f"hydra.sweep.dir={sweep_dir}", *extra], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    return [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/results.json"))], wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="cnn,lstm,minilm")
    parser.add_argument("--methods", default="fp32,ptq_static,ptq_dynamic")
    parser.add_argument("--extra", default="", help="extra Hydra overrides, quoted")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="quantexp-families-"))
    header = (f"{'model':8} {'method':12} {'acc %':>7} {'Δ pts [95% CI]':>22} {'agree %':>8} "
              f"{'p50 ms':>8} {'fp32 p50':>9} {'speed-up':>8} {'size ratio':>10} {'bits/p':>7}")
    lines = [header]
    for family in args.families.split(","):
        results, wall = run_family(family, args.methods, shlex.split(args.extra), out)
        for r in results:
            c, name = r["comparison"], r["method"]["name"]
            cand = r["candidates"][name]
            fp32 = r["candidates"].get("fp32", cand)
            lines.append(
                f"{family:8} {name:12} {100 * c['accuracy']:7.2f} "
                f"{100 * c['accuracy_delta']:+6.2f} [{100 * c['accuracy_delta_ci_low']:+5.2f},{100 * c['accuracy_delta_ci_high']:+5.2f}] "
                f"{100 * c['agreement_fp32']:8.2f} {cand['latency']['p50_ms']:8.3f} {fp32['latency']['p50_ms']:9.3f} "
                f"{c.get('speedup_p50', 1.0):7.2f}x {c.get('size_ratio', 1.0):10.3f} {cand['bits_per_param']:7.2f}")
        lines.append(f"{family}: sweep wall time {wall:.1f} s (batch {results[0]['candidates'][results[0]['method']['name']]['latency']['batch_size']:.0f}, "
                     f"threads {results[0]['host']['threads']})")
    print("\n".join(lines))
    print(f"results under {out}")


if __name__ == "__main__":
    main()
