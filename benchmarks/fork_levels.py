"""Do forks sample the speed-up's per-process level? Starts N fresh processes ("parents");
each starts a fork server (``quantexp.bench.forks``) before any torch work, as a run does,
builds the default pair (``default_pair.py``), and times it in K forks, one after another
(``time_rounds``, ``--seconds`` per side each). Prints every fork's speed-up, then the
spread within a parent against the spread of the parents' means: a parent component
beyond what the within-parent spread explains is a level that a run's forks share and
that ``bench.processes`` cannot see.

    .venv/bin/python benchmarks/fork_levels.py [--parents 10] [--forks 4] [--seconds 0.5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def time_saved_pair(folder: str, seconds: float, threads: int) -> float:
    """In a fork: load the saved pair and time it; the ratio of the medians."""
    import torch

    from quantexp.bench.interleaved import time_rounds

    torch.set_num_threads(threads)
    fp32, int8 = (torch.jit.load(f"{folder}/{name}.pt") for name in ("fp32", "int8"))
    batch = torch.load(f"{folder}/batch.pt")
    with torch.inference_mode():
        session = time_rounds(lambda: fp32(*batch), lambda: int8(*batch), min_seconds=seconds)
    return float(np.median(session.reference_ns) / np.median(session.candidate_ns))


def parent(forks: int, seconds: float) -> None:
    from quantexp.bench.forks import ForkServer

    server = ForkServer()  # before any torch work, as pipeline.run starts it
    import torch

    sys.path.insert(0, str(HERE))
    from default_pair import default_pair

    folder = tempfile.mkdtemp(prefix="quantexp-fork-levels-")
    _, fp32, int8, batch, _ = default_pair()
    torch.jit.save(fp32, f"{folder}/fp32.pt")
    torch.jit.save(int8, f"{folder}/int8.pt")
    torch.save(batch, f"{folder}/batch.pt")
    threads = torch.get_num_threads()
    levels = [server.call(time_saved_pair, folder, seconds, threads, timeout_s=120) for _ in range(forks)]
    server.close()
    print(json.dumps(levels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parents", type=int, default=10)
    parser.add_argument("--forks", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--as-parent", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.as_parent:
        parent(args.forks, args.seconds)
        return
    rows = []
    for i in range(args.parents):
        proc = subprocess.run([sys.executable, __file__, "--as-parent", "--forks", str(args.forks),
                               "--seconds", str(args.seconds)], capture_output=True, text=True, check=True)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"parent {i}: " + " ".join(f"{level:.3f}x" for level in rows[-1]), flush=True)
    logs = np.log(np.array(rows))
    within = float(logs.var(axis=1, ddof=1).mean())  # mean within-parent variance
    of_means = float(logs.mean(axis=1).var(ddof=1))  # variance of the parents' means
    parent_part = max(of_means - within / args.forks, 0.0)
    print(f"\n{args.parents} parents x {args.forks} forks, {args.seconds} s per side each (log-ratio sd, ~% of the ratio)")
    print(f"within a parent: {100 * within ** 0.5:.2f} %")
    print(f"of the parents' means: {100 * of_means ** 0.5:.2f} % (without a parent component: "
          f"{100 * (within / args.forks) ** 0.5:.2f} %)")
    print(f"parent component (shared by a parent's forks): {100 * parent_part ** 0.5:.2f} %")


if __name__ == "__main__":
    main()
