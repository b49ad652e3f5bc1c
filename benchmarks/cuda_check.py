"""The CUDA path on a GPU host: why latency needs CUDA events and synchronisation, then
fp32 and bitsandbytes (LLM.int8, NF4 with and without double quantization) through
``run.py hardware=cuda`` for each model, summarised from results.json.

    python benchmarks/cuda_check.py [--models cnn,lstm] [--out DIR]
    PYTHONPATH=. python benchmarks/cuda_check.py     # a GPU host where quantexp is not installed

MLflow tracking is switched off (``tracking.enabled=false``) so that the script runs on
a GPU host without an MLflow store; everything else is the path a user runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from quantexp.results import Results

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = {  # label -> run.py overrides
    "fp32": ["method=fp32"],
    "bnb_int8": ["method=bnb_int8"],
    "bnb_nf4 dq": ["method=bnb_nf4", "method.double_quant=true"],
    "bnb_nf4": ["method=bnb_nf4", "method.double_quant=false"],
}


def timing_sanity(batch_size: int, iters: int = 100) -> None:
    """The same GPU call timed three ways: CUDA events (the harness), host clock with
    synchronisation, host clock without it (what a naive timer reports)."""
    import torch

    from quantexp.bench.latency import cuda_event_timer
    from quantexp.models.cnn.family import SmallCNN
    from quantexp.runtimes.torch_runtime import TorchRuntime

    runtime = TorchRuntime(SmallCNN((16, 32), 64), device="cuda")  # the default cnn's shape
    x = torch.randn(batch_size, 1, 28, 28)
    for _ in range(20):
        runtime(x)
    events = cuda_event_timer()
    ev = [events(lambda: runtime(x)) / 1e6 for _ in range(iters)]
    synced, unsynced = [], []
    for _ in range(iters):
        torch.cuda.synchronize()
        t0 = time.perf_counter_ns()
        runtime(x)
        torch.cuda.synchronize()
        synced.append((time.perf_counter_ns() - t0) / 1e6)
    for _ in range(iters):
        t0 = time.perf_counter_ns()
        runtime(x)
        unsynced.append((time.perf_counter_ns() - t0) / 1e6)
    torch.cuda.synchronize()
    print(f"SmallCNN batch {batch_size} on {torch.cuda.get_device_name()}: p50 ms over {iters} calls: "
          f"CUDA events {statistics.median(ev):.4f}, host clock + synchronize "
          f"{statistics.median(synced):.4f}, host clock without synchronize {statistics.median(unsynced):.4f}")


def run(model: str, overrides: list[str], out: Path) -> Results | str:
    run_dir = out / f"{model}_{'_'.join(o.replace('=', '-') for o in overrides)}"
    args = [sys.executable, str(ROOT / "run.py"), f"model={model}", *overrides, "hardware=cuda",
            "tracking.enabled=false", f"cache_dir={out}/cache", f"hydra.run.dir={run_dir}"]
    start = time.perf_counter()
    # ROOT first, the caller's PYTHONPATH kept (a GPU host may carry packages on it)
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run(args, cwd=ROOT, env={**os.environ, "PYTHONPATH": pythonpath},
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
    results = Results.from_json(run_dir / "results.json")
    results.extra["wall_s"] = time.perf_counter() - start
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn,lstm")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():  # one line, not a traceback: nothing here can be measured
        print("not measured on this host: no CUDA device (torch.cuda.is_available() is False)")
        return
    out = args.out or Path(tempfile.mkdtemp(prefix="quantexp-cuda-"))
    for batch_size in (16, 4096):  # launch-bound, then compute-bound
        timing_sanity(batch_size)
    header = (f"{'model':6} {'method':11} {'acc %':>6} {'Δ pts [95% CI]':>21} {'agree %':>7} "
              f"{'p50 ms':>7} {'fp32 p50':>8} {'speed-up':>8} {'GPU MB':>7} {'size MB':>8} "
              f"{'bits/p':>6} {'wall s':>6}")
    lines, host = [header], "?"
    for model in args.models.split(","):
        for label in args.variants.split(","):
            r = run(model, VARIANTS[label], out)
            if isinstance(r, str):
                lines.append(f"{model:6} {label:11} FAILED: {r}")
                continue
            host = r.host["accelerator"]
            c, cand = r.comparison, r.candidate
            fp32 = r.reference or cand
            lines.append(
                f"{model:6} {label:11} {100 * c.accuracy:6.2f} "
                f"{100 * c.accuracy_delta:+5.2f} [{100 * c.accuracy_delta_ci_low:+5.2f},"
                f"{100 * c.accuracy_delta_ci_high:+5.2f}] {100 * c.agreement_fp32:7.2f} "
                f"{cand.latency.p50_ms:7.3f} {fp32.latency.p50_ms:8.3f} "
                f"{r.speedup or 1.0:7.2f}x {cand.peak_gpu_mb:7.1f} "
                f"{cand.size_bytes / 1e6:8.3f} {cand.bits_per_param:6.2f} {r.extra['wall_s']:6.1f}")
            print(lines[-1], flush=True)
    print(f"\n{host}; latency: CUDA events, default bench settings (batch 16); speed-up vs the "
          "same run's fp32 on the GPU")
    print("\n".join(lines))
    print(f"results under {out}")


if __name__ == "__main__":
    main()
