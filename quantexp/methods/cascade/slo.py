"""``+scenario=slo``: batch size and precision under a p99 latency SLO, on the loaded
cascade's three ways to answer (``low`` alone, the ``cascade``, ``high`` alone).

Service times are profiled with real calls first; an SLO that even the fastest single
call misses ends the run (``ConfigError``, exit 2) naming the closest configuration.
Then every static configuration (batch size x precision) and the controller serve
the same Poisson arrivals at each rate (``quantexp.serving``): rate by rate, each run
right after the others and in an order that rotates, so that a slow stretch of the
host falls on a different run each time; ``method.slo.repeats`` times over, judged by
the median p99 (``RepeatedPhase``). The controller keeps its state from one of its
phases to the next, as a server would. Step metrics: the controller per interval
(``slo.controller.*``, logged when each phase ends: a write to the tracking store from
the serving loop is a stall of its own), each run per rate (``slo.static.<b>_<precision>.*`` and
``slo.controller.phase.*``, step = rate index).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantexp.config import ConfigError
from quantexp.progress import track
from quantexp.serving.loadgen import phases
from quantexp.serving.server import PhaseResult, ServeConfig, StaticPolicy, serve
from quantexp.serving.slo import RepeatedPhase, ServiceTimes, SloController, verdict


def _value(v: Any) -> str:
    return getattr(v, "value", v)


class Runtime:
    """The three ways the loaded cascade answers a batch of test items; keeps what it
    answered so that the accuracy of what was served can be reported."""

    def __init__(self, module, test):
        self.models = {"low": module.low, "cascade": module, "high": module.high}
        self.inputs = test.inputs
        self.labels = test.labels.numpy()
        self.n = len(test)
        self.correct = 0
        self.answered = 0

    @torch.inference_mode()
    def __call__(self, request_ids: np.ndarray, precision: str) -> None:
        items = torch.as_tensor(request_ids % self.n)
        logits = self.models[precision](*(x[items] for x in self.inputs))
        self.correct += int((logits.argmax(dim=1).numpy() == self.labels[items.numpy()]).sum())
        self.answered += len(items)

    def served_accuracy(self) -> float | None:
        acc = self.correct / self.answered if self.answered else None
        self.correct = self.answered = 0
        return acc


def profile(runtime: Runtime, configs: list[ServeConfig], calls: int) -> dict[ServeConfig, float]:
    """Median seconds per batch of each configuration, from ``calls`` real calls (after
    one untimed), on items that change from call to call. The median, not a tail: one
    call slowed by a neighbour's job must not rule a configuration out (the controller's
    queueing term and the served batches' updates carry the variability)."""
    out = {}
    for c in configs:
        times = []
        for i in range(calls + 1):
            ids = np.arange(i * c.batch_size, (i + 1) * c.batch_size)
            t0 = time.perf_counter()
            runtime(ids, c.precision)
            times.append(time.perf_counter() - t0)
        out[c] = float(np.median(times[1:]))
    runtime.served_accuracy()
    return out


