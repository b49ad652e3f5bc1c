"""A Hydra multirun as typed results: launch one (``run_sweep``), read back the
results.json of every job that finished (``read_sweep``), and print one row per job
(``format_row``). The benchmark scripts and the recipe tests share these.

A sweep is launched as a user launches it - ``python -m quantexp run -m <overrides>``,
a recipe being ``+experiment=<name>`` (conf/experiment/) - so a benchmark figure is the
figure a user would get. ``sweep_param`` overrides one of a recipe's swept keys
(``hydra.sweeper.params.<key>``), e.g. to measure one model of a recipe's three.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from quantexp.results import Results

HEADER = (f"{'model':8} {'method':14} {'runtime':12} {'acc %':>7} {'Δ pts [95% CI]':>22} {'agree %':>8} "
          f"{'p50 ms':>8} {'fp32 p50':>9} {'speed-up':>8} {'size MB':>8} {'size ratio':>10} {'bits/p':>7}")


def sweep_param(key: str, values: str) -> str:
    """The override that replaces a recipe's swept values for ``key`` ("cnn,minilm").
    Quoted: Hydra refuses a sweep over its own config, and the sweeper splits the string."""
    return f"hydra.sweeper.params.{key}='{values}'"


def read_sweep(sweep_dir: Path) -> list[Results]:
    """Every job's results, in job order (a failed job wrote none and has no entry)."""
    return [Results.from_json(p) for p in sorted(sweep_dir.glob("*/results.json"), key=job_number)]


def job_number(path: Path) -> tuple[int, str]:
    # job folders are "<hydra.job.num>_<model>_<method>" (or "<num>"): 10 sorts after 9
    number = path.parent.name.split("_")[0]
    return (int(number) if number.isdigit() else -1, path.parent.name)


def run_sweep(sweep_dir: Path, overrides: list[str], cwd: Path | None = None) -> tuple[list[Results], float]:
    """One ``quantexp run -m <overrides>`` into ``sweep_dir``: the finished jobs' results and
    the wall time. A failed job is reported by the run itself (FAILED in MLflow)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "quantexp", "run", "-m", *overrides,
                           f"hydra.sweep.dir={sweep_dir}"], cwd=cwd, check=False, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(f"warning: quantexp run -m {' '.join(overrides)} exited {proc.returncode}", file=sys.stderr)
    return read_sweep(sweep_dir), wall


def _pct(value: float | None, spec: str) -> str:
    return "-" if value is None else format(100 * value, spec)


def _ratio(r: Results, value: float | None, spec: str) -> str:
    # fp32 is its own reference (1.00); otherwise a ratio the run could not measure is "-"
    if r.label == "fp32":
        value = 1.0
    return format("-" if value is None else format(value, spec), f">{spec.split('.')[0]}")


def format_row(r: Results, label: str | None = None) -> str:
    """One job as a table row (speed-up: vs the same run's fp32 artifact, i.e. the same
    runtime; "-" where the run did not measure it)."""
    c, cand = r.comparison, r.candidate
    fp32 = r.reference or cand
    p50, ref_p50 = (cand.latency and cand.latency.p50_ms), (fp32.latency and fp32.latency.p50_ms)
    ci = (f"{_pct(c.accuracy_delta, '+6.2f')} [{_pct(c.accuracy_delta_ci_low, '+5.2f')},"
          f"{_pct(c.accuracy_delta_ci_high, '+5.2f')}]")
    return (f"{r.model['name']:8} {label or r.label:14} {cand.runtime:12} {_pct(c.accuracy, '7.2f'):>7} "
            f"{ci:>22} {_pct(c.agreement_fp32, '8.2f'):>8} "
            f"{'-' if p50 is None else format(p50, '8.3f'):>8} {'-' if ref_p50 is None else format(ref_p50, '9.3f'):>9} "
            f"{_ratio(r, r.speedup, '7.2f')}x {cand.size_bytes / 1e6:8.3f} "
            f"{_ratio(r, c.size_ratio, '10.3f')} {cand.bits_per_param:7.2f}")


__all__ = ["HEADER", "format_row", "read_sweep", "run_sweep", "sweep_param"]
