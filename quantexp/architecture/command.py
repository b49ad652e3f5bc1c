"""``quantexp analyze model=<m> [overrides] [--out DIR]``: the census, the layer risks and
the compatibility matrix of a model, printed, written (layers.csv, layer_stats.csv,
compatibility.csv/.png, analysis.json) and logged to MLflow as a run "analyze <model>".

    quantexp analyze model=minilm
    quantexp analyze model=hf model.path=/abs/path/to/model --out reports/my_model
    quantexp analyze model=cnn model.channels=[8,16] tracking.enabled=false

Overrides are run.py's (the model is loaded, or trained and cached, as a run would);
a bad one is one line and exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

EXIT_BAD_INPUT = 2


def print_analysis(analysis, console) -> None:
    from rich.table import Table

    from quantexp.architecture.matrix import NOT_MEASURABLE, RUNNABLE

    c = analysis.census
    console.print(f"[bold]{analysis.name}[/]: {c.params_total / 1e6:.2f} M parameters, "
                  f"{c.macs_total / 1e6:.1f} M MACs per item; family [bold]{c.family}[/] ({c.reason})")
    kinds = Table(title="where the parameters and the compute are")
    for column in ("kind", "layers", "params %", "MACs %"):
        kinds.add_column(column, justify="left" if column == "kind" else "right")
    for kind in c.param_share:
        n = sum(r.kind == kind for r in c.layers)
        if n or c.mac_share.get(kind):
            kinds.add_row(kind, str(n), f"{100 * c.param_share[kind]:.1f}", f"{100 * c.mac_share.get(kind, 0):.1f}")
    console.print(kinds)
    risky = [s for s in analysis.stats if s.risks]
    if risky:
        table = Table(title=f"quantization risks ({len(risky)} of {len(analysis.stats)} layers)")
        table.add_column("layer")
        table.add_column("risks")
        for s in risky[:15]:
            table.add_row(s.name, "; ".join(s.risks))
        if len(risky) > 15:
            table.add_row("...", f"{len(risky) - 15} more in layer_stats.csv")
        console.print(table)
    if analysis.matrix:
        usable = [cell for cell in analysis.matrix if cell.status in (RUNNABLE, NOT_MEASURABLE)]
        table = Table(title=f"what can run ({len(usable)} of {len(analysis.matrix)} cells; the rest in "
                            "compatibility.csv with the reason each is refused)")
        for column in ("method", "precision", "exporter", "hardware", "status"):
            table.add_column(column)
        for cell in usable:
            table.add_row(cell.method, cell.precision, cell.exporter, cell.hardware,
                          cell.status + (f": {cell.reason}" if cell.reason else ""))
        console.print(table)


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return 0
    out = None
    if "--out" in argv:
        i = argv.index("--out")
        if i + 1 >= len(argv):
            print("error: --out needs a folder", file=sys.stderr)
            return EXIT_BAD_INPUT
        out, argv = Path(argv[i + 1]), argv[:i] + argv[i + 2:]
    from rich.console import Console

    from quantexp.architecture.run import analyze_model, log_analysis
    from quantexp.config import ConfigError
    from quantexp.hardware.probe import HardwareUnavailable

    try:
        analysis, exp = analyze_model(argv)
    except (ConfigError, HardwareUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    console = Console(width=None if sys.stdout.isatty() else 200)
    print_analysis(analysis, console)
    files = analysis.write(out or Path("reports") / "analyze" / analysis.name)
    run_id = log_analysis(analysis, files, exp)
    console.print(f"analysis: {', '.join(str(p) for p in files.values())}"
                  + (f" | mlflow run: {run_id}" if run_id else ""))
    console.print(f"took {sum(analysis.seconds.values()):.1f} s ("
                  + ", ".join(f"{k} {v:.1f}" for k, v in analysis.seconds.items()) + ")")
    return 0


__all__ = ["main", "print_analysis"]
