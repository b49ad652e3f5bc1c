"""The post-training engines side by side, per model: fp32 vs bitsandbytes LLM.int8 vs
NF4 (with and without double quantization) in the PyTorch runtime (recipe
``+experiment=bnb_engines``), and ORT fp32 vs ort_dynamic vs ort_static in ONNX Runtime
(``+experiment=ort_engines``), run as a user runs them. Speed-up is against the same
runtime's fp32 (ORT fp32 for the ORT methods).

    .venv/bin/python benchmarks/ptq_engines.py [--models cnn,minilm] [--extra "bench.min_seconds=2"]
"""

from __future__ import annotations

import argparse
import shlex
import tempfile
from pathlib import Path

from quantexp.report.sweeps import HEADER, format_row, run_sweep, sweep_param

SWEEPS = {  # name -> (overrides, row label for the swept method or None); "{models}" is --models
    "torch": (["+experiment=bnb_engines", "models"], None),
    "nf4_no_dq": (["model={models}", "method=bnb_nf4", "method.double_quant=false"], "bnb_nf4 no-dq"),
    "ort": (["+experiment=ort_engines", "models"], None),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn,minilm")
    parser.add_argument("--extra", default="", help="extra Hydra overrides, quoted")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="quantexp-ptq-engines-"))
    lines = [HEADER]
    for name, (overrides, label) in SWEEPS.items():
        overrides = [sweep_param("model", args.models) if o == "models" else o.format(models=args.models)
                     for o in overrides]
        results, wall = run_sweep(out / name, [*overrides, *shlex.split(args.extra)])
        for r in results:
            is_ort_fp32 = name == "ort" and r.label == "fp32"
            lines.append(format_row(r, label or ("ORT fp32" if is_ort_fp32 else None)))
        lines.append(f"{name}: sweep wall time {wall:.1f} s")
        print(lines[-1], flush=True)
    print("\n".join(lines))
    print(f"results under {out}")


if __name__ == "__main__":
    main()
