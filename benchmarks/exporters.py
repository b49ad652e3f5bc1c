"""Every exporter x {fp32, int8} per model (recipe ``+experiment=exporters``, plus
TFLite's dynamic-range int8 and Core ML's int8 weight compression), run as a user runs
it: parity of the artifact with the in-memory model, accuracy and p50 latency of the
artifact in its own runtime, size on disk, bits/param and conversion time.

    .venv/bin/python benchmarks/exporters.py [--models cnn,minilm] [--exporters none,onnx,tflite,coreml]

Core ML cannot predict on Linux: its accuracy and latency print as "not measured" there.
"""

from __future__ import annotations

import argparse
import shlex
import tempfile
from pathlib import Path

from quantexp.report.sweeps import run_sweep, sweep_param
from quantexp.results import Results

EXTRA_RUNS = {  # exporter -> (overrides of one more sweep, row label)
    "tflite": (["exporter=tflite", "method=ptq_dynamic"], "ptq_dynamic"),
    "coreml": (["exporter=coreml", "method=fp32", "exporter.weight_compression=int8"], "fp32+int8 weights"),
}
HEADER = (f"{'model':7} {'exporter':8} {'method':17} {'runtime':12} {'acc %':>6} {'Δ pts':>6} "
          f"{'max|err|':>9} {'top-1 agr':>9} {'p50 ms':>8} {'size MB':>8} {'bits/p':>6} {'export s':>8}")


def _fmt(value, spec: str) -> str:
    return "not measured" if value is None else format(value, spec)


def format_row(r: Results, label: str | None = None) -> str:
    cand, comp, export = r.candidate, r.comparison, r.candidate.export
    acc = None if cand.accuracy is None else 100 * cand.accuracy
    delta = "ref" if r.label == "fp32" else _fmt(comp.accuracy_delta and 100 * comp.accuracy_delta, "+6.2f")
    parity = {k: _fmt(export[f"parity.{k}"], spec) if f"parity.{k}" in export else "-"
              for k, spec in (("max_abs_err", "9.2e"), ("top1_agreement", "9.3f"))}
    return (f"{r.model['name']:7} {r.config['exporter']['name'] if r.config else '?':8} {label or r.label:17} "
            f"{cand.runtime:12} {_fmt(acc, '6.2f'):>6} {delta:>6} {parity['max_abs_err']:>9} "
            f"{parity['top1_agreement']:>9} {_fmt(cand.latency and cand.latency.p50_ms, '8.3f'):>8} "
            f"{cand.size_bytes / 1e6:8.3f} {cand.bits_per_param:6.2f} {cand.export_time_s:8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn,minilm")
    parser.add_argument("--exporters", default="none,onnx,tflite,coreml")
    parser.add_argument("--extra", default="", help="extra Hydra overrides, quoted")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="quantexp-exporters-"))
    extra = shlex.split(args.extra)
    results, wall = run_sweep(out / "recipe", ["+experiment=exporters", sweep_param("model", args.models),
                                               sweep_param("exporter", args.exporters), *extra])
    rows = [format_row(r) for r in results]
    print(*rows, f"recipe: sweep wall time {wall:.1f} s", sep="\n", flush=True)
    for exporter, (overrides, label) in EXTRA_RUNS.items():
        if exporter in args.exporters.split(","):
            more, wall = run_sweep(out / exporter, [f"model={args.models}", *overrides, *extra])
            rows += [format_row(r, label) for r in more]
            print(*rows[-len(more):], f"{exporter} {label}: sweep wall time {wall:.1f} s", sep="\n", flush=True)
    print(HEADER, *sorted(rows), sep="\n")
    print(f"results under {out}")


if __name__ == "__main__":
    main()
