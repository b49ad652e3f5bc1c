"""Does the harness measure what an independent timer measures? The harness's p50
for one model vs a stdlib `timeit` loop on the same module, threads and input, in
the same process. They should agree within 5%.

    .venv/bin/python benchmarks/latency_fidelity.py [--model cnn] [--batch 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from quantexp.bench.latency import measure_latency, timeit_reference
from quantexp.models import load_model
from quantexp.models.cnn.config import CNNConfig
from quantexp.models.rnn.config import RNNConfig
from quantexp.runtimes import TorchRuntime

MODELS = {"cnn": CNNConfig(name="cnn", dataset="mnist5k"),
          "lstm": RNNConfig(name="lstm", dataset="mnist5k_rows", epochs=4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="cnn")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "quantexp-bench-cache"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_model(MODELS[args.model], seed=0, cache_dir=Path(args.cache_dir))
    runtime = TorchRuntime(bundle.model)
    batch = bundle.example_inputs(args.batch)
    call = lambda: runtime(*batch)  # noqa: E731 - the same callable for both timers

    rows = []
    for trial in range(3):
        stats = measure_latency(call, batch_size=args.batch, warmup=10, min_iters=200, min_seconds=3.0)
        # number=50 calls per sample, 40 samples: the per-call median of timeit's samples.
        reference = timeit_reference(call, number=50, repeat=40)
        rows.append((trial, stats.p50_ms, reference, 100 * (stats.p50_ms - reference) / reference,
                     stats.cv_pct, stats.n_iters))
    print(f"model={args.model} batch={args.batch} threads={args.threads}")
    print(f"{'trial':>5} {'harness p50 ms':>15} {'timeit ms':>10} {'diff %':>7} {'CV %':>6} {'iters':>6}")
    for trial, p50, ref, diff, cv, n in rows:
        print(f"{trial:5d} {p50:15.4f} {ref:10.4f} {diff:+7.2f} {cv:6.1f} {n:6d}")
    worst = max(abs(r[3]) for r in rows)
    print(f"worst |diff| = {worst:.2f}% -> {'within' if worst <= 5 else 'OUTSIDE'} the 5% goal")


if __name__ == "__main__":
    main()
