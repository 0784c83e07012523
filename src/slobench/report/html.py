"""Self-contained HTML pages with plotly figures: one file, plotly.js inlined once, no network when
it opens, and no string from a server or a dataset able to run as code.

Three layers keep data inert:

* the page is a jinja2 template with autoescape on, so text in the HTML body is escaped;
* figures travel as one JSON data block (``<script type="application/json">``) whose ``<``, ``>``
  and ``&`` are written as ``\\u003c``/``\\u003e``/``\\u0026``, so no string can close the element;
* plotly draws trace names, category labels and hover text through its own small HTML subset
  (``<b>``, ``<br>``, ``<a href>``...), so every string from data goes through :func:`text`
  (``html.escape``) before it reaches a figure: plotly then shows it literally.

On top, a Content-Security-Policy allows only the page's own scripts (by their SHA-256 hashes),
no inline event handlers and no connection anywhere.

Figures are plain plotly JSON dicts (``{"data": [...], "layout": {...}}``) rather than
``plotly.graph_objects`` figures: building them is much faster for large runs, and the page does
not depend on the Python package's validators.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from slobench.errors import UserError
from slobench.report.terminal import fmt_frac, fmt_rate, fmt_s

TEMPLATES = Path(__file__).parent / "templates"
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf")
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True, "showLink": False,
                 "modeBarButtonsToRemove": ["sendDataToCloud"]}
# No fetch, no frame, no form; scripts only by hash (added per page); plotly injects its styles.
_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data: blob:; "
        "font-src data:; base-uri 'none'; form-action 'none'; script-src {hashes}")
_SCRIPT_JSON_ESCAPES = ((b"&", b"\\u0026"), (b"<", b"\\u003c"), (b">", b"\\u003e"),
                        ("\u2028".encode(), b"\\u2028"), ("\u2029".encode(), b"\\u2029"))


def text(value: Any) -> str:
    """A string from data (a server, a dataset, a workload) made safe for plotly, which reads
    its strings as a small HTML subset: escaped, so it shows literally. Quotes stay as they are:
    plotly does not decode ``&quot;``, and without ``<`` no tag (or attribute) can start."""
    return html.escape(str(value), quote=False)


def script_json(obj: Any) -> str:
    """JSON safe inside a ``<script>`` element: ``<``, ``>``, ``&`` (and the two JavaScript line
    separators) as ``\\uXXXX`` escapes, so ``</script>`` in any string cannot end the element.
    NaN and infinities become null."""
    raw = orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
    for bad, good in _SCRIPT_JSON_ESCAPES:
        raw = raw.replace(bad, good)
    return raw.decode()


@functools.lru_cache(maxsize=1)
def plotly_js() -> str:
    """plotly.js (minified) from the installed plotly package, to inline once per page."""
    try:
        from plotly.offline import get_plotlyjs
    except ImportError:
        raise UserError("HTML reports need plotly; install it with 'pip install plotly'") from None
    js = get_plotlyjs()
    if "</script" in js.lower():  # cannot happen in today's bundle; never let it end the element
        js = js.replace("</script", "<\\/script").replace("</SCRIPT", "<\\/SCRIPT")
    return js


@functools.lru_cache(maxsize=1)
def _plotly_js_hash() -> str:
    return _sha256(plotly_js())


def _sha256(script: str) -> str:
    digest = hashlib.sha256(script.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


# -- figures -------------------------------------------------------------------------------------


@dataclass
class Figure:
    """One plotly figure on a page. ``data``/``layout`` are plotly JSON; every string in them that
    came from data must already have gone through :func:`text`. ``note`` is shown under it."""

    title: str
    data: list[dict[str, Any]]
    layout: dict[str, Any] = field(default_factory=dict)
    note: str | None = None
    height: int = 420

    def spec(self, fig_id: str) -> dict[str, Any]:
        layout = {"template": _TEMPLATE, "height": self.height,
                  "margin": {"l": 70, "r": 20, "t": 50, "b": 50},
                  "legend": {"orientation": "h", "y": -0.18},
                  "title": {"text": text(self.title), "x": 0.01}, **self.layout}
        return {"id": fig_id, "data": self.data, "layout": layout}


# A light template written out (plotly's named templates live in the Python package only).
_TEMPLATE = {"layout": {
    "paper_bgcolor": "white", "plot_bgcolor": "white", "colorway": list(COLORS),
    "font": {"family": "system-ui, sans-serif", "size": 12, "color": "#2a3f5f"},
    "hovermode": "closest",
    "xaxis": {"gridcolor": "#ebf0f8", "linecolor": "#ebf0f8", "zerolinecolor": "#ebf0f8",
              "automargin": True},
    "yaxis": {"gridcolor": "#ebf0f8", "linecolor": "#ebf0f8", "zerolinecolor": "#ebf0f8",
              "automargin": True},
}}


def rounded(values: Any, digits: int = 4) -> list[Any]:
    """Floats rounded to ``digits`` significant digits (smaller pages); NaN becomes None."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return []
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where((arr != 0) & np.isfinite(arr), np.floor(np.log10(np.abs(arr))), 0)
        scale = 10.0 ** (digits - 1 - mag)
        out = np.round(arr * scale) / scale
    return [None if not math.isfinite(v) else v for v in out.tolist()]


