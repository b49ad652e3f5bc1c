"""``quantexp history``: one configuration over time - every finished MLflow run of the
same configuration key (model, method, precision, exporter, hardware and the bench
settings), oldest first, with its accuracy (Wilson 95% CI), p50 latency and speed-up
vs its own fp32, the date and git commit; a chart of both (PNG), a CSV; and whether the
latest run differs from the one before it (``quantexp compare``'s tests) and from the
range of all earlier runs.

    quantexp history model.name=cnn method.name=ptq_static
    quantexp history --experiment quantexp --filter "tags.\\`quantexp.git_commit\\` != ''" --out reports/history

``KEY=VALUE`` arguments select runs by their logged params (``params.`KEY` = 'VALUE'``).
Several configuration keys matching is fine: each is its own section and line.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantexp.analysis.accuracy import wilson_interval
from quantexp.files import atomic_path, atomic_write_csv
from quantexp.results import Results

KEY_GROUPS = ("model", "method", "precision", "exporter", "hardware")
EXIT_BAD_INPUT = 2


@dataclass
class Point:
    run_id: str
    started: datetime.datetime
    commit: str
    results: Results

    @property
    def accuracy_pct(self) -> float | None:
        acc = self.results.candidate.accuracy
        return None if acc is None else 100 * acc

    def row(self) -> dict[str, Any]:
        r, c = self.results, self.results.comparison
        lat = r.candidate.latency
        low, high = (None, None)
        if r.candidate.accuracy is not None and c.n_items:
            low, high = (100 * v for v in wilson_interval(r.candidate.accuracy * c.n_items, int(c.n_items)))
        return {"started": self.started.isoformat(timespec="seconds"), "commit": self.commit[:10],
                "run_id": self.run_id, "accuracy_pct": self.accuracy_pct, "accuracy_ci_low_pct": low,
                "accuracy_ci_high_pct": high, "p50_ms": lat.p50_ms if lat else None,
                "speedup": c.speedup_p50, "speedup_ci_low": c.speedup_ci_low, "speedup_ci_high": c.speedup_ci_high}


def config_key(results: Results) -> str:
    """'cnn ptq_static@int8 none/cpu bench{...}': what must match for two runs to be one series."""
    config = results.config or {}
    names = [str((config.get(group) or {}).get("name", "?")) for group in KEY_GROUPS]
    bench = json.dumps(config.get("bench", {}), sort_keys=True)
    return f"{names[0]} {names[1]}@{names[2]} {names[3]}/{names[4]} bench{bench}"


def read_points(client, experiment: str, filter_string: str) -> dict[str, list[Point]]:
    """{config key: points oldest first} of every FINISHED run with a results.json."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ValueError(f"no MLflow experiment named {experiment!r} in this store")
    try:
        runs = client.search_runs([found.experiment_id], filter_string=filter_string, max_results=5000,
                                  order_by=["attributes.start_time ASC"])
    except MlflowException as exc:
        raise ValueError(f"MLflow cannot search with {filter_string!r}: "
                         f"{(str(exc).strip().splitlines() or ['?'])[0]}") from exc
    series: dict[str, list[Point]] = {}
    with tempfile.TemporaryDirectory(prefix="quantexp-history-") as tmp:
        for run in runs:
            if run.info.status != "FINISHED":
                continue
            if "results.json" not in {a.path for a in client.list_artifacts(run.info.run_id)}:
                continue  # a sweep's parent run
            results = Results.from_json(client.download_artifacts(run.info.run_id, "results.json",
                                                                  f"{tmp}/{run.info.run_id}"))
            started = datetime.datetime.fromtimestamp(run.info.start_time / 1000, datetime.timezone.utc)
            commit = (results.provenance or {}).get("quantexp.git_commit", "") or "-"
            series.setdefault(config_key(results), []).append(Point(run.info.run_id, started, commit, results))
    return series


def latest_vs_previous(client, points: list[Point], config) -> list[str]:
    """Lines saying whether the latest run differs from the one before (the compare tests)
    and whether its p50 lies outside the range of every earlier run."""
    from quantexp.regression.compare import compare
    from quantexp.regression.sources import from_mlflow

    if len(points) < 2:
        return ["only one run of this configuration: nothing to compare yet"]
    comparison = compare(from_mlflow(client, points[-2].run_id), from_mlflow(client, points[-1].run_id), config)
    lines = [f"latest vs previous: {v.status} - {v.detail}" for v in comparison.verdicts]
    earlier = [p.results.candidate.latency.p50_ms for p in points[:-1] if p.results.candidate.latency]
    latest = points[-1].results.candidate.latency
    if earlier and latest:
        inside = min(earlier) <= latest.p50_ms <= max(earlier)
        lines.append(f"latest p50 {latest.p50_ms:.3f} ms is {'within' if inside else 'OUTSIDE'} the range of the "
                     f"{len(earlier)} earlier runs [{min(earlier):.3f}, {max(earlier):.3f}] ms")
    return lines


