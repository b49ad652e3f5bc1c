"""``quantexp compare`` and ``quantexp baseline``: regression detection between two runs,
and pinning the run later candidates are compared with.

    quantexp compare --baseline @main --candidate outputs/2026-12-04/10-00-00_cnn_ptq_static_123
    quantexp compare --baseline 3f2a...e1 --candidate 9b77...0c --json verdict.json
    quantexp compare --baseline runs/r0 --baseline runs/r1 --baseline runs/r2 --candidate runs/new
    quantexp compare --baseline benchmarks/ci_baseline --candidate /tmp/ci/run --set fail_on=[accuracy,speedup]
    quantexp baseline set 3f2a...e1 --name main      # tag the run quantexp.baseline=main
    quantexp baseline show --name main

A run is a results.json (or its folder), an MLflow run id, or @name (a pinned baseline).
Exit code: 0 no regression, 1 a regression in a metric of ``fail_on``, 2 bad input.
Thresholds: conf/compare.yaml (``--config`` for another file, ``--set key=value`` for one).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_REGRESSED, EXIT_BAD_INPUT = 1, 2
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "conf" / "compare.yaml"


def client_factory(uri: str | None):
    def open_client():
        from mlflow.tracking import MlflowClient

        from quantexp.regression.sources import SourceError
        from quantexp.tracking.store import resolve_tracking_uri

        resolved = resolve_tracking_uri(uri, Path.cwd())
        if resolved.startswith("sqlite:///") and not Path(resolved.removeprefix("sqlite:///")).is_file():
            raise SourceError(f"no MLflow store at {resolved}: pass --tracking-uri or run from the project folder")
        return MlflowClient(tracking_uri=resolved)

    return open_client


def load_config(path: Path, settings: list[str]):
    """conf/compare.yaml (or ``path``) + ``key=value`` settings, as a validated RegressionConfig."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from quantexp.config import ConfigError
    from quantexp.config.regression import RegressionConfig

    if not path.is_file():
        raise ConfigError(f"no thresholds file {path}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(RegressionConfig), OmegaConf.load(path),
                                 OmegaConf.from_dotlist(settings))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"thresholds: {str(exc).strip().splitlines()[0]}") from exc


def _compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quantexp compare", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--baseline", required=True, action="append",
                   help="results.json, run folder, MLflow run id or @name; repeat it with reruns of the "
                        "baseline to judge latency and speed-up against each (regressed only against all)")
    p.add_argument("--candidate", required=True, help="results.json, run folder, MLflow run id or @name")
    p.add_argument("--json", type=Path, default=None, help="write the verdict here (default: print only)")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="thresholds (default conf/compare.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one threshold")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--experiment", default="quantexp", help="where @name baselines are looked up")
    p.add_argument("--no-tag", action="store_true", help="do not tag the candidate's MLflow run")
    return p


def compare_main(argv: list[str]) -> int:
    args = _compare_parser().parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    from quantexp.config import ConfigError
    from quantexp.regression.compare import CompareError, compare, tag_candidate
    from quantexp.regression.sources import SourceError, resolve

    clients = client_factory(args.tracking_uri)
    try:
        config = load_config(args.config, args.set)
        bases = [resolve(spec, clients, args.experiment) for spec in args.baseline]
        cand = resolve(args.candidate, clients, args.experiment)
        result = compare(bases, cand, config)
    except (ConfigError, SourceError, CompareError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    console = Console(width=None if sys.stdout.isatty() else 200)
    more = f" (+{len(bases) - 1} reruns)" if len(bases) > 1 else ""
    table = Table(title=f"{cand.where} vs baseline {bases[0].where}{more}")
    for column in ("metric", "verdict", "detail", "test"):
        table.add_column(column)
    for v in result.verdicts:
        status = v.status.upper() if v.regressed else v.status
        table.add_row(v.metric, status, v.detail, v.test)
    console.print(table)
    if args.json is not None:
        console.print(f"verdict: {result.write(args.json)}")
    if not args.no_tag and cand.run_id is not None:
        try:
            tag_candidate(clients(), result)
        except SourceError:
            pass  # a results.json whose MLflow store is not here: nothing to tag
    if result.regressed:
        console.print(f"REGRESSION in {', '.join(result.regressed)}")
        return EXIT_REGRESSED
    console.print("no regression")
    return 0


def baseline_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="quantexp baseline", description="pin the run `quantexp compare "
                                "--baseline @NAME` compares with (an MLflow tag, quantexp.baseline=NAME)")
    p.add_argument("action", choices=("set", "show", "clear"))
    p.add_argument("run_id", nargs="?", help="the MLflow run to pin (set)")
    p.add_argument("--name", default="main")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--experiment", default="quantexp")
    args = p.parse_args(argv)
    from quantexp.regression.sources import BASELINE_TAG, SourceError, from_mlflow, pinned_run_id

    try:
        client = client_factory(args.tracking_uri)()
        experiment = client.get_experiment_by_name(args.experiment)
        if experiment is None:
            raise SourceError(f"no MLflow experiment named {args.experiment!r}")
        current = pinned_run_id(client, experiment.experiment_id, args.name)
        if args.action == "set":
            if not args.run_id:
                raise SourceError("quantexp baseline set needs the run id to pin")
            record = from_mlflow(client, args.run_id)  # refuses a run without results
            if current and current != args.run_id:
                client.delete_tag(current, BASELINE_TAG)
            client.set_tag(args.run_id, BASELINE_TAG, args.name)
            print(f"baseline {args.name!r} = run {args.run_id} ({record.results.model.get('name')} "
                  f"{record.results.label})" + (f"; was {current}" if current and current != args.run_id else ""))
        elif args.action == "show":
            print(f"baseline {args.name!r} = {current or 'not set'}")
        else:
            if current:
                client.delete_tag(current, BASELINE_TAG)
            print(f"baseline {args.name!r} cleared" + (f" (was {current})" if current else " (was not set)"))
    except SourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


__all__ = ["baseline_main", "compare_main", "load_config"]
