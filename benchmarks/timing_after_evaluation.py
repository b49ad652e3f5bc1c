"""Does running the model over the test set before timing change what the timing says?
Fresh processes, one after another, alternating two conditions: each quantizes the
default CNN (ptq_static), saves both models as TorchScript as the pipeline's ``none``
exporter does, and times fp32 against int8 with the interleaved harness at batch 16;
with ``evaluate first``, both models first run over the 1,000 test items (as the
pipeline's evaluation does before its timing); with ``evaluate, load again``, both are
evaluated and then loaded again from their saved bytes and timed, as the pipeline's
timing does since stop 29 (``pipeline/measure.py``: a oneDNN int8 module keeps the
primitives of the first batch size it ran). Prints every process's speed-up and the
spread per condition. Run it on a quiet host: the question is the spread between
processes.

    .venv/bin/python benchmarks/timing_after_evaluation.py [--processes 8] [--eval-batch 256]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from default_pair import default_pair

ROOT = Path(__file__).resolve().parents[1]


CONDITIONS = {"plain": "time first", "evaluate": "evaluate first", "reload": "evaluate, load again"}


def child(condition: str, eval_batch: int) -> dict:
    import io

    import torch

    from quantexp.bench.interleaved import measure_interleaved

    bundle, fp32, int8, x, exp = default_pair()
    with torch.inference_mode():
        if condition in ("evaluate", "reload"):
            items = bundle.test.inputs[0]
            for model in (fp32, int8):
                for start in range(0, len(items), eval_batch):
                    model(items[start:start + eval_batch])
        if condition == "reload":
            def again(module):
                buffer = io.BytesIO()
                torch.jit.save(module, buffer)
                buffer.seek(0)
                return torch.jit.load(buffer)

            fp32, int8 = again(fp32), again(int8)
        a, b, speedup = measure_interleaved(lambda: fp32(*x), lambda: int8(*x), batch_size=exp.bench.batch_size,
                                            min_seconds=2.0)
    return {"fp32_ms": a.p50_ms, "int8_ms": b.p50_ms, "ratio": speedup.ratio, "describe": speedup.describe()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=8, help="fresh processes per condition")
    parser.add_argument("--eval-batch", type=int, default=256)
    parser.add_argument("--child", choices=sorted(CONDITIONS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.eval_batch)))
        return
    ratios: dict[str, list[float]] = {condition: [] for condition in CONDITIONS}
    for i in range(args.processes):
        for condition in ratios:
            proc = subprocess.run([sys.executable, __file__, "--child", condition, "--eval-batch", str(args.eval_batch)],
                                  cwd=ROOT, capture_output=True, text=True, check=True)
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            ratios[condition].append(row["ratio"])
            print(f"process {i} {CONDITIONS[condition]:20s} fp32 {row['fp32_ms']:.3f} ms, int8 {row['int8_ms']:.3f} ms: "
                  f"{row['describe']}", flush=True)
    for condition, values in ratios.items():
        print(f"{CONDITIONS[condition]}: speed-up min {min(values):.3f}x, median {statistics.median(values):.3f}x, "
              f"max {max(values):.3f}x over {len(values)} processes")


if __name__ == "__main__":
    main()
