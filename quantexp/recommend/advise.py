"""The recommendation itself: analyse the target model (census, features, the
compatibility matrix for the target exporter and hardware), read the measured history
from MLflow, predict every runnable recipe, rank them; print, write, and with
``verify`` run the top ones for real (the Python API) and report the measured best.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantexp.architecture.matrix import NOT_MEASURABLE, RUNNABLE
from quantexp.files import atomic_write_json
from quantexp.recommend.history import model_key_of, read_history, records
from quantexp.recommend.predict import feature_scales, predict
from quantexp.recommend.rank import Constraints, Option, evaluate, rank

if TYPE_CHECKING:
    from quantexp.recommend.command import Settings


@dataclass
class Advice:
    model: str
    family: str
    features: dict[str, float]
    constraints: Constraints
    target: str  # exporter/hardware
    ranked: list[Option]
    history_runs: int
    history_models: int
    fp32_latency_ms: float | None
    fp32_size_mb: float | None
    verified: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k != "ranked"},
                "ranked": [{"option": o.label, "meets": o.meets, "needs": o.needs, "why": o.why,
                            "predicted": {"drop_pts": asdict(o.prediction.drop), "speedup": asdict(o.prediction.speedup),
                                          "size_ratio": asdict(o.prediction.size_ratio), "p50_ms": o.latency_ms,
                                          "size_mb": o.size_mb, "quantize_s": o.prediction.quantize_s},
                            "history": {"support": o.prediction.support, "measured": o.prediction.measured,
                                        "neighbours": o.prediction.neighbours, "drivers": o.prediction.drivers}}
                           for o in self.ranked]}

    def write(self, path: Path) -> Path:
        return atomic_write_json(path, self.to_dict())


def advise(settings: "Settings", history_records=None, exclude_model: str | None = None) -> Advice:
    """``history_records``: use these instead of reading MLflow (the leave-one-out
    benchmark); ``exclude_model``: leave this model's runs out of the history."""
    from omegaconf import OmegaConf

    from quantexp.api import PROJECT_ROOT, compose_checked, validate
    from quantexp.architecture.run import analyze_config
    from quantexp.preflight import cache_dir_of

    overrides = [*settings.overrides, "method=fp32", "precision=fp32", f"exporter={settings.exporter}",
                 f"hardware={settings.hardware}"]
    cfg = compose_checked(overrides)
    exp = validate(cfg)
    cache_dir = cache_dir_of(exp, PROJECT_ROOT)
    model_overrides = [o for o in settings.overrides if o.split("=")[0].lstrip("+").startswith(("model", "seed"))]
    analysis = analyze_config(exp, model_overrides, cache_dir)
    target_key = model_key_of(OmegaConf.to_container(cfg, resolve=True))
    if history_records is None:
        history_records = records(read_history(_client(exp), settings.experiment, settings.history_filter), cache_dir)
    history = [r for r in history_records if r.model != exclude_model]
    features, family = analysis.features(), analysis.census.family
    scales = feature_scales(history) if history else None
    recipes = sorted({(c.method, c.precision, c.exporter, c.hardware) for c in analysis.matrix
                      if c.status in (RUNNABLE, NOT_MEASURABLE) and c.method != "fp32"
                      and (c.exporter, c.hardware) == (settings.exporter, settings.hardware)})
    own = [r for r in history if r.model_key == target_key and r.exporter == settings.exporter
           and r.hardware == settings.hardware and r.fp32_p50_ms]
    fp32_latency = statistics.median(r.fp32_p50_ms for r in own) if own else None
    # the model's measured fp32 file where it ran before (what the history's sizes are),
    # else its fp32 weights (a small model's file is larger by a fixed part)
    sizes = [r.fp32_size_mb for r in own if r.fp32_size_mb]
    fp32_size = statistics.median(sizes) if sizes else analysis.census.params_total * 4 / 1e6
    options = [evaluate(predict(features, family, recipe, history, target_key, scales, fp32_size), family,
                        settings.constraints, fp32_latency, fp32_size) for recipe in recipes]
    return Advice(analysis.name, family, features, settings.constraints, f"{settings.exporter}/{settings.hardware}",
                  rank(options), len(history), len({r.model_key for r in history}), fp32_latency, fp32_size)


def _client(exp):
    from quantexp.api import PROJECT_ROOT
    from quantexp.tracking.store import open_client

    client, _ = open_client(exp.tracking.uri, PROJECT_ROOT, exp.tracking.experiment)
    return client


def print_advice(advice: Advice, console) -> None:
    from rich.table import Table

    console.print(f"[bold]{advice.model}[/] ({advice.family}) on {advice.target}, {advice.constraints.describe()}; "
                  f"history: {advice.history_runs} measured runs of {advice.history_models} models")
    table = Table(title="options, the cheapest that meets the constraints first")
    for column in ("#", "option", "meets", "needs", "drop pts", "speed-up", "size MB", "backed by", "why"):
        table.add_column(column)
    for i, o in enumerate(advice.ranked, 1):
        p = o.prediction
        backing = ("measured on this model" if p.measured else
                   f"{p.support} similar runs: {', '.join(p.neighbours)}" if p.support else "rules only")
        table.add_row(str(i), o.label, "yes" if o.meets else "no", o.needs, p.drop.describe(),
                      p.speedup.describe(unit="x"), "-" if o.size_mb is None else f"{o.size_mb:.2f}", backing,
                      "; ".join(o.why + (["near in " + ", ".join(p.drivers)] if p.drivers else [])))
    console.print(table)


def verify(advice: Advice, settings: "Settings", out: Path, console) -> None:
    """Run the top ``settings.top_k`` options that meet the constraints, report them, and
    name the measured best (the cheapest that meets the constraints as measured)."""
    from quantexp.api import run
    from quantexp.recommend.history import record_of
    from quantexp.report.build import write_report

    chosen = [o for o in advice.ranked if o.meets][: settings.top_k]
    results = []
    for o in chosen:
        p = o.prediction
        console.print(f"verify: running {o.label}")
        results.append(run(None, None, *settings.overrides, f"method={p.method}", f"precision={p.precision}",
                                    f"exporter={p.exporter}", f"hardware={p.hardware}"))
    _, files = write_report(results, out / "verify", f"recommend {advice.model}: verified options", console=console)
    measured = []
    for o, r in zip(chosen, results):
        rec = record_of(r)
        measured.append((evaluate(_as_prediction(o, rec), advice.family, advice.constraints,
                                  rec.fp32_p50_ms, rec.fp32_size_mb), r))
    best = rank([m for m, _ in measured])
    winner = next((m for m in best if m.meets), None)
    advice.verified = {"report": str(files["report.html"]), "runs": [r.mlflow_run_id for _, r in measured],
                       "best": winner.label if winner else None,
                       "measured": {m.label: {"meets": m.meets, "why": m.why} for m, _ in measured}}
    console.print(f"verified best: {winner.label if winner else 'none of the top options meets the constraints'} "
                  f"(report: {files['report.html']})")
    advice.write(out / "recommendation.json")


def _as_prediction(option: Option, record):
    """The measured figures of a verified run in the shape of a prediction."""
    from dataclasses import replace

    from quantexp.recommend.predict import Estimate

    p = option.prediction
    return replace(p, drop=Estimate(record.drop if record.drop is not None else p.drop.value, 0.0),
                   speedup=Estimate(record.speedup if record.speedup is not None else p.speedup.value, 0.0),
                   size_ratio=Estimate(record.size_ratio if record.size_ratio is not None else p.size_ratio.value, 0.0),
                   measured=True)


__all__ = ["Advice", "advise", "print_advice", "verify"]
