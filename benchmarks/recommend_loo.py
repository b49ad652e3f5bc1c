"""How good is `quantexp recommend`? Leave-one-model-out over a measured history.

Builds (``--build``) a history of real runs - the three zoo families plus size variants
(cnn, a narrow and a wide cnn, lstm, a wider lstm, minilm) x the methods that need no
exporter (fp32, ptq_static, ptq_dynamic, bnb_int8, bnb_nf4) - as one Hydra sweep per
model into its own MLflow store. Then, for every model and several constraint settings,
it hides that model's quantized runs (its fp32 run stays: a user has measured the model
they want to quantize, which gives the latency and size the constraints are checked
against), asks the recommender, and compares its first choice with the measured best
under the same constraints (the same ranking applied to the model's own measurements).

A case counts as right when the recommendation is the measured best, or the measured
figures of the recommended method lie within the best's confidence intervals (accuracy
drop and speed-up), or when both say that nothing meets the constraints. Prints the table
of cases, the hit rate (goal >= 80 %), and the error of the predicted accuracy drop and
speed-up against the measured ones.

    .venv/bin/python benchmarks/recommend_loo.py --build            # ~30 runs, then the LOO
    .venv/bin/python benchmarks/recommend_loo.py                    # the LOO on the built history
    .venv/bin/python benchmarks/recommend_loo.py --store /abs/mlflow.db --experiment NAME
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from quantexp.recommend.command import Settings  # noqa: E402
from quantexp.recommend.predict import Estimate  # noqa: E402
from quantexp.recommend.rank import Constraints, evaluate, rank  # noqa: E402

METHODS = "fp32,ptq_static,ptq_dynamic,bnb_int8,bnb_nf4"
MODELS = {  # label: the overrides that select the model
    "cnn": ["model=cnn"],
    "cnn_narrow": ["model=cnn", "model.channels=[8,16]", "model.hidden=32"],
    "cnn_wide": ["model=cnn", "model.channels=[32,64]", "model.hidden=128"],
    "lstm": ["model=lstm"],
    "lstm_wide": ["model=lstm", "model.hidden=128"],
    "minilm": ["model=minilm", "model.n_test=1000"],
}
# constraint settings, the size and latency limits as fractions of the model's fp32
SETTINGS = {
    "drop<=1": dict(drop=1.0),
    "drop<=0.3": dict(drop=0.3),
    "drop<=2, size<=0.3x": dict(drop=2.0, size=0.3),
    "drop<=1, p50<=0.8x": dict(drop=1.0, latency=0.8),
    "drop<=5, size<=0.2x": dict(drop=5.0, size=0.2),
}


def build(store: Path, experiment: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for label, overrides in MODELS.items():
        print(f"building history: {label} x {METHODS}", flush=True)
        subprocess.run([sys.executable, str(ROOT / "run.py"), "-m", *overrides, f"method={METHODS}",
                        f"tracking.uri=sqlite:///{store}", f"tracking.experiment={experiment}",
                        f"hydra.sweep.dir={store.parent / 'sweeps' / label}"], cwd=ROOT, env=env, check=False)


def constraints_for(spec: dict, fp32_ms: float | None, fp32_mb: float | None) -> Constraints:
    return Constraints(max_accuracy_drop=spec.get("drop"),
                       max_latency_ms=spec["latency"] * fp32_ms if "latency" in spec and fp32_ms else None,
                       max_size_mb=spec["size"] * fp32_mb if "size" in spec and fp32_mb else None)


def measured_options(own, family, constraints, fp32_ms, fp32_mb, predicted_by_recipe):
    """The model's own measurements, ranked by the recommender's own rule."""
    out = {}
    for r in own:
        p = predicted_by_recipe.get(r.recipe)
        if p is None or r.drop is None or r.speedup is None:
            continue
        mp = replace(p, drop=Estimate(r.drop, 0.0), speedup=Estimate(r.speedup, 0.0),
                     size_ratio=Estimate(r.size_ratio or 1.0, 0.0), measured=True)
        out[r.recipe] = (evaluate(mp, family, constraints, fp32_ms, fp32_mb), r)
    return out


def within(record, best) -> bool:
    """The recommended method's measured figures inside the best's confidence intervals."""
    def inside(value, ci):
        return value is not None and ci is not None and ci[0] <= value <= ci[1]
    return inside(record.drop, best.drop_ci) and (best.speedup_ci is None or inside(record.speedup, best.speedup_ci))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=ROOT / ".cache" / "recommend_loo" / "mlflow.db")
    parser.add_argument("--experiment", default="recommend_history")
    parser.add_argument("--build", action="store_true", help="run the history first")
    args = parser.parse_args()
    store = args.store.resolve()
    store.parent.mkdir(parents=True, exist_ok=True)
    if args.build:
        build(store, args.experiment)

    from omegaconf import OmegaConf

    from quantexp.api import PROJECT_ROOT, compose, validate
    from quantexp.preflight import cache_dir_of
    from quantexp.recommend.advise import advise
    from quantexp.recommend.history import model_key_of, read_history, records
    from quantexp.tracking.store import open_client

    exp = validate(compose([f"tracking.uri=sqlite:///{store}", f"tracking.experiment={args.experiment}"]))
    client, _ = open_client(exp.tracking.uri, PROJECT_ROOT, args.experiment)
    history = records(read_history(client, args.experiment), cache_dir_of(exp, PROJECT_ROOT))
    print(f"history: {len(history)} runs of {len({r.model_key for r in history})} models\n")

    hits, cases, drop_err, speed_err = 0, 0, [], []
    header = f"{'model':11} {'constraints':20} {'recommended':22} {'measured best':22} {'verdict':9} pred drop / meas  pred x / meas"
    print(header)
    for label, overrides in MODELS.items():
        key = model_key_of(OmegaConf.to_container(compose(overrides), resolve=True))
        own = [r for r in history if r.model_key == key and r.exporter == "none" and r.hardware == "cpu"]
        fp32 = next((r for r in own if r.method == "fp32"), None)
        if fp32 is None:
            print(f"{label:11} no fp32 run in the history: skipped")
            continue
        others = [r for r in history if r.model_key != key or r.method == "fp32"]
        fp32_ms, fp32_mb = fp32.p50_ms, fp32.fp32_size_mb
        for name, spec in SETTINGS.items():
            constraints = constraints_for(spec, fp32_ms, fp32_mb)
            advice = advise(Settings(constraints=constraints, overrides=list(overrides)), history_records=others)
            predicted = {o.prediction.recipe: o.prediction for o in advice.ranked}
            measured = measured_options([r for r in own if r.method != "fp32"], advice.family, constraints,
                                        fp32_ms, fp32_mb, predicted)
            ranked = rank([o for o, _ in measured.values()])
            best = ranked[0] if ranked and ranked[0].meets else None
            top = advice.ranked[0] if advice.ranked and advice.ranked[0].meets else None
            if top is None and best is None:
                ok, verdict = True, "both none"
            elif top is None or best is None:
                ok, verdict = False, "miss"
            elif top.prediction.recipe == best.prediction.recipe:
                ok, verdict = True, "same"
            else:
                rec = measured.get(top.prediction.recipe)
                ok = rec is not None and rec[0].meets and within(rec[1], measured[best.prediction.recipe][1])
                verdict = "within CI" if ok else "miss"
            hits += ok
            cases += 1
            pair = measured.get(top.prediction.recipe) if top else None
            figures = ""
            if pair:
                p, r = top.prediction, pair[1]
                figures = f"{p.drop.value:+6.2f} / {r.drop:+6.2f}   {p.speedup.value:5.2f} / {r.speedup:5.2f}"
            print(f"{label:11} {name:20} {top.prediction.method if top else 'none':22} "
                  f"{best.prediction.method if best else 'none':22} {verdict:9} {figures}", flush=True)
        if name == list(SETTINGS)[-1]:
            for recipe, (_, r) in measured.items():
                p = predicted[recipe]
                drop_err.append(abs(p.drop.value - r.drop))
                speed_err.append(abs(p.speedup.value - r.speedup) / r.speedup)
    print(f"\nleave-one-out: {hits}/{cases} cases right ({100 * hits / max(cases, 1):.0f} %; goal >= 80 %)")
    if drop_err:
        print(f"predicted vs measured accuracy drop: median abs error {statistics.median(drop_err):.2f} pts, "
              f"max {max(drop_err):.2f} pts over {len(drop_err)} (model, method) pairs")
        print(f"predicted vs measured speed-up: median relative error {100 * statistics.median(speed_err):.0f} %, "
              f"max {100 * max(speed_err):.0f} %")


if __name__ == "__main__":
    main()
