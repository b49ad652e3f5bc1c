"""fp32 vs ptq_static vs ptq_dynamic for every model family: the recipe
``+experiment=families`` run as a user runs it, one row per job from its typed results.

    .venv/bin/python benchmarks/families.py [--families cnn,lstm,minilm] [--extra "bench.min_seconds=2"]
"""

from __future__ import annotations

import argparse
import shlex
import tempfile
from pathlib import Path

from quantexp.report.sweeps import HEADER, format_row, run_sweep, sweep_param


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="cnn,lstm,minilm")
    parser.add_argument("--methods", default="fp32,ptq_static,ptq_dynamic")
    parser.add_argument("--extra", default="", help="extra Hydra overrides, quoted")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="quantexp-families-"))
    lines = [HEADER]
    for family in args.families.split(","):
        # one sweep per family so that each family's wall time is its own
        results, wall = run_sweep(out / family, ["+experiment=families", sweep_param("model", family),
                                                 sweep_param("method", args.methods), *shlex.split(args.extra)])
        lines += [format_row(r) for r in results]
        if results:
            latency = results[0].candidate.latency
            lines.append(f"{family}: sweep wall time {wall:.1f} s (batch "
                         f"{latency.batch_size if latency else '-'}, threads {results[0].host['threads']})")
        print(*lines[-len(results) - 1:], sep="\n", flush=True)
    print("\n".join(lines))
    print(f"results under {out}")


if __name__ == "__main__":
    main()
