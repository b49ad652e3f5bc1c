"""Each PyTorch quantized engine x precision that can run on this CPU, timed interleaved
against fp32 in the same process (quantexp.bench.interleaved): the speed-up with its 95%
CI. Precisions this CPU cannot run for real (bf16/fp16 without the instructions, MPS off
macOS) are printed with the reason instead of a figure.

    .venv/bin/python benchmarks/engines.py [--threads 1] [--batch 16] [--seconds 2]

A shared or busy machine moves these figures: quote them only from a quiet host.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import quantexp  # noqa: E402
from quantexp.bench.interleaved import describe_speedup, measure_interleaved  # noqa: E402
from quantexp.hardware.cpu import read_cpu_info  # noqa: E402
from quantexp.hardware.engine import bf16_unsupported_reason, choose_engine, fp16_unsupported_reason  # noqa: E402
from quantexp.hardware.probe import unavailable_reason  # noqa: E402
from quantexp.methods.lowp.method import to_precision, weight_only_int8  # noqa: E402


def models():
    """A small CNN (conv-bound) and an MLP (GEMM-bound), untrained: speed does not depend on the weights."""
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1),
                        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
                        nn.Linear(128, 10)).eval()
    mlp = nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)).eval()
    return {"cnn": (cnn, (1, 28, 28)), "mlp": (mlp, (512,))}


def timed(fp32, cand, x, args) -> str:
    with torch.inference_mode():
        _, _, s = measure_interleaved(lambda: fp32(x), lambda: cand(x), batch_size=len(x), warmup=3, min_rounds=10,
                                      min_iters=30, min_seconds=args.seconds, max_seconds=60, n_boot=1000)
    return describe_speedup(s.ratio, s.ci_low, s.ci_high, s.verdict, s.noisy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # torch.ao's deprecation notices, once per quantize call
    torch.set_num_threads(args.threads)
    cpu = read_cpu_info()
    supported = [e for e in torch.backends.quantized.supported_engines if e in ("x86", "fbgemm", "onednn")]
    print(f"CPU: {cpu.model} ({', '.join(cpu.isa)}); torch {torch.__version__}, {args.threads} thread(s), "
          f"batch {args.batch}; load average {os.getloadavg()[0]:.1f} on {cpu.usable_cores} cores")
    print(f"auto engine: {choose_engine('auto', list(torch.backends.quantized.supported_engines), cpu)[1]}")
    print(f"{'model':6} {'engine':8} {'precision':22} speed-up vs fp32 (interleaved, 95% CI)")
    for name, (model, shape) in models().items():
        x = torch.randn(args.batch, *shape)
        calib = torch.randn(64, *shape)
        for engine in supported:
            torch.backends.quantized.engine = engine
            over = [f"hardware.engine={engine}"]
            rows = {"int8 static (ptq_static)": lambda: quantexp.quantize(model, "ptq_static", calibration=calib,
                                                                           overrides=over).model,
                    "int8 dynamic (ptq_dynamic)": lambda: quantexp.quantize(model, "ptq_dynamic", calibration=calib,
                                                                             overrides=over).model}
            for label, make in rows.items():
                try:
                    print(f"{name:6} {engine:8} {label:22} {timed(model, make(), x, args)}")
                except Exception as exc:  # noqa: BLE001 - an engine that cannot run this op: say so
                    print(f"{name:6} {engine:8} {label:22} cannot run: {type(exc).__name__}: {str(exc).splitlines()[0]}")
        print(f"{name:6} {'-':8} {'int8 weight-only':22} {timed(model, weight_only_int8(model)[0], x, args)}")
        for precision, reason in (("bf16", bf16_unsupported_reason(cpu)), ("fp16", fp16_unsupported_reason(cpu))):
            text = f"not measured on this host: {reason}" if reason else \
                timed(model, to_precision(model, precision), x, args)
            print(f"{name:6} {'-':8} {precision + ' (cast)':22} {text}")
    mps = unavailable_reason("mps")
    print(f"mps: {'not measured on this host: ' + mps if mps else 'available: run with hardware=mps'}")
    print("Figures from a shared or busy machine are not speed facts: re-measure on a quiet host.")


if __name__ == "__main__":
    main()
