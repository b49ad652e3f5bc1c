"""The compatibility matrix of one model: every method x precision x exporter x hardware
option of ``conf/`` marked runnable, refused (with the one line the run would print),
not available on this host, or runnable but not measurable here - decided by the same
checks that refuse a run (``check_compatibility``, the hardware probe, the exporter's
``unmeasurable_reason``, the method's ``check_model`` on the loaded model), so the
matrix and ``run.py`` can never disagree.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantexp.config import ConfigError, ExperimentConfig, check_compatibility, resolve
from quantexp.files import atomic_path

RUNNABLE, REFUSED, NOT_HERE, NOT_MEASURABLE = "runnable", "refused", "not on this host", "runnable, not measurable here"
GROUPS = ("method", "precision", "exporter", "hardware")


@dataclass
class Cell:
    method: str
    precision: str
    exporter: str
    hardware: str
    status: str
    reason: str = ""


def group_options(conf_dir: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def option_configs(base_overrides: Sequence[str], conf_dir: Path) -> dict[str, dict[str, Any]]:
    """{group: {option: that group's schema instance}}, each composed once through Hydra."""
    from omegaconf import OmegaConf

    from quantexp.api import compose

    out: dict[str, dict[str, Any]] = {group: {} for group in GROUPS}
    for group in GROUPS:
        for option in group_options(conf_dir, group):
            # the group alone (its schema validates itself); the cross-group check is the cell's
            out[group][option] = OmegaConf.to_object(compose([*base_overrides, f"{group}={option}"])[group])
    return out


def compatibility_matrix(base: ExperimentConfig, options: dict[str, dict[str, Any]],
                         bundle=None) -> list[Cell]:
    """One cell per combination; ``bundle`` (the loaded model) adds the methods' own
    refusals of this model (e.g. bitsandbytes without Linear layers)."""
    from quantexp.hardware.probe import unavailable_reason

    cells = []
    for method, precision, exporter, hardware in itertools.product(*(options[g].values() for g in GROUPS)):
        exp = dataclasses.replace(base, method=method, precision=precision, exporter=exporter, hardware=hardware)
        cell = Cell(method.name, precision.name, exporter.name, hardware.name, RUNNABLE)
        try:
            exp = resolve(exp, check_compatibility(exp))
        except ConfigError as exc:
            cell.status, cell.reason = REFUSED, str(exc)
            cells.append(cell)
            continue
        if (why := unavailable_reason(hardware.name)) is not None:
            cell.status, cell.reason = NOT_HERE, f"hardware={hardware.name}: {why}"
        elif (why := exp.exporter.unmeasurable_reason()) is not None:
            cell.status, cell.reason = NOT_MEASURABLE, why
        elif bundle is not None and (why := model_refusal(exp, bundle)) is not None:
            cell.status, cell.reason = REFUSED, why
        cells.append(cell)
    return cells


def model_refusal(exp: ExperimentConfig, bundle) -> str | None:
    """The method's own refusal of this model (``check_model``), or None."""
    from quantexp.hardware import probe_host
    from quantexp.methods import get_method

    method = get_method(exp.method.name)(exp.method, exp.precision, probe_host(exp.hardware))
    try:
        method.check_model(bundle)
    except ConfigError as exc:
        return str(exc)
    return None


def summary_counts(cells: Sequence[Cell]) -> dict[str, int]:
    """{"runnable": n, "runnable_not_measurable_here": n, ...} (keys MLflow accepts)."""
    return {status.replace(", ", "_").replace(" ", "_"): sum(c.status == status for c in cells)
            for status in (RUNNABLE, NOT_MEASURABLE, NOT_HERE, REFUSED)}


def write_heatmap(cells: Sequence[Cell], path: Path, title: str) -> Path:
    """Methods x precisions, one panel per exporter@hardware: green runnable, yellow not
    measurable here, grey not on this host, red refused."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    code = {REFUSED: 0, NOT_HERE: 1, NOT_MEASURABLE: 2, RUNNABLE: 3}
    methods = sorted({c.method for c in cells})
    precisions = sorted({c.precision for c in cells})
    targets = sorted({(c.exporter, c.hardware) for c in cells})
    cols = 4
    rows = -(-len(targets) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    cmap = ListedColormap(["#d9534f", "#bbbbbb", "#f0ad4e", "#5cb85c"])
    for ax, (exporter, hardware) in zip(axes.flat, targets):
        grid = [[code[next(c.status for c in cells if (c.method, c.precision, c.exporter, c.hardware)
                           == (m, p, exporter, hardware))] for p in precisions] for m in methods]
        ax.imshow(grid, cmap=cmap, vmin=0, vmax=3, aspect="auto")
        ax.set_title(f"{exporter} @ {hardware}", fontsize=9)
        ax.set_xticks(range(len(precisions)), precisions, rotation=90, fontsize=7)
        ax.set_yticks(range(len(methods)), methods, fontsize=7)
    for ax in list(axes.flat)[len(targets):]:
        ax.axis("off")
    fig.suptitle(f"{title}: green runnable, yellow not measurable here, grey not on this host, red refused",
                 fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


__all__ = ["Cell", "NOT_HERE", "NOT_MEASURABLE", "REFUSED", "RUNNABLE", "compatibility_matrix", "group_options",
           "model_refusal", "option_configs", "summary_counts", "write_heatmap"]
