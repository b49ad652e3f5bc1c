"""How close does the Optuna search get to the true Pareto front, for how many evaluations?

On a model whose whole per-layer precision space can be enumerated (SmallCNN, 4
layers), every assignment is built for real (``build_mixed``: int8/fp16/bf16/int4
kernels) and evaluated once: accuracy drop vs fp32 on the test split (points) and
the stored size (MB, from the parameters' dtypes). That exhaustive grid gives the
true front and its hypervolume. Optuna samplers (NSGA-II, TPE) then search the same
space with ``--trials`` evaluations each (several seeds); since a configuration's
evaluation is deterministic, their trials read the grid's measured values (the
same numbers they would measure). Reported per sampler: hypervolume ratio
(Optuna front / exhaustive front, same reference point) and the gap in best
accuracy drop under a size budget. Goal: >= 95% of the hypervolume with <= 25%
of the evaluations.

    .venv/bin/python benchmarks/search_validation.py [--choices fp32,bf16,int8] [--trials 20] [--seeds 5]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--choices", default="fp32,bf16,int8,int4")
    parser.add_argument("--trials", type=int, default=0, help="evaluations per search (0: 25%% of the grid)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--calibration", type=int, default=64)
    parser.add_argument("--size-budget", type=float, default=0.3, help="fraction of the fp32 size")
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "quantexp-search-validation"))
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    import optuna
    import torch
    from omegaconf import OmegaConf

    from quantexp.analysis.pareto import best_under, hypervolume, pareto_front
    from quantexp.models import load_model
    from quantexp.models.cnn.config import CNNConfig
    from quantexp.quant.calibration import draw_calibration
    from quantexp.quant.mixed_layers import assignable_layers, build_mixed, model_size_bytes, supported_dtypes

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(CNNConfig), {
        "name": "cnn", "dataset": "mnist5k", "n_train": args.n_train, "epochs": args.epochs}))
    bundle = load_model(cfg, 0, Path(args.cache_dir))
    cal = draw_calibration(bundle.train, bundle.test, args.calibration, 0)
    layers = assignable_layers(bundle.model)
    wanted = args.choices.split(",")
    space = {n: [d for d in wanted if d in supported_dtypes(m)] for n, m in layers.items()}
    names = list(space)

    def accuracy(model) -> float:
        with torch.no_grad():
            return float((model(*bundle.test.inputs).argmax(1) == bundle.test.labels).float().mean())

    fp32_acc = accuracy(bundle.model)
    fp32_mb = model_size_bytes(bundle.model, {}) / 1e6
    grid: dict[tuple[str, ...], tuple[float, float]] = {}
    start = time.perf_counter()
    for combo in itertools.product(*(space[n] for n in names)):
        assignment = dict(zip(names, combo))
        model = build_mixed(bundle.model, assignment, cal, batch_size=64)
        grid[combo] = (100.0 * (fp32_acc - accuracy(model)), model_size_bytes(bundle.model, assignment) / 1e6)
    grid_s = time.perf_counter() - start
    n_grid = len(grid)
    trials = args.trials or max(1, n_grid // 4)
    directions = ["minimize", "minimize"]
    points = list(grid.values())
    ref = (max(p[0] for p in points) + 1.0, max(p[1] for p in points) * 1.01)
    hv_true = hypervolume(points, directions, ref)
    limit = args.size_budget * fp32_mb
    best_true = best_under(points, 0, directions, {1: limit})
    true_front = [points[i] for i in pareto_front(points, directions)]

    def search(sampler) -> tuple[float, float | None, int]:
        study = optuna.create_study(directions=directions, sampler=sampler)

        def objective(trial):
            combo = tuple(trial.suggest_categorical(n, space[n]) for n in names)
            return grid[combo]
        study.optimize(objective, n_trials=trials)
        pts = [tuple(t.values) for t in study.trials if t.values is not None]
        hv = hypervolume(pts, directions, ref) / hv_true if hv_true > 0 else 1.0
        best = best_under(pts, 0, directions, {1: limit})
        gap = None if best is None or best_true is None else pts[best][0] - points[best_true][0]
        return hv, gap, len({tuple(t.params.values()) for t in study.trials})

    rows = []
    for label, make in (("nsga2", lambda s: optuna.samplers.NSGAIISampler(seed=s, population_size=8)),
                        ("tpe", lambda s: optuna.samplers.TPESampler(seed=s, n_startup_trials=8,
                                                                     multivariate=True)),
                        ("random", lambda s: optuna.samplers.RandomSampler(seed=s))):
        results = [search(make(seed)) for seed in range(args.seeds)]
        hvs = [r[0] for r in results]
        gaps = [r[1] for r in results if r[1] is not None]
        rows.append({"sampler": label, "evaluations": trials, "fraction_of_grid": trials / n_grid,
                     "hv_ratio_mean": statistics.mean(hvs), "hv_ratio_min": min(hvs),
                     "seeds_reaching_95pct": sum(h >= 0.95 for h in hvs),
                     "best_drop_gap_mean": statistics.mean(gaps) if gaps else None,
                     "best_drop_gap_max": max(gaps) if gaps else None,
                     "distinct_configs_mean": statistics.mean(r[2] for r in results)})
    summary = {"model": f"SmallCNN n_train={args.n_train} epochs={args.epochs}", "fp32_accuracy": fp32_acc,
               "fp32_size_mb": fp32_mb, "space": space, "grid_size": n_grid, "grid_eval_s": grid_s,
               "true_front": true_front, "hv_reference": ref, "size_budget_mb": limit,
               "best_drop_under_budget": points[best_true][0] if best_true is not None else None,
               "seeds": args.seeds, "samplers": rows}
    print(f"fp32 accuracy {fp32_acc:.4f}, size {fp32_mb:.4f} MB; grid of {n_grid} assignments "
          f"evaluated in {grid_s:.0f} s; true front: {len(true_front)} points")
    print(f"size budget {limit:.4f} MB: best accuracy drop in the grid "
          f"{summary['best_drop_under_budget']}")
    print(f"{'sampler':8} {'evals':>5} {'% grid':>7} {'HV ratio mean':>13} {'min':>6} {'>=95%':>6} "
          f"{'gap mean':>8} {'gap max':>8}")
    for r in rows:
        def fmt(v):
            return "-" if v is None else f"{v:.2f}"
        print(f"{r['sampler']:8} {r['evaluations']:>5} {100 * r['fraction_of_grid']:>6.1f}% "
              f"{r['hv_ratio_mean']:>13.3f} {r['hv_ratio_min']:>6.3f} "
              f"{r['seeds_reaching_95pct']:>3}/{args.seeds} {fmt(r['best_drop_gap_mean']):>8} "
              f"{fmt(r['best_drop_gap_max']):>8}")
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
