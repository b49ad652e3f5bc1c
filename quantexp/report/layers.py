"""Per-layer charts of the report, drawn when the runs carry the tables: the error each
quantized layer adds (``tables/layer_error``: SQNR in dB of the layer's output vs fp32,
higher is better) and the mixed-precision sensitivity (``tables/sensitivity``: KL of
the model's output with that one layer quantized, higher is more sensitive). One line
per run, layers in model order, so that the layer that loses the most stands out and
runs can be compared layer by layer.
"""

from __future__ import annotations

from collections.abc import Sequence

from quantexp.results import Results


def _label(r: Results) -> str:
    config = r.config or {}
    exporter = (config.get("exporter") or {}).get("name", "?")
    return f"{r.model.get('name')} {r.label}@{r.method.get('precision')} {exporter}"


def layer_series(results: Sequence[Results]) -> dict[str, list[tuple[str, list[str], list[float]]]]:
    """{chart: [(run label, layers, values)]} for the charts some run has data for."""
    charts: dict[str, list[tuple[str, list[str], list[float]]]] = {}
    for r in results:
        error = [row for row in r.tables.get("layer_error", []) if row.get("sqnr_db") is not None]
        if error:
            charts.setdefault("layer SQNR (dB, higher is better)", []).append(
                (_label(r), [row["layer"] for row in error], [float(row["sqnr_db"]) for row in error]))
        sens = r.tables.get("sensitivity", [])
        # one dtype per chart line: the reference dtype's rows (int8 unless the run chose another)
        ref = (r.method.get("sensitivity.reference_dtype") or "int8")
        rows = [row for row in sens if row.get("dtype") == ref and row.get("kl_div") is not None]
        if rows:
            charts.setdefault(f"sensitivity (KL vs fp32 with one layer at {ref})", []).append(
                (_label(r), [row["layer"] for row in rows], [float(row["kl_div"]) for row in rows]))
    return charts


def layer_figure(results: Sequence[Results]):
    """A plotly figure with one subplot per chart, or None when no run has per-layer tables."""
    charts = layer_series(results)
    if not charts:
        return None
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=len(charts), cols=1, subplot_titles=list(charts), vertical_spacing=0.18)
    for row, (title, series) in enumerate(charts.items(), start=1):
        for label, layers, values in series:
            fig.add_trace(go.Scatter(x=layers, y=values, mode="lines+markers", name=label, legendgroup=label,
                                     showlegend=row == 1 or len(charts) == 1,
                                     hovertemplate=f"{label}<br>%{{x}}: %{{y:.4g}}<extra></extra>"),
                          row=row, col=1)
        # model order: the run that has the most layers first, then any layer only others have
        order: list[str] = []
        for _, layers, _ in sorted(series, key=lambda item: -len(item[1])):
            order += [layer for layer in layers if layer not in order]
        fig.update_xaxes(categoryorder="array", categoryarray=order, row=row, col=1)
        if title.startswith("sensitivity"):
            fig.update_yaxes(type="log", row=row, col=1)
    fig.update_layout(height=380 * len(charts), template="plotly_white", margin={"t": 50, "l": 60, "r": 20},
                      legend={"orientation": "h", "y": -0.12})
    return fig


__all__ = ["layer_figure", "layer_series"]
