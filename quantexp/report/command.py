"""``quantexp report``: the cross-run report from a sweep folder (or any folder of runs)
or from runs already in MLflow (an experiment, a filter, or run ids), written as
report.html, comparison.csv, comparison.md and PNGs, and printed as a table.

    quantexp report multirun/2026-12-02/10-00-00
    quantexp report --experiment quantexp --filter "params.`model.name` = 'cnn'"
    quantexp report --runs ID,ID --out reports/today

Bad input (no runs, runs on different test sets, a store that does not exist) is one
line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from quantexp.report.compare import ReportError

EXIT_BAD_INPUT = 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quantexp report", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("folder", nargs="?", type=Path, help="a sweep or run folder (every results.json below it)")
    p.add_argument("--experiment", help="MLflow experiment name (default source when no folder is given)")
    p.add_argument("--filter", default="", help="MLflow search_runs filter, e.g. \"params.`model.name` = 'cnn'\"")
    p.add_argument("--runs", default="", help="comma-separated MLflow run ids")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)")
    p.add_argument("--out", type=Path, default=None, help="where the report files go (default: the folder, "
                   "or ./reports/<experiment>)")
    p.add_argument("--title", default=None)
    p.add_argument("--ui", default="http://127.0.0.1:5000", help="MLflow UI address that points link to")
    return p


def _client(uri: str | None):
    from mlflow.tracking import MlflowClient

    from quantexp.tracking.store import resolve_tracking_uri

    resolved = resolve_tracking_uri(uri, Path.cwd())
    if resolved.startswith("sqlite:///") and not Path(resolved.removeprefix("sqlite:///")).is_file():
        # MlflowClient would create an empty store: a typo would report "no runs" from a new file
        raise ReportError(f"no MLflow store at {resolved}: pass --tracking-uri or run from the project folder")
    return MlflowClient(tracking_uri=resolved)


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from rich.console import Console

    from quantexp.report.build import read_folder, read_mlflow, write_report

    running: list[str] = []
    try:
        if args.folder is not None and (args.experiment or args.runs or args.filter):
            raise ReportError("give a folder or MLflow runs (--experiment/--filter/--runs), not both")
        if args.folder is not None:
            results = read_folder(args.folder, running)
            out, title = args.out or args.folder, args.title or f"quantexp report: {args.folder}"
        else:
            run_ids = [r.strip() for r in args.runs.split(",") if r.strip()]
            results = read_mlflow(_client(args.tracking_uri), args.experiment, args.filter, run_ids, running)
            name = args.experiment or "quantexp"
            out = args.out or Path("reports") / name
            title = args.title or f"quantexp report: {'runs ' + ', '.join(run_ids) if run_ids else name}" + (
                f" ({args.filter})" if args.filter else "")
        write_report(results, out, title, args.ui, Console(width=None if sys.stdout.isatty() else 220), running)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


__all__ = ["main", "parser"]