def ecdf_points(values: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """The empirical CDF of ``values`` (NaN dropped) as (x, p) at most ``max_points`` long: all
    points when they fit, else the order statistics at evenly spaced ranks (the minimum and the
    maximum always), so every quantile is exact to 1/max_points."""
    arr = np.sort(np.asarray(values, dtype=np.float64)[~np.isnan(values)])
    n = arr.size
    if n == 0:
        return arr, arr
    if n <= max_points:
        idx = np.arange(n)
    else:
        idx = np.unique(np.round(np.linspace(0, n - 1, max_points)).astype(np.int64))
    return arr[idx], (idx + 1) / n


def thin(order_key: np.ndarray, values: np.ndarray, max_points: int, *,
         keep_top: float = 0.01) -> np.ndarray:
    """Indices of at most ``max_points`` of the rows (NaN values dropped) for a scatter plot: the
    largest ``keep_top`` share of values always (outliers stay visible), the rest evenly spaced in
    ``order_key`` order. Sorted by ``order_key``."""
    rows = np.flatnonzero(~np.isnan(values))
    if rows.size <= max_points:
        return rows[np.argsort(order_key[rows], kind="stable")]
    n_top = min(int(max_points * keep_top * 5), max(1, int(rows.size * keep_top)), max_points)
    top = rows[np.argsort(values[rows])[-n_top:]]
    rest = np.setdiff1d(rows, top, assume_unique=True)
    rest = rest[np.argsort(order_key[rest], kind="stable")]
    pick = rest[np.round(np.linspace(0, rest.size - 1, max_points - n_top)).astype(np.int64)]
    keep = np.union1d(top, pick)
    return keep[np.argsort(order_key[keep], kind="stable")]


def goodput_load_figure(points: list[dict[str, Any]], *, title: str = "Goodput against load",
                        capacity_rps: float | None = None) -> Figure:
    """Goodput (req/s meeting the SLOs) and attainment against offered load, for a sweep or a
    capacity search. ``points``: dicts with ``load`` (offered req/s), ``goodput`` (req/s),
    ``attainment`` (0..1) and optionally ``label`` (a run id: shown in the hover, escaped)."""
    pts = sorted((p for p in points if p.get("load") is not None), key=lambda p: p["load"])
    x = rounded([p["load"] for p in pts])
    labels = [text(p.get("label", "")) for p in pts]
    data: list[dict[str, Any]] = [
        {"type": "scatter", "mode": "lines+markers", "name": "goodput (req/s)", "x": x,
         "y": rounded([p.get("goodput") for p in pts]), "text": labels,
         "hovertemplate": "%{x:.4~g} req/s offered: goodput %{y:.4~g} req/s<br>%{text}"
                          "<extra></extra>"},
        {"type": "scatter", "mode": "lines+markers", "name": "SLO attainment", "yaxis": "y2",
         "x": x, "y": rounded([p.get("attainment") for p in pts]), "text": labels,
         "line": {"dash": "dot"},
         "hovertemplate": "%{x:.4~g} req/s offered: attainment %{y:.1%}<br>%{text}"
                          "<extra></extra>"},
    ]
    if x:  # the ideal: every offered request meets its SLO
        data.append({"type": "scatter", "mode": "lines", "name": "goodput = load",
                     "x": [0, x[-1]], "y": [0, x[-1]], "hoverinfo": "skip",
                     "line": {"color": "#bbb", "dash": "dash", "width": 1}})
    layout: dict[str, Any] = {
        "hovermode": "x", "hoverdistance": -1,
        "xaxis": {"title": {"text": "offered load (req/s)"}, "rangemode": "tozero"},
        "yaxis": {"title": {"text": "goodput (req/s)"}, "rangemode": "tozero"},
        "yaxis2": {"title": {"text": "SLO attainment"}, "overlaying": "y", "side": "right",
                   "range": [0, 1.05], "tickformat": ".0%", "showgrid": False},
    }
    if capacity_rps is not None and math.isfinite(capacity_rps):
        layout["shapes"] = [{"type": "line", "xref": "x", "yref": "paper", "x0": capacity_rps,
                             "x1": capacity_rps, "y0": 0, "y1": 1,
                             "line": {"dash": "dash", "color": "black", "width": 1}}]
        layout["annotations"] = [{"x": capacity_rps, "xref": "x", "y": 1, "yref": "paper",
                                  "text": f"capacity {capacity_rps:.3g} req/s",
                                  "showarrow": False, "xanchor": "left", "yanchor": "bottom"}]
    return Figure(title, data, layout)


# -- pages ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def environment() -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters.update(secs=fmt_s, rate=fmt_rate, frac=fmt_frac)
    return env


_BOOT = """(function () {
  var el = document.getElementById("slobench-figures");
  var figs = JSON.parse(el.textContent);
  var config = JSON.parse(document.getElementById("slobench-config").textContent);
  figs.forEach(function (f) {
    Plotly.newPlot(f.id, f.data, f.layout, config);
  });
  document.body.setAttribute("data-plots-ready", String(figs.length));
})();"""


def render_page(template: str, *, title: str, figures: list[Figure] | None = None,
                **context: Any) -> str:
    """The page ``template`` (under report/templates/, extending base.html.j2) rendered with
    ``context``. The template places figure ``i`` in an element with id ``fig-<i>`` (the
    ``figure`` macro of macros.html.j2); base.html.j2 carries the figure data, plotly.js and the
    script that draws them, and the Content-Security-Policy allowing exactly those scripts."""
    figures = figures or []
    specs = [f.spec(f"fig-{i}") for i, f in enumerate(figures)]
    scripts = [plotly_js(), _BOOT] if figures else []
    hashes = " ".join([_plotly_js_hash(), _sha256(_BOOT)] if figures else ["'none'"])
    env = environment()
    from markupsafe import Markup

    return env.get_template(template).render(
        title=title, figures=figures, csp=_CSP.format(hashes=hashes),
        figures_json=Markup(script_json(specs)), config_json=Markup(script_json(PLOTLY_CONFIG)),
        scripts=[Markup(s) for s in scripts], **context)


def write_page(path: Path, page: str) -> Path:
    """Write atomically (a reader never sees half a page); UserError naming the path on failure."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise UserError(f"{path}: cannot write the report ({exc.strerror or exc}); choose a "
                        "writable location") from None
    return path


def write_figures_page(path: Path, title: str, figures: list[Figure], *,
                       intro: list[str] | None = None) -> Path:
    """A plain page: a title, paragraphs of text, the figures."""
    return write_page(path, render_page("figures.html.j2", title=title, figures=figures,
                                        intro=intro or []))
