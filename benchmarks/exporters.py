"""Every exporter x {fp32, int8} per model, through run.py as a user runs it: parity of
the artifact with the in-memory model, accuracy and p50 latency of the artifact in its
own runtime, size on disk, bits/param and conversion time, from results.json.

    .venv/bin/python benchmarks/exporters.py [--models cnn,minilm] [--exporters none,onnx,tflite,coreml]

int8 per exporter: none/onnx/coreml: ptq_static (TorchScript int8 / QDQ graph / Core ML
W8A8); tflite: dynamic-range (ptq_dynamic) and full-integer (ptq_static) int8; coreml
also fp32 with int8 weight compression. Core ML cannot predict on Linux: its accuracy
and latency print as "not measured" there.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from families import run_sweep

SWEEPS = {  # exporter -> list of (overrides, label)
    "none": [(["method=fp32,ptq_static"], None)],
    "onnx": [(["method=fp32,ptq_static", "exporter=onnx"], None)],
    "tflite": [(["method=fp32,ptq_dynamic,ptq_static", "exporter=tflite"], None)],
    "coreml": [(["method=fp32,ptq_static", "exporter=coreml"], None),
               (["method=fp32", "exporter=coreml", "exporter.weight_compression=int8"],
                "fp32+int8 weights")],
}
HEADER = (f"{'model':7} {'exporter':8} {'method':17} {'runtime':12} {'acc %':>6} {'Δ pts':>6} "
          f"{'max|err|':>9} {'top-1 agr':>9} {'p50 ms':>8} {'size MB':>8} {'bits/p':>6} {'export s':>8}")


def _fmt(value, spec: str) -> str:
    return "not measured" if value is None else format(value, spec)


def format_row(r: dict, exporter: str, label: str | None) -> str:
    name = r["method"]["name"]
    cand, comp = r["candidates"][name], r["comparison"]
    acc = None if cand["accuracy"] is None else 100 * cand["accuracy"]
    delta = 100 * comp["accuracy_delta"] if "accuracy_delta" in comp and name != "fp32" else None
    p50 = cand["latency"].get("p50_ms")
    return (f"{r['model']['name']:7} {exporter:8} {label or name:17} {cand['runtime']:12} "
            f"{_fmt(acc, '6.2f'):>6} {_fmt(delta, '+6.2f') if name != 'fp32' else 'ref':>6} "
            f"{_fmt(cand.get('export.parity.max_abs_err'), '9.2e') if 'export.parity.max_abs_err' in cand else '-':>9} "
            f"{_fmt(cand.get('export.parity.top1_agreement'), '9.3f') if 'export.parity.top1_agreement' in cand else '-':>9} "
            f"{_fmt(p50, '8.3f'):>8} {cand['size_bytes'] / 1e6:8.3f} {cand['bits_per_param']:6.2f} "
            f"{cand['export_time_s']:8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn,minilm")
    parser.add_argument("--exporters", default=",".join(SWEEPS))
    parser.add_argument("--extra", default="", help="extra Hydra overrides, quoted")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="quantexp-exporters-"))
    lines = [HEADER]
    for model in args.models.split(","):
        for exporter in args.exporters.split(","):
            for i, (overrides, label) in enumerate(SWEEPS[exporter]):
                results, wall = run_sweep(out / model / f"{exporter}{i}",
                                          [f"model={model}", *overrides, *shlex.split(args.extra)])
                lines += [format_row(r, exporter, label) for r in results]
                lines.append(f"{model} {exporter}: sweep wall time {wall:.1f} s")
                print(*lines[-len(results) - 1:], sep="\n", flush=True)
    print("\n".join(lines))
    print(f"results under {out}")


if __name__ == "__main__":
    main()
