"""Does the harness measure what independent timers measure? The harness's p50 for one
model vs ``torch.utils.benchmark.Timer.blocked_autorange`` (and the stdlib ``timeit``) on
the same module, threads and input, in one process, the timers interleaved (the order
swapped every trial). Goal: within 5 % of torch.utils.benchmark's median.

    .venv/bin/python benchmarks/latency_fidelity.py [--model cnn] [--batch 16] [--threads 2] [--trials 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from torch.utils import benchmark

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
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="per timer per trial")
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "quantexp-bench-cache"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_model(MODELS[args.model], seed=0, cache_dir=Path(args.cache_dir))
    runtime = TorchRuntime(bundle.model)
    batch = bundle.example_inputs(args.batch)
    call = lambda: runtime(*batch)  # noqa: E731 - the same callable for every timer
    timer = benchmark.Timer(stmt="call()", globals={"call": call}, num_threads=args.threads)

    def harness() -> float:
        return measure_latency(call, batch_size=args.batch, warmup=10, min_iters=200,
                               min_seconds=args.seconds).p50_ms

    def torch_benchmark() -> float:
        return timer.blocked_autorange(min_run_time=args.seconds).median * 1e3

    def stdlib_timeit() -> float:
        return timeit_reference(call, number=50, repeat=40)

    timers = {"harness": harness, "torch.utils.benchmark": torch_benchmark, "timeit": stdlib_timeit}
    rows = []
    for trial in range(args.trials):
        order = list(timers) if trial % 2 == 0 else list(reversed(timers))
        rows.append({name: timers[name]() for name in order})
    print(f"model={args.model} batch={args.batch} threads={args.threads} trials={args.trials} "
          f"(timers interleaved, order swapped every trial; ms per call)")
    print(f"{'trial':>5} {'harness p50':>12} {'torch.bench':>12} {'timeit':>9} {'diff vs torch %':>16}")
    for trial, row in enumerate(rows):
        ref = row["torch.utils.benchmark"]
        print(f"{trial:5d} {row['harness']:12.4f} {ref:12.4f} {row['timeit']:9.4f} "
              f"{100 * (row['harness'] - ref) / ref:+16.2f}")
    med = {name: statistics.median(r[name] for r in rows) for name in timers}
    diff = 100 * (med["harness"] - med["torch.utils.benchmark"]) / med["torch.utils.benchmark"]
    print(f"median over trials: harness {med['harness']:.4f} ms, torch.utils.benchmark "
          f"{med['torch.utils.benchmark']:.4f} ms, timeit {med['timeit']:.4f} ms -> harness vs torch "
          f"{diff:+.2f}% ({'within' if abs(diff) <= 5 else 'OUTSIDE'} the 5% goal)")


if __name__ == "__main__":
    main()
