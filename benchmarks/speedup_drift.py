"""Does the speed-up itself wander while it is timed, and which CI covers it? Each of N
fresh processes quantizes the default CNN (ptq_static), saves fp32 and int8 as
TorchScript as the pipeline's ``none`` exporter does, and times them interleaved for a
long stretch (``--seconds`` of calls per side, one rounds trace). The traces are cut
into windows as long as the default experiment's timing (``--window`` rounds), and each
window's CI is scored by whether it contains the median speed-up of all windows: the
bootstrap over single rounds, and the batch-means interval over 2-10 contiguous
stretches (``bench.drift_stretches``). Prints the speed-up of every 20 rounds too, so the
wander can be seen. Run it on a quiet host.

    .venv/bin/python benchmarks/speedup_drift.py [--processes 4] [--seconds 20] [--window 200]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from default_pair import default_pair

ROOT = Path(__file__).resolve().parents[1]
STRETCHES = (2, 3, 4, 5, 8, 10)


def child(trace: Path, seconds: float) -> None:
    import torch

    from quantexp.bench.interleaved import measure_interleaved

    _, fp32, int8, x, exp = default_pair()
    with torch.inference_mode():
        a, b, speedup = measure_interleaved(lambda: fp32(*x), lambda: int8(*x), batch_size=exp.bench.batch_size,
                                            min_seconds=seconds, max_seconds=10 * seconds)
    np.savez(trace, fp32=np.reshape(a.raw_ms, (speedup.rounds, -1)), int8=np.reshape(b.raw_ms, (speedup.rounds, -1)))


def score(traces: list[tuple[np.ndarray, np.ndarray]], window: int) -> None:
    from quantexp.bench.interleaved import batch_means_ratio_ci, bootstrap_ratio_ci

    ratios, cis = [], {"rounds": [], **{k: [] for k in STRETCHES}}
    for fp32, int8 in traces:
        for start in range(0, len(fp32) - window + 1, window):
            a, b = fp32[start:start + window], int8[start:start + window]
            ratios.append(np.median(a) / np.median(b))
            cis["rounds"].append(bootstrap_ratio_ci(a, b, n_boot=1000))
            for k in STRETCHES:
                cis[k].append(batch_means_ratio_ci(a, b, stretches=k))
    median = float(np.median(ratios))
    print(f"\n{len(ratios)} windows of {window} rounds: speed-up min {min(ratios):.3f}x, median {median:.3f}x, "
          f"max {max(ratios):.3f}x")
    print("CI                          contains the median   half-width (median, % of the ratio)")
    for name, intervals in cis.items():
        covered = sum(low <= median <= high for low, high in intervals)
        width = np.median([(high - low) / 2 for low, high in intervals]) / median * 100
        shown = "bootstrap over rounds" if name == "rounds" else f"batch means, {name} stretches"
        union = ""
        if name != "rounds":
            both = [(min(r[0], d[0]), max(r[1], d[1])) for r, d in zip(cis["rounds"], intervals)]
            union = f"   (union with the bootstrap: {sum(lo <= median <= hi for lo, hi in both)}/{len(both)})"
        print(f"{shown:28s}{covered:3d}/{len(intervals):<18d}{width:5.1f}{union}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0, help="call time per side in each trace")
    parser.add_argument("--window", type=int, default=200, help="rounds per scored window")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.seconds)
        return
    work = Path(tempfile.mkdtemp(prefix="quantexp-drift-"))
    traces = []
    for i in range(args.processes):
        trace = work / f"trace{i}.npz"
        subprocess.run([sys.executable, __file__, "--child", str(trace), "--seconds", str(args.seconds)],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        data = np.load(trace)
        traces.append((data["fp32"], data["int8"]))
        fp32, int8 = traces[-1]
        every = [np.median(fp32[s:s + 20]) / np.median(int8[s:s + 20]) for s in range(0, len(fp32) - 19, 20)]
        print(f"process {i}, {len(fp32)} rounds; speed-up of every 20 rounds: "
              + " ".join(f"{r:.2f}" for r in every), flush=True)
    score(traces, args.window)


if __name__ == "__main__":
    main()
