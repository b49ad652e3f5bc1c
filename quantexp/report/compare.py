"""Many runs side by side: one ``Row`` per run (from its typed ``Results``), the Pareto
fronts over (accuracy drop, p50 latency) and (accuracy drop, size), and the table as
CSV and Markdown. ``quantexp.report.html`` draws the same rows.

Accuracy is in percent everywhere (the terminal's unit); the drop is the paired delta
against the fp32 model *in the same runtime* (each run carries its own fp32
reference), so rows from different exporters compare like with like. A figure a run
could not measure (Core ML prediction on Linux) stays None and prints as "not measured",
never as zero, and keeps the run off the fronts it cannot be placed on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from quantexp.analysis.accuracy import wilson_interval
from quantexp.analysis.pareto import pareto_front
from quantexp.bench.interleaved import describe_speedup
from quantexp.files import atomic_write_csv, atomic_write_text
from quantexp.results import Results

NOT_MEASURED = "not measured"


class ReportError(ValueError):
    """Runs that cannot be reported together (none at all, different test sets); one line."""


@dataclass
class Row:
    model: str
    method: str
    precision: str
    exporter: str
    hardware: str
    runtime: str
    accuracy_pct: float | None
    accuracy_ci_low_pct: float | None  # Wilson 95% interval of the accuracy itself
    accuracy_ci_high_pct: float | None
    fp32_accuracy_pct: float | None
    drop_pts: float | None  # fp32 minus candidate, points; > 0 is a loss
    drop_ci_low_pts: float | None  # paired bootstrap 95% CI of the drop
    drop_ci_high_pts: float | None
    agreement_pct: float | None
    p50_ms: float | None
    p90_ms: float | None
    items_per_s: float | None
    size_mb: float
    bits_per_param: float
    speedup: float | None  # own fp32 p50 / p50, timed interleaved with its fp32
    speedup_ci_low: float | None  # bootstrap CI over the interleaved rounds
    speedup_ci_high: float | None
    speedup_verdict: str | None  # faster / slower / no significant difference
    quantize_s: float | None
    gate: str  # passed / FAILED / inconclusive / no gate
    n_items: int | None
    run_id: str | None
    results_path: str | None
    not_measured: str  # "; "-joined reasons of this run's missing figures
    front_latency: bool = False  # on the (drop, p50) Pareto front
    front_size: bool = False  # on the (drop, size) Pareto front
    # deployment=<profile> runs: "<profile>: fits" or "<profile>: does not fit: <reasons>"
    deployment: str = ""
    deployment_profile: str = ""

    @property
    def label(self) -> str:
        return f"{self.model} {self.method}@{self.precision} {self.exporter}/{self.hardware}"


def _pct(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


def _wilson(accuracy: float | None, n: float | None) -> tuple[float | None, float | None]:
    if accuracy is None or not n:
        return None, None
    low, high = wilson_interval(accuracy * n, int(n))
    return 100.0 * low, 100.0 * high


def row_of(r: Results) -> Row:
    config = r.config or {}
    cand, c = r.candidate, r.comparison
    is_fp32 = r.label == "fp32"
    accuracy = c.accuracy if c.accuracy is not None else cand.accuracy
    drop = 0.0 if is_fp32 and accuracy is not None else c.accuracy_drop_points
    low, high = _wilson(accuracy, c.n_items)
    latency = cand.latency
    return Row(
        model=str(r.model.get("name")), method=r.label, precision=str(r.method.get("precision")),
        exporter=str(config.get("exporter", {}).get("name", "?")),
        hardware=str(config.get("hardware", {}).get("name", "?")), runtime=cand.runtime,
        accuracy_pct=_pct(accuracy), accuracy_ci_low_pct=low, accuracy_ci_high_pct=high,
        fp32_accuracy_pct=_pct(c.accuracy_fp32 if not is_fp32 else accuracy),
        drop_pts=drop,
        # fp32 is the reference itself: its drop is 0 by definition, with no interval
        drop_ci_low_pts=None if is_fp32 or c.accuracy_delta_ci_high is None else -100.0 * c.accuracy_delta_ci_high,
        drop_ci_high_pts=None if is_fp32 or c.accuracy_delta_ci_low is None else -100.0 * c.accuracy_delta_ci_low,
        agreement_pct=100.0 if is_fp32 and accuracy is not None else _pct(c.agreement_fp32),
        p50_ms=latency.p50_ms if latency else None, p90_ms=latency.p90_ms if latency else None,
        items_per_s=latency.throughput_items_per_s if latency else None,
        size_mb=cand.size_bytes / 1e6, bits_per_param=cand.bits_per_param,
        speedup=1.0 if is_fp32 and latency and latency.p50_ms else r.speedup,
        speedup_ci_low=c.speedup_ci_low, speedup_ci_high=c.speedup_ci_high, speedup_verdict=c.speedup_verdict,
        quantize_s=r.method.get("quantize_time_s"),
        gate=_gate(r),
        n_items=None if c.n_items is None else int(c.n_items), run_id=r.mlflow_run_id,
        results_path=r.results_path,
        not_measured="; ".join(f"{k}: {v}" for k, v in r.not_measured.items()),
        **_deployment_cells(r))


def _deployment_cells(r: Results) -> dict[str, str]:
    d = r.deployment
    if not d or r.label not in d.get("candidates", {}):
        return {}
    profile = d["profile"]["name"]
    return {"deployment_profile": profile, "deployment": f"{profile}: {d['candidates'][r.label]['verdict']['summary']}"}


def fit_matrix(rows: Sequence[Row]) -> str:
    """Markdown: one line per candidate (model, method@precision, exporter), one column per
    deployment profile, each cell "fits" or "no: <reasons>" ("" when not run together)."""
    profiles = sorted({row.deployment_profile for row in rows if row.deployment_profile})
    if not profiles:
        return ""
    cells: dict[str, dict[str, str]] = {}
    for row in rows:
        if row.deployment_profile:
            key = f"{row.model} {row.method}@{row.precision} {row.exporter}"
            verdict = row.deployment.split(": ", 1)[1]
            cells.setdefault(key, {})[row.deployment_profile] = verdict.replace("does not fit: ", "no: ")
    lines = ["| candidate | " + " | ".join(profiles) + " |", "|---|" + "---|" * len(profiles)]
    lines += [f"| {key} | " + " | ".join(by.get(p, "") for p in profiles) + " |" for key, by in cells.items()]
    return "\n".join(lines) + "\n"


def _gate(r: Results) -> str:
    if r.gate.max_accuracy_drop is None:
        return "no gate"
    verdict = r.gate.verdict or {True: "passed", False: "failed", None: "inconclusive"}[r.gate.passed]
    return "FAILED" if verdict == "failed" else verdict


def comparison_rows(results: Sequence[Results]) -> list[Row]:
    """One row per run, the Pareto fronts marked. Refuses an empty set and runs of one
    model evaluated on different numbers of test items (their deltas do not compare)."""
    if not results:
        raise ReportError("no runs to report: the sweep folder holds no results.json, or no MLflow run matched")
    rows = [row_of(r) for r in results]
    sizes: dict[str, set[int]] = {}
    for row in rows:
        if row.n_items is not None:
            sizes.setdefault(row.model, set()).add(row.n_items)
    mixed = {model: sorted(n) for model, n in sizes.items() if len(n) > 1}
    if mixed:
        model, counts = next(iter(mixed.items()))
        raise ReportError(f"runs of model {model!r} were evaluated on different test sets ({counts} items): "
                          "their accuracy deltas do not compare; report them separately")
    for attr, flag in (("p50_ms", "front_latency"), ("size_mb", "front_size")):
        placed = [row for row in rows if row.drop_pts is not None and getattr(row, attr) is not None]
        points = [(row.drop_pts, getattr(row, attr)) for row in placed]
        for i in pareto_front(points, ["minimize", "minimize"]) if points else []:
            setattr(placed[i], flag, True)
    return rows


def best_row(rows: Sequence[Row], max_drop_pts: float | None = None) -> Row | None:
    """The candidate a user would ship: the fastest (p50) quantized run whose drop is
    within ``max_drop_pts`` (default 1 point) and whose gate did not fail; if none is,
    the one that loses the least. None when nothing was measured."""
    limit = 1.0 if max_drop_pts is None else max_drop_pts
    measured = [r for r in rows if r.method != "fp32" and r.drop_pts is not None]
    within = [r for r in measured if r.drop_pts <= limit and r.gate != "FAILED" and r.p50_ms is not None]
    if within:
        return min(within, key=lambda r: r.p50_ms)
    return min(measured, key=lambda r: r.drop_pts) if measured else None


def _cell(value: object, spec: str = ".2f") -> str:
    if value is None:
        return NOT_MEASURED
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


COLUMNS = (  # (header, row attribute, format) for the Markdown table and the terminal
    ("model", "model", ""), ("method", "method", ""), ("precision", "precision", ""),
    ("exporter", "exporter", ""), ("hardware", "hardware", ""), ("acc %", "accuracy_pct", ".2f"),
    ("drop pts", "drop_pts", "+.2f"), ("agree %", "agreement_pct", ".1f"), ("p50 ms", "p50_ms", ".3f"),
    ("p90 ms", "p90_ms", ".3f"), ("items/s", "items_per_s", ".0f"), ("MB", "size_mb", ".3f"),
    ("bits/p", "bits_per_param", ".2f"), ("speed-up vs own fp32", "speedup", ".2f"), ("quantize s", "quantize_s", ".2f"),
    ("gate", "gate", ""), ("front (lat)", "front_latency", ""), ("front (size)", "front_size", ""),
)


def _with_ci(value: float | None, low: float | None, high: float | None, spec: str, ci_spec: str) -> str:
    if value is None:
        return NOT_MEASURED
    if low is None or high is None:
        return format(value, spec)
    return f"{value:{spec}} [{low:{ci_spec}}, {high:{ci_spec}}]"


def table_cells(row: Row) -> list[str]:
    """The row as the Markdown/terminal table shows it (accuracy and drop with their CIs)."""
    special = {
        "accuracy_pct": lambda r: _with_ci(r.accuracy_pct, r.accuracy_ci_low_pct, r.accuracy_ci_high_pct, ".2f", ".1f"),
        "drop_pts": lambda r: _with_ci(r.drop_pts, r.drop_ci_low_pts, r.drop_ci_high_pts, "+.2f", "+.2f"),
        "speedup": lambda r: (NOT_MEASURED if r.speedup is None else
                              describe_speedup(r.speedup, r.speedup_ci_low, r.speedup_ci_high, r.speedup_verdict,
                                               None).removesuffix(" (no CI)")),
    }
    return [special[attr](row) if attr in special else _cell(getattr(row, attr), spec) for _, attr, spec in COLUMNS]


def to_markdown(rows: Sequence[Row]) -> str:
    header = [h for h, _, _ in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(table_cells(row)) + " |" for row in rows]
    notes = sorted({f"- {row.label}: {row.not_measured}" for row in rows if row.not_measured})
    matrix = fit_matrix(rows)
    fits = ["", "Deployment fit matrix:", "", matrix.rstrip("\n")] if matrix else []
    return "\n".join(lines + ([""] + notes if notes else []) + fits) + "\n"


def write_tables(rows: Sequence[Row], out_dir: Path) -> dict[str, Path]:
    # every field, machine-readable (an empty cell: not measured)
    return {"comparison.csv": atomic_write_csv(out_dir / "comparison.csv", [asdict(row) for row in rows]),
            "comparison.md": atomic_write_text(out_dir / "comparison.md", to_markdown(rows))}


__all__ = ["best_row", "COLUMNS", "fit_matrix", "NOT_MEASURED", "ReportError", "Row", "comparison_rows", "row_of", "table_cells",
           "to_markdown", "write_tables"]
