"""The interactive report: ``report.html`` (plotly, its JavaScript inlined so the file
opens offline, from an artifact store or a CI log) and static PNGs of the same charts
(matplotlib) for READMEs and people who prefer files.

Two scatter charts - accuracy drop vs p50 latency and accuracy drop vs size - one
trace per method, the Pareto front drawn as a step line, fp32 references as open
markers; hovering a point shows the run's configuration and figures, clicking it
opens the run in the MLflow UI. Below them, the comparison table with a filter box.
Plotly was chosen for interactive charts that need no server; matplotlib (already a
dependency) for PNGs, because plotly's own image export needs a browser.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

from quantexp.files import atomic_path, atomic_write_text
from quantexp.report.compare import COLUMNS, Row, table_cells
from quantexp.tracking.store import DEFAULT_UI

CHARTS = (("p50_ms", "front_latency", "p50 latency (ms)"), ("size_mb", "front_size", "size (MB)"))


def _scale(values: Sequence[float]) -> str:
    # log only when the points span a decade or more (MiniLM next to a CNN); a narrow
    # range on a log axis gets unreadable tick labels
    positive = [v for v in values if v and v > 0]
    return "log" if positive and max(positive) / min(positive) >= 10 else "linear"


def _hover(row: Row) -> str:
    lines = [f"<b>{html.escape(row.label)}</b>", f"runtime {row.runtime}"]
    lines += [f"{h}: {c}" for (h, _, _), c in zip(COLUMNS[5:], table_cells(row)[5:])]
    if row.not_measured:
        lines.append(html.escape(row.not_measured))
    return "<br>".join(lines)


def figure(rows: Sequence[Row], mlflow_ui: str = DEFAULT_UI):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=[f"accuracy drop vs {t}" for _, _, t in CHARTS],
                        horizontal_spacing=0.08)
    methods = sorted({row.method for row in rows})
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
               "#7f7f7f", "#bcbd22"]
    for col, (attr, flag, title) in enumerate(CHARTS, start=1):
        placed = [r for r in rows if r.drop_pts is not None and getattr(r, attr) is not None]
        for k, method in enumerate(methods):
            mine = [r for r in placed if r.method == method]
            if not mine:
                continue
            fig.add_trace(go.Scatter(
                x=[getattr(r, attr) for r in mine], y=[r.drop_pts for r in mine], mode="markers",
                name=method, legendgroup=method, showlegend=col == 1,
                marker={"size": 11, "color": palette[k % len(palette)],
                        "symbol": ["circle-open" if method == "fp32" else "circle" for _ in mine],
                        "line": {"width": [3 if getattr(r, flag) else 1 for r in mine], "color": "black"}},
                error_y={"type": "data", "symmetric": False,
                         "array": [(r.drop_ci_high_pts - r.drop_pts) if r.drop_ci_high_pts is not None else 0
                                   for r in mine],
                         "arrayminus": [(r.drop_pts - r.drop_ci_low_pts) if r.drop_ci_low_pts is not None else 0
                                        for r in mine], "thickness": 1},
                customdata=[f"{mlflow_ui}/#/runs/{r.run_id}" if r.run_id else "" for r in mine],
                hovertext=[_hover(r) for r in mine], hoverinfo="text"), row=1, col=col)
        front = sorted((getattr(r, attr), r.drop_pts) for r in placed if getattr(r, flag))
        if front:
            fig.add_trace(go.Scatter(x=[x for x, _ in front], y=[y for _, y in front], mode="lines",
                                     line={"shape": "hv", "dash": "dash", "color": "black"},
                                     name="Pareto front", legendgroup="front", showlegend=col == 1,
                                     hoverinfo="skip"), row=1, col=col)
        fig.update_xaxes(title_text=title, type=_scale([getattr(r, attr) for r in placed]), row=1, col=col)
        fig.update_yaxes(title_text="accuracy drop vs fp32 (points; lower is better)", row=1, col=col)
    fig.update_layout(height=520, margin={"t": 60, "l": 60, "r": 20, "b": 50}, template="plotly_white",
                      legend={"orientation": "h", "y": -0.18})
    return fig


# Clicking a point opens its MLflow run (customdata holds the URL); the filter box hides
# table rows whose text does not contain every word typed.
_SCRIPT = """
var plot = document.getElementById('{plot_id}');
plot.on('plotly_click', function (event) {
  var url = event.points[0].customdata; if (url) { window.open(url, '_blank'); }
});
"""
_FILTER = """<script>
function filterRows(text) {
  var words = text.toLowerCase().split(/\\s+/).filter(Boolean);
  document.querySelectorAll('#runs tbody tr').forEach(function (tr) {
    var cells = tr.textContent.toLowerCase();
    tr.style.display = words.every(function (w) { return cells.indexOf(w) >= 0; }) ? '' : 'none';
  });
}
</script>"""


# plotly.js (4.7 MB) travels gzipped and base64-encoded (1.3 MB) and is unpacked by the
# browser's own DecompressionStream: the report stays one offline file under 5 MB at any
# number of runs. The figure is drawn once the library is in place.
_LOADER = """<div id="charts"></div>{more_divs}
<script type="application/json" id="figures">{figures}</script>
<script>
(async function () {{
  var packed = "{packed}";
  var bytes = Uint8Array.from(atob(packed), function (c) {{ return c.charCodeAt(0); }});
  var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
  var code = await new Response(stream).text();
  var tag = document.createElement("script");
  tag.text = code;
  document.head.appendChild(tag);
  var figures = JSON.parse(document.getElementById("figures").textContent);
  for (var id in figures) {{
    await Plotly.newPlot(id, figures[id].data, figures[id].layout, {{responsive: true}});
  }}
  {post_script}
  document.body.setAttribute("data-charts", "drawn");
}})();
</script>"""


def _packed_plotlyjs() -> str:
    import base64
    import gzip

    from plotly.offline import get_plotlyjs

    return base64.b64encode(gzip.compress(get_plotlyjs().encode("utf-8"), compresslevel=9, mtime=0)).decode("ascii")


def to_html(rows: Sequence[Row], title: str, mlflow_ui: str = DEFAULT_UI, layers=None,
            running: Sequence[str] = ()) -> str:
    """``layers``: the per-layer figure (``report.layers``) drawn below the fronts, if any;
    ``running``: runs not finished yet (listed, not drawn)."""
    figures = {"charts": json.loads(figure(rows, mlflow_ui).to_json())}
    if layers is not None:
        figures["layers"] = json.loads(layers.to_json())
    figures_json = json.dumps(figures).replace("</", "<\\/")  # never closes the <script>
    # every div exists before the script draws into it
    more = '\n<h2>Per layer</h2>\n<div id="layers"></div>' if layers is not None else ""
    plot = _LOADER.format(figures=figures_json, packed=_packed_plotlyjs(), more_divs=more,
                          post_script=_SCRIPT.replace("{plot_id}", "charts"))
    still = "".join(f"<li>{html.escape(name)}</li>" for name in running)
    head = "".join(f"<th>{html.escape(h)}</th>" for h, _, _ in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in table_cells(row)) + "</tr>"
                   for row in rows)
    notes = "".join(f"<li>{html.escape(row.label)}: {html.escape(row.not_measured)}</li>"
                    for row in rows if row.not_measured)
    n_front = sum(r.front_latency for r in rows), sum(r.front_size for r in rows)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5em}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}} th{{background:#f3f3f3}}
td:nth-child(-n+5){{text-align:left}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{len(rows)} runs; Pareto front: {n_front[0]} over (drop, latency), {n_front[1]} over (drop, size)
(thick outline). Drops are paired against the fp32 model in the same runtime, with 95% CIs.
Click a point to open its MLflow run.</p>
{plot}
<h2>Runs</h2>
<p><input id="filter" placeholder="filter rows, e.g. cnn int8" oninput="filterRows(this.value)" size="40"></p>
<table id="runs"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
{f"<h2>Not measured</h2><ul>{notes}</ul>" if notes else ""}
{f"<h2>Still running (not in the charts yet)</h2><ul>{still}</ul>" if still else ""}
<script type="application/json" id="rows">{html.escape(json.dumps([r.__dict__ for r in rows], default=str))}</script>
{_FILTER}
</body></html>
"""


