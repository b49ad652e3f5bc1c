"""One report from a set of runs: read them (a folder of results.json files, or MLflow
runs through MLflow's own client), build the comparison rows, write report.html,
comparison.csv/.md and the PNGs, print the table. Used by the sweep callback (at the
end of every multirun) and by ``quantexp report``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from quantexp.report.compare import COLUMNS, ReportError, Row, comparison_rows, fit_matrix, table_cells, write_tables
from quantexp.report.html import DEFAULT_UI, write_html, write_pngs
from quantexp.report.layers import layer_figure
from quantexp.report.sweeps import job_number
from quantexp.results import Results


def read_folder(folder: Path, running: list[str] | None = None) -> list[Results]:
    """Every results.json under ``folder`` (a sweep, a run, or a folder of either), in path
    order. Job folders (they hold Hydra's .hydra/) without one yet are named in
    ``running`` when a list is given: a sweep still going on, or a job that failed."""
    if not folder.is_dir():
        raise ReportError(f"{folder} is not a folder")
    paths = sorted(folder.rglob("results.json"), key=lambda p: (str(p.parent.parent), job_number(p)))
    if running is not None:
        running += [f"{job.parent} (no results.json yet: running, or failed)" for job in sorted(folder.rglob(".hydra"))
                    if not (job.parent / "results.json").is_file()]
    return [Results.from_json(p) for p in paths]


def read_mlflow(client, experiment: str | None = None, filter_string: str = "",
                run_ids: Sequence[str] = (), running: list[str] | None = None) -> list[Results]:
    """The results.json artifact of every matching FINISHED run (``search_runs`` with
    ``filter_string``, or the given run ids). The report can be made while a sweep goes
    on: runs still running are left out, and named in ``running`` when a list is given."""
    from mlflow.entities import ViewType

    if run_ids:
        runs = [client.get_run(run_id) for run_id in run_ids]
    else:
        found = client.get_experiment_by_name(experiment or "quantexp")
        if found is None:
            raise ReportError(f"no MLflow experiment named {experiment!r} in this store")
        from mlflow.exceptions import MlflowException

        try:
            runs = client.search_runs([found.experiment_id], filter_string=filter_string,
                                      run_view_type=ViewType.ACTIVE_ONLY, max_results=5000)
        except MlflowException as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ReportError(f"MLflow cannot search with --filter {filter_string!r}: {reason}") from exc
    out = []
    with tempfile.TemporaryDirectory(prefix="quantexp-report-") as tmp:
        for run in runs:
            if run.info.status == "RUNNING" and running is not None:
                running.append(f"{run.info.run_name} ({run.info.run_id})")
            if run.info.status != "FINISHED":
                continue
            names = {a.path for a in client.list_artifacts(run.info.run_id)}
            if "results.json" not in names:  # a sweep's parent run holds no results of its own
                continue
            path = client.download_artifacts(run.info.run_id, "results.json", f"{tmp}/{run.info.run_id}")
            out.append(Results.from_json(path))
    return out


def comparison_table(rows: Sequence[Row], title: str) -> Table:
    table = Table(title=title)
    for header, _, spec in COLUMNS:
        table.add_column(header, justify="left" if not spec and header not in ("gate",) else "right")
    for row in rows:
        table.add_row(*table_cells(row))
    return table


def write_report(results: Sequence[Results], out_dir: Path, title: str,
                 mlflow_ui: str = DEFAULT_UI, console: Console | None = None,
                 running: Sequence[str] = ()) -> tuple[list[Row], dict[str, Path]]:
    """Rows + every report file in ``out_dir``; the table printed to ``console`` when given.
    ``running``: runs that have not finished yet (named in the report, not drawn)."""
    rows = comparison_rows(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path = write_html(rows, out_dir, title, mlflow_ui, layer_figure(results), running)
    files = {**write_tables(rows, out_dir), "report.html": html_path, **write_pngs(rows, out_dir)}
    if console is not None:
        console.print(comparison_table(rows, title))
        if matrix := fit_matrix(rows):  # deployment=<profiles> swept: which candidate fits where
            console.print("deployment fit matrix (comparison.md has it too):\n" + matrix, markup=False)
        for name in running:
            console.print(f"still running, not in the report yet: {name}")
        console.print(f"report: {files['report.html']} (+ comparison.csv, comparison.md, "
                      f"{', '.join(n for n in files if n.endswith('.png')) or 'no charts: nothing measured'})")
    return rows, files


__all__ = ["comparison_table", "read_folder", "read_mlflow", "write_report"]
