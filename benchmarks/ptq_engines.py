"""The post-training engines side by side, per model: fp32 vs bitsandbytes LLM.int8 vs
NF4 (with and without double quantization) in the PyTorch runtime, and ORT fp32 vs
ort_dynamic vs ort_static in ONNX Runtime, through run.py as a user runs it. Speed-up
is against the same runtime's fp32 (ORT fp32 for the ORT methods).

    .venv/bin/python benchmarks/ptq_engines.py [--models cnn,minilm] [--extra "bench.min_seconds=2"]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from families import HEADER, format_row, run_sweep

SWEEPS = {  # name -> (overrides, row label for the swept method or None)
    "torch": (["method=fp32,bnb_int8,bnb_nf4"], None),
    "nf4_no_dq": (["method=bnb_nf4", "method.double_quant=false"], "bnb_nf4 no-dq"),
    "ort": (["method=fp32,ort_dynamic,ort_static", "exporter=onnx"], None),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn,minilm")
    parser.add_argument("--extra", default="", help="extra Hydra overrides, quoted")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="quantexp-ptq-engines-"))
    lines = [HEADER]
    for model in args.models.split(","):
        for name, (overrides, label) in SWEEPS.items():
            results, wall = run_sweep(out / model / name,
                                      [f"model={model}", *overrides, *shlex.split(args.extra)])
            for r in results:
                is_ort_fp32 = name == "ort" and r["method"]["name"] == "fp32"
                lines.append(format_row(r, label or ("ORT fp32" if is_ort_fp32 else None)))
            lines.append(f"{model} {name}: sweep wall time {wall:.1f} s")
            print(lines[-1], flush=True)
    print("\n".join(lines))
    print(f"results under {out}")


if __name__ == "__main__":
    main()