def write_chart(series: dict[str, list[Point]], path: Path) -> Path:
    """Accuracy (with its CI) and p50 latency per run, one line per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_lat) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for key, points in series.items():
        rows = [p.row() for p in points]
        x = [p.started for p in points]
        acc = [r["accuracy_pct"] for r in rows]
        err = [[(a - r["accuracy_ci_low_pct"]) if a is not None and r["accuracy_ci_low_pct"] is not None else 0
                for a, r in zip(acc, rows)],
               [(r["accuracy_ci_high_pct"] - a) if a is not None and r["accuracy_ci_high_pct"] is not None else 0
                for a, r in zip(acc, rows)]]
        label = key.split(" bench")[0]
        ax_acc.errorbar(x, [a if a is not None else float("nan") for a in acc], yerr=err, marker="o",
                        capsize=3, label=label)
        ax_lat.plot(x, [r["p50_ms"] if r["p50_ms"] is not None else float("nan") for r in rows], marker="o",
                    label=label)
        for point, value in zip(points, acc):
            if value is not None:
                ax_acc.annotate(point.commit[:7], (point.started, value), fontsize=7, xytext=(0, 6),
                                textcoords="offset points", ha="center")
    ax_acc.set_ylabel("accuracy % (Wilson 95% CI)")
    ax_lat.set_ylabel("p50 latency (ms)")
    ax_lat.set_xlabel("run start (UTC); labels: git commit")
    ax_acc.legend(fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="quantexp history", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("select", nargs="*", metavar="KEY=VALUE", help="logged params to match, e.g. model.name=cnn")
    p.add_argument("--experiment", default="quantexp")
    p.add_argument("--filter", default="", help="an extra MLflow search_runs filter")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--out", type=Path, default=Path("reports") / "history")
    args = p.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    from quantexp.config import ConfigError
    from quantexp.regression.command import DEFAULT_CONFIG, client_factory, load_config
    from quantexp.regression.sources import SourceError

    try:
        clauses = [args.filter] if args.filter else []
        for item in args.select:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ValueError(f"{item!r} is not KEY=VALUE (e.g. model.name=cnn)")
            clauses.append(f"params.`{key}` = '{value}'")
        client = client_factory(args.tracking_uri)()
        series = read_points(client, args.experiment, " and ".join(clauses))
        if not series:
            raise ValueError("no finished run matches: check the KEY=VALUE pairs against a run's params")
        config = load_config(DEFAULT_CONFIG, [])
    except (ValueError, ConfigError, SourceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    console = Console(width=None if sys.stdout.isatty() else 200)
    all_rows = []
    for key, points in series.items():
        table = Table(title=f"{key} ({len(points)} runs)")
        for column in ("started (UTC)", "commit", "accuracy % [95% CI]", "p50 ms", "speed-up vs fp32", "run"):
            table.add_column(column)
        for point in points:
            row = point.row()
            all_rows.append({"config": key, **row})
            acc = ("-" if row["accuracy_pct"] is None else
                   f"{row['accuracy_pct']:.2f} [{row['accuracy_ci_low_pct']:.2f}, {row['accuracy_ci_high_pct']:.2f}]"
                   if row["accuracy_ci_low_pct"] is not None else f"{row['accuracy_pct']:.2f}")
            speed = "-" if row["speedup"] is None else (
                f"{row['speedup']:.2f}x" + ("" if row["speedup_ci_low"] is None
                                            else f" [{row['speedup_ci_low']:.2f}, {row['speedup_ci_high']:.2f}]"))
            table.add_row(row["started"], row["commit"], acc,
                          "-" if row["p50_ms"] is None else f"{row['p50_ms']:.3f}", speed, row["run_id"][:12])
        console.print(table)
        for line in latest_vs_previous(client, points, config):
            console.print(line)
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path = atomic_write_csv(args.out / "history.csv", all_rows)
    png = write_chart(series, args.out / "history.png")
    console.print(f"history: {csv_path}, {png}")
    return 0


__all__ = ["config_key", "latest_vs_previous", "main", "read_points", "write_chart"]