def write_pngs(rows: Sequence[Row], out_dir: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = {}
    for attr, flag, title in CHARTS:
        placed = [r for r in rows if r.drop_pts is not None and getattr(r, attr) is not None]
        if not placed:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for method in sorted({r.method for r in placed}):
            mine = [r for r in placed if r.method == method]
            ax.scatter([getattr(r, attr) for r in mine], [r.drop_pts for r in mine], label=method,
                       facecolors="none" if method == "fp32" else None, edgecolors="black", s=50)
        front = sorted((getattr(r, attr), r.drop_pts) for r in placed if getattr(r, flag))
        ax.step([x for x, _ in front], [y for _, y in front], where="post", ls="--", c="black", label="Pareto front")
        ax.set_xscale(_scale([getattr(r, attr) for r in placed]))
        ax.set(xlabel=title, ylabel="accuracy drop vs fp32 (points)", title=f"accuracy drop vs {title}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        name = f"pareto_{attr.removesuffix('_ms').removesuffix('_mb')}.png"
        with atomic_path(out_dir / name) as tmp:
            fig.savefig(tmp, dpi=100)
        plt.close(fig)
        written[name] = out_dir / name
    return written


def write_html(rows: Sequence[Row], out_dir: Path, title: str, mlflow_ui: str = DEFAULT_UI, layers=None,
               running: Sequence[str] = ()) -> Path:
    return atomic_write_text(out_dir / "report.html", to_html(rows, title, mlflow_ui, layers, running))


__all__ = ["figure", "to_html", "write_html", "write_pngs"]
