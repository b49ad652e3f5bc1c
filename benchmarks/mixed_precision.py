"""Mixed precision on real kernels: the budgeted mixed model vs uniform int8 vs fp32.

For each model (default: cnn, minilm) the script builds, in one process:
- fp32: the trained model;
- uniform int8: every assignable layer int8 (``build_mixed`` in FX graph mode where
  torch.fx traces the model, eager per-layer otherwise: the same runtime and build as
  the mixed model);
- mixed: ``method=mixed method.strategy=auto`` under ``--max-drop`` points, whose solver
  may only choose the (layer, dtype) kernels measured fast on this host
  (quantexp/quant/kernels.py, cached under <kernel cache>/kernels/) and is capped at
  the uniform int8 model's predicted latency.

It prints per model: test accuracy with its 95% Wilson interval and the paired
bootstrap delta vs fp32; interleaved speed-ups with 95% CIs (int8 vs fp32, mixed vs
fp32, and mixed vs int8 - the goal: never significantly slower than int8); the stored
size (serialized state dict); the assignment; and the wall time of the quantize step
split into kernel table, sensitivity analysis (goal for MiniLM: <= 120 s on the 2-core
AVX2 host, 1,643 s before) and build.

Speed figures mean something only on a quiet machine: the load average is printed
before and after, flagged when above half the cores.

    .venv/bin/python benchmarks/mixed_precision.py [--models cnn,minilm] [--max-drop 1.0]
        [--model-cache DIR] [--kernel-cache DIR] [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_note() -> str:
    load = os.getloadavg()[0]
    cores = len(os.sched_getaffinity(0))
    return f"load average {load:.2f} on {cores} cores" + (" - MEASURED UNDER LOAD" if load > 0.5 * cores else "")


def stored_bytes(model) -> int:
    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def predictions(model, split, batch_size: int = 64):
    import torch

    out = []
    with torch.no_grad():
        for inputs, _ in split.batches(batch_size):
            out.append(model(*inputs).argmax(-1))
    return torch.cat(out).numpy()


def one_model(name: str, args) -> dict:
    import torch

    from quantexp.analysis.accuracy import paired_bootstrap_delta, wilson_interval
    from quantexp.api import compose, validate
    from quantexp.bench.interleaved import measure_interleaved
    from quantexp.config import Granularity
    from quantexp.hardware.probe import probe_host
    from quantexp.methods.mixed.method import MixedPrecision
    from quantexp.models import load_model
    from quantexp.quant.calibration import draw_calibration
    from quantexp.quant.mixed_layers import assignable_layers, build_mixed, full_assignment
    from quantexp.quant.qconfig import build_qconfig

    overrides = [f"model={name}", "method=mixed", "method.strategy=auto",
                 f"method.budget.max_accuracy_drop={args.max_drop}",
                 *([f"hardware.threads={args.threads}"] if args.threads else [])]
    exp = validate(compose(overrides))
    host = probe_host(exp.hardware)
    bundle = load_model(exp.model, exp.seed, Path(args.model_cache))
    cal_cfg = exp.method.calibration
    calibration = draw_calibration(bundle.train, bundle.test, cal_cfg.size,
                                   exp.seed if cal_cfg.seed is None else cal_cfg.seed)
    method = MixedPrecision(exp.method, exp.precision, host)
    method.cache_dir, method.bench_batch_size = Path(args.kernel_cache), exp.bench.batch_size
    method.bench_timing = exp.bench.interleaved_timing()  # as the pipeline passes it (mixed vs int8 check)
    started = time.perf_counter()
    quantized = method.quantize(bundle, calibration)
    quantize_s = time.perf_counter() - started
    info = quantized.info

    qconfig = build_qconfig(cal_cfg.observer, Granularity.per_channel, False)
    layers = assignable_layers(bundle.model)
    int8 = build_mixed(bundle.model, full_assignment(layers, {}, "int8"), calibration, False,
                       cal_cfg.batch_size, qconfig, report={}, graph=True)
    models = {"fp32": bundle.model.eval(), "int8": int8.eval(), "mixed": quantized.model.eval()}

    labels = bundle.test.labels.numpy()
    correct = {k: predictions(m, bundle.test) == labels for k, m in models.items()}
    rows = {}
    for key, ok in correct.items():
        low, high = wilson_interval(float(ok.sum()), len(ok))
        delta = paired_bootstrap_delta(ok, correct["fp32"], n_boot=2000)
        rows[key] = {"accuracy": float(ok.mean()), "ci": [low, high], "size_bytes": stored_bytes(models[key]),
                     "delta_pts": 100 * delta.delta, "delta_ci_pts": [100 * delta.low, 100 * delta.high]}

    example = bundle.example_inputs(exp.bench.batch_size)
    timing = {"warmup": exp.bench.warmup, "min_rounds": exp.bench.min_rounds, "min_iters": exp.bench.min_iters,
              "min_seconds": exp.bench.min_seconds, "max_seconds": 30.0}
    speed = {}
    with torch.no_grad():
        for ref, cand in (("fp32", "int8"), ("fp32", "mixed"), ("int8", "mixed")):
            _, _, s = measure_interleaved(lambda r=models[ref]: r(*example), lambda c=models[cand]: c(*example),
                                          batch_size=exp.bench.batch_size, **timing)
            speed[f"{cand}_vs_{ref}"] = {"describe": s.describe(), "ratio": s.ratio, "ci": [s.ci_low, s.ci_high],
                                         "verdict": s.verdict}
    wall = {"quantize_s": quantize_s, "sensitivity_s": info.get("sensitivity.wall_s"),
            "sensitivity_evaluation_s": info.get("sensitivity.evaluation_s"),
            "hessian_s": info.get("sensitivity.hessian_s"), "hessian_probes": info.get("sensitivity.hessian_probes"),
            "items": info.get("sensitivity.items")}
    return {"model": name, "rows": rows, "speed": speed, "wall": wall, "assignment": info.get("assignment"),
            "kernels_offered": info.get("kernels.offered"), "kernels_from_cache": info.get("kernels.from_cache"),
            "build_path": info.get("build_path"), "threads": host.threads, "batch_size": exp.bench.batch_size,
            "latency_cap": info.get("latency_cap"),
            "int8_check": {k.removeprefix("int8_check."): v for k, v in info.items() if k.startswith("int8_check.")}}


def show(r: dict) -> None:
    print(f"\n== {r['model']} (batch {r['batch_size']}, {r['threads']} threads, build {r['build_path']})")
    print(f"{'':6} {'acc %':>7} {'95% CI':>16} {'delta pts [95% CI]':>26} {'stored MB':>10}")
    for key, row in r["rows"].items():
        lo, hi = row["ci"]
        d, (dl, dh) = row["delta_pts"], row["delta_ci_pts"]
        print(f"{key:6} {100 * row['accuracy']:7.2f} [{100 * lo:6.2f}, {100 * hi:6.2f}] "
              f"{d:+7.2f} [{dl:+6.2f}, {dh:+6.2f}]   {row['size_bytes'] / 1e6:10.3f}")
    for key, s in r["speed"].items():
        print(f"speed-up {key.replace('_vs_', ' vs '):16} {s['describe']}")
    w = r["wall"]
    print(f"quantize (kernel table + sensitivity + solve + build): {w['quantize_s']:.1f} s; "
          f"sensitivity {w['sensitivity_s'] or float('nan'):.1f} s (one layer at a time "
          f"{w['sensitivity_evaluation_s'] or float('nan'):.1f} s on {w['items']} items, Hessian "
          f"{w['hessian_s'] or float('nan'):.1f} s, {w['hessian_probes']} probes)")
    print(f"kernels offered: {r['kernels_offered']} ({r['kernels_from_cache']} timings from cache)")
    print(f"assignment: {r['assignment']}")
    check = r["int8_check"]
    if check:
        print(f"method's own check vs uniform int8: {check['speedup_vs_uniform_int8']}; moved to int8: "
              f"{check['moved_to_int8'] or 'none'}" + (f"; {check['status']}" if "status" in check else ""))
    else:
        print(f"method's own check vs uniform int8: not run (latency cap {r['latency_cap']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn,minilm")
    parser.add_argument("--max-drop", type=float, default=1.0)
    parser.add_argument("--model-cache", default=str(ROOT / ".cache" / "quantexp"))
    parser.add_argument("--kernel-cache", default=str(ROOT / ".cache" / "quantexp"))
    parser.add_argument("--threads", type=int, default=0, help="hardware.threads (0: the config's)")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    before = load_note()
    print(f"before: {before}")
    results = []
    for name in args.models.split(","):
        results.append(one_model(name, args))
        show(results[-1])
    after = load_note()
    print(f"\nafter: {after}")
    if "UNDER LOAD" in before + after:
        print("speed figures measured under load: re-measure on a quiet machine")
    if args.json:
        Path(args.json).write_text(json.dumps({"before": before, "after": after, "results": results}, indent=1))


if __name__ == "__main__":
    main()