def run_slo(module, bundle, cfg, exp, log) -> dict[str, Any]:
    runtime = Runtime(module, bundle.test)
    precisions = [_value(p) for p in cfg.precisions]
    configs = [ServeConfig(b, p) for p in precisions for b in sorted(set(cfg.batch_sizes))]
    slo_s, max_wait_s = cfg.p99_ms / 1e3, cfg.max_wait_ms / 1e3
    profiled = profile(runtime, configs, cfg.profile_calls)
    fastest = min(profiled, key=profiled.get)
    if profiled[fastest] > slo_s:
        raise ConfigError(f"no configuration meets method.slo.p99_ms={cfg.p99_ms:g}: every call takes longer; "
                          f"closest: {fastest.label} at {1e3 * profiled[fastest]:.1f} ms per call (median of "
                          f"{cfg.profile_calls})")
    load = phases(list(cfg.rates), cfg.phase_s, cfg.max_requests, exp.seed)
    drain_s = max(2.0 * slo_s, 0.5 * cfg.phase_s)
    controller = SloController(configs, ServiceTimes(profiled), slo_s, max_wait_s, precisions,
                               max_utilisation=cfg.max_utilisation)
    policies: dict[str, Any] = {c.label: StaticPolicy(c) for c in configs} if cfg.statics else {}
    policies["controller"] = controller
    labels = list(policies)
    step = 0

    def log_intervals(intervals) -> None:
        # After the phase, not from the serving loop: one MLflow write of 8 metrics to the
        # sqlite store took 12 ms (median of 40, up to 33 ms) here, a stall in every 0.5 s
        # interval that the static runs (which log nothing while they serve) never had -
        # the controller's p99 at 1,000 items/s under a 3 ms SLO was 14-20 ms with
        # tracking on and 6.9 ms with it off.
        nonlocal step
        for stats in intervals:
            if log is not None:
                log.log_metrics({**{f"slo.controller.{k}": v for k, v in stats.metrics().items()},
                                 "slo.controller.precision_rank": precisions.index(stats.config.precision)},
                                step=step)
            step += 1

    served: dict[tuple[str, int], list[tuple[PhaseResult, float | None]]] = {}
    order = []  # rate by rate, the runs in an order that rotates (a slow stretch falls on another run each time)
    for repeat in range(cfg.repeats):
        for i, phase in enumerate(load):
            turn = (repeat * len(load) + i) % len(labels)
            order += [(i, phase, label) for label in labels[turn:] + labels[:turn]]
    # the bar advances (and may redraw) between servings, never inside one
    for i, phase, label in track(order, f"servings ({len(load)} rates x {len(labels)} runs x {cfg.repeats})"):
        result = serve(phase.arrivals_s, runtime, policies[label], max_wait_s=max_wait_s,
                       interval_s=cfg.interval_s, drain_s=drain_s, rate=phase.rate)
        if label == "controller":
            log_intervals(result.intervals)
        served.setdefault((label, i), []).append((result, runtime.served_accuracy()))

    runs: dict[str, list[RepeatedPhase]] = {}
    rows: list[dict[str, Any]] = []
    for label in labels:
        runs[label] = []
        for i in range(len(load)):
            results = served[(label, i)]
            phase_runs = RepeatedPhase(tuple(r for r, _ in results))
            runs[label].append(phase_runs)
            accuracies = [a for _, a in results if a is not None]
            row = {"run": label, **phase_runs.summary(), "met": phase_runs.meets(cfg.p99_ms),
                   "served_accuracy": float(np.mean(accuracies)) if accuracies else None,
                   **{f"served_{p}": phase_runs.served_by.get(p, 0) for p in precisions}}
            rows.append(row)
            if log is not None:
                kind = "controller.phase" if label == "controller" else f"static.{label}"
                log.log_metrics({f"slo.{kind}.{k}": v for k, v in row.items()
                                 if k != "run" and isinstance(v, (int, float, bool))}, step=i)

    v = verdict(runs, cfg.p99_ms)
    if v.best_static is None and not any(rate is not None for rate in v.best_rate.values()):
        print(f"warning: {v.describe()}", file=sys.stderr)
    summary: dict[str, Any] = {
        "slo.p99_ms": cfg.p99_ms, "slo.rates": ",".join(f"{r:g}" for r in cfg.rates),
        "slo.best_static": v.best_static, "slo.controller_matches_best_static": v.controller_matches,
        "slo.controller_rate": v.best_rate.get("controller"), "slo.closest": v.closest,
        "slo.verdict": v.describe(), "slo.controller_intervals": step,
        **{f"slo.profile_ms.{c.label}": 1e3 * s for c, s in profiled.items()},
    }
    if v.best_static is not None:
        summary["slo.best_static_rate"] = v.best_rate[v.best_static]
        summary["slo.best_static_throughput"] = v.best_throughput[v.best_static]
        summary["slo.controller_throughput"] = v.best_throughput.get("controller")
    # the summary's numbers reach MLflow as method.* metrics (the pipeline logs them)
    return {**summary, "tables": {"slo_runs": rows}, "figures": {"slo": str(_plot(rows, cfg))}}


def _plot(rows: list[dict[str, Any]], cfg) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label in dict.fromkeys(r["run"] for r in rows):
        mine = [r for r in rows if r["run"] == label]
        ax.plot([r["rate"] for r in mine], [r["p99_ms"] for r in mine], "-" if label == "controller" else ":",
                marker="o", lw=2.5 if label == "controller" else 1, label=label)
    ax.axhline(cfg.p99_ms, color="red", lw=0.8, label="SLO (p99)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("offered load (items/s, Poisson)")
    ax.set_ylabel("p99 latency ms")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(tempfile.mkdtemp(prefix="quantexp-slo-")) / "slo.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["Runtime", "profile", "run_slo"]
