"""Figures of a realism comparison (from ``workload.realism.compare_workloads``'s dict): an HTML
page that works offline and optional PNG files, following ``report/workload_plots.py``.

Figures (``FIGURE_TITLES``): request rate over time, both workloads overlaid on one bin width;
burstiness against the time scale (CV of window counts with each side's Poisson expectation, and
the index of dispersion against Poisson's 1); token length CDFs; client share curves (cumulative
share of requests of the k largest clients).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from slobench.report.workload_plots import (
    _COLORS,
    PngUnavailable,
    _bin_label,
    _layout,
    _plotly,
    _slug,
    _write,
    pngs_with_fallback,
    pyplot,
)

RATE = "Request rate over time"
BURST = "Burstiness across time scales"
LENGTH_CDF = "Token length CDFs"
CLIENTS = "Client share curves"
FIGURE_TITLES = (RATE, BURST, LENGTH_CDF, CLIENTS)
_SIDES = (("a", 0, "solid"), ("b", 1, "dash"))
_VERDICT_COLORS = {"close": "#2ca02c", "differs": "#ff7f0e", "far": "#d62728"}


def _time(report: dict[str, Any], side: str) -> tuple[list[float], str, float]:
    rate = report["series"]["rate"][side]
    span = max(report["a"]["span_s"] or 0.0, report["b"]["span_s"] or 0.0)
    unit, div = ("h", 3600.0) if span >= 4 * 3600 else ("min", 60.0) if span >= 600 else ("s", 1.0)
    x = [(rate["start_s"] + (i + 0.5) * rate["bin_s"]) / div for i in range(len(rate["rate_rps"]))]
    return x, unit, div


def figures(report: dict[str, Any]) -> dict[str, Any]:
    """Title -> plotly Figure."""
    go = _plotly()
    from plotly.subplots import make_subplots

    names = report["names"]
    series = report["series"]
    out: dict[str, Any] = {}

    fig = go.Figure()
    unit = "s"
    for side, i, dash in _SIDES:
        x, unit, _ = _time(report, side)
        fig.add_trace(go.Scatter(x=x, y=series["rate"][side]["rate_rps"], name=names[i],
                                 mode="lines", line={"color": _COLORS[i], "dash": dash}))
    bins = _bin_label(series["rate"]["a"]["bin_s"])
    out[RATE] = _layout(fig, f"{RATE} ({bins} bins)", xaxis_title=f"time ({unit})",
                        yaxis_title="requests/s")

    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        "CV of request counts per window", "Index of dispersion (variance / mean)"))
    ws_all: list[float] = []
    for side, i, dash in _SIDES:
        rows = series["scales"][side]
        ws = [s["window_s"] for s in rows]
        ws_all += ws
        line = {"color": _COLORS[i], "dash": dash}
        fig.add_trace(go.Scatter(x=ws, y=[s["cv"] for s in rows], mode="lines+markers",
                                 name=names[i], line=line, legendgroup=side), row=1, col=1)
        fig.add_trace(go.Scatter(x=ws, y=[s["poisson_cv"] for s in rows], mode="lines",
                                 name=f"Poisson at {names[i]}'s rate", legendgroup=f"p{side}",
                                 line={"color": _COLORS[i], "dash": "dot", "width": 1}),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=ws, y=[s["dispersion"] for s in rows], mode="lines+markers",
                                 name=names[i], line=line, legendgroup=side, showlegend=False),
                      row=1, col=2)
    if ws_all:
        fig.add_trace(go.Scatter(x=[min(ws_all), max(ws_all)], y=[1.0, 1.0], mode="lines",
                                 name="Poisson (1)", line={"color": "gray", "dash": "dot"}),
                      row=1, col=2)
        ticks = sorted(set(ws_all))
        fig.update_xaxes(type="log", title_text="window length", tickvals=ticks,
                         ticktext=[_bin_label(w) for w in ticks])
    fig.update_yaxes(type="log")
    out[BURST] = _layout(fig, BURST)
    fig.update_layout(margin_t=90)

    fields = [f for f in ("input", "output", "reasoning")
              if f in series["lengths"]["a"] or f in series["lengths"]["b"]]
    fig = make_subplots(rows=1, cols=len(fields), subplot_titles=[f"{f} tokens" for f in fields])
    for col, f in enumerate(fields, start=1):
        for side, i, dash in _SIDES:
            cdf = series["lengths"][side].get(f)
            if not cdf:
                continue
            fig.add_trace(go.Scatter(x=[max(v, 0.5) for v in cdf["x"]], y=cdf["p"], name=names[i],
                                     mode="lines", line_shape="hv", legendgroup=side,
                                     showlegend=col == 1,
                                     line={"color": _COLORS[i], "dash": dash}), row=1, col=col)
    fig.update_xaxes(type="log", title_text="tokens")
    fig.update_yaxes(range=[0, 1.02])
    out[LENGTH_CDF] = _layout(fig, LENGTH_CDF, yaxis_title="fraction of requests")

    fig = go.Figure()
    for side, i, dash in _SIDES:
        cum = series["clients"][side]
        fig.add_trace(go.Scatter(x=list(range(1, len(cum) + 1)), y=cum, name=names[i],
                                 mode="lines+markers", line_shape="hv",
                                 line={"color": _COLORS[i], "dash": dash}))
    out[CLIENTS] = _layout(fig, f"{CLIENTS} (cumulative share of requests, largest first)",
                           xaxis={"type": "log", "title": "k largest clients"},
                           yaxis={"title": "share of requests", "tickformat": ".0%",
                                  "range": [0, 1.02]})
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_html(report: dict[str, Any], path: str | Path) -> Path:
    """One self-contained page: the statistics table, the summary and every figure."""
    figs = figures(report)
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0),
                         config={"displaylogo": False}) for i, fig in enumerate(figs.values())]
    names = [html.escape(n) for n in report["names"]]
    rows = []
    for s in report["statistics"]:
        color = _VERDICT_COLORS.get(s["verdict"], "#777")
        rows.append(
            f"<tr><td>{html.escape(s['label'])}</td><td>{_fmt(s['a'])}</td>"
            f"<td>{_fmt(s['b'])}</td><td>{html.escape(s['measure'])} {_fmt(s['distance'])}</td>"
            f"<td>≤ {s['close']:g} / ≤ {s['far']:g}</td>"
            f"<td style='color:{color};font-weight:600'>{s['verdict']}</td></tr>")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{names[0]} vs {names[1]}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ text-align: right; padding: 2px 10px; }}
td:first-child, th:first-child {{ text-align: left; }}
.fig {{ margin-bottom: 1.5em; }}
</style></head>
<body>
<h1>Realism: {names[0]} vs {names[1]}</h1>
<p>Made by <code>slobench workload compare</code>; {names[1]} is the reference. Each statistic is
close when its distance is at most the first threshold, far above the second (docs/realism.md).
</p>
<p><b>{html.escape(report["summary"])}</b></p>
<table>
<tr><th>statistic</th><th>{names[0]}</th><th>{names[1]}</th><th>distance</th>
<th>close / differs</th><th>verdict</th></tr>
{"".join(rows)}
</table>
{"".join(f'<div class="fig">{p}</div>' for p in parts)}
</body></html>
"""
    path = Path(path)
    _write(path, page.encode("utf-8"))
    return path


def write_pngs(report: dict[str, Any], directory: str | Path) -> list[Path]:
    """One PNG per figure in ``directory`` with plotly + kaleido; else matplotlib; else raises
    PngUnavailable naming what to install."""
    return pngs_with_fallback(report, directory, _pngs_plotly, _pngs_matplotlib)


def _pngs_plotly(report: dict[str, Any], directory: Path) -> list[Path]:
    try:
        import kaleido  # noqa: F401
    except ImportError:
        raise PngUnavailable("plotly's PNG export needs kaleido ('pip install kaleido', and a "
                             "Chrome or Chromium)") from None
    import logging

    paths: list[Path] = []
    # kaleido's browser driver logs harmless decoding noise (with tracebacks) on stderr.
    quiet = [logging.getLogger(name) for name in ("choreographer", "kaleido")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.CRITICAL)
    try:
        import plotly.io as pio

        figs = figures(report)
        paths = [directory / f"{_slug(title)}.png" for title in figs]
        heights = [fig.layout.height or 420 for fig in figs.values()]
        try:
            if hasattr(pio, "write_images"):  # one browser session for all figures: faster
                pio.write_images(list(figs.values()), paths, width=1100, height=heights,
                                 scale=1)
            else:
                for fig, path, h in zip(figs.values(), paths, heights, strict=True):
                    fig.write_image(path, width=1100, height=h, scale=1)
        except Exception as exc:  # kaleido reports a missing browser in many ways
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise PngUnavailable(f"plotly's PNG export failed ({type(exc).__name__}: "
                                 f"{first})") from None
    finally:
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)
    return paths


def _pngs_matplotlib(report: dict[str, Any], directory: Path) -> list[Path]:
    plt = pyplot()
    names, series = report["names"], report["series"]
    paths: list[Path] = []

    def save(fig: Any, title: str) -> None:
        fig.suptitle(title)
        fig.tight_layout()
        path = directory / f"{_slug(title)}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)

    fig, ax = plt.subplots(figsize=(11, 4.2))
    for side, i, dash in _SIDES:
        x, unit, _ = _time(report, side)
        ax.plot(x, series["rate"][side]["rate_rps"], ls="-" if dash == "solid" else "--",
                label=names[i])
        ax.set_xlabel(f"time ({unit})")
    ax.set_ylabel("requests/s")
    ax.legend()
    save(fig, RATE)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for side, i, _ in _SIDES:
        rows = series["scales"][side]
        ws = [s["window_s"] for s in rows]
        if ws:
            a1.loglog(ws, [s["cv"] for s in rows], "o-", label=names[i])
            a2.loglog(ws, [s["dispersion"] for s in rows], "o-", label=names[i])
    a2.axhline(1.0, ls="--", color="gray", label="Poisson")
    a1.set_title("CV of request counts per window")
    a2.set_title("Index of dispersion")
    for a in (a1, a2):
        a.set_xlabel("window length (s)")
        a.legend()
    save(fig, BURST)

    fields = [f for f in ("input", "output", "reasoning")
              if f in series["lengths"]["a"] or f in series["lengths"]["b"]]
    fig, axes = plt.subplots(1, len(fields), figsize=(11, 4.2), squeeze=False)
    for ax, f in zip(axes[0], fields, strict=True):
        for side, i, dash in _SIDES:
            cdf = series["lengths"][side].get(f)
            if cdf:
                ax.step([max(v, 0.5) for v in cdf["x"]], cdf["p"], where="post", label=names[i],
                        ls="-" if dash == "solid" else "--")
        ax.set_xscale("log")
        ax.set_title(f"{f} tokens")
        ax.legend()
    save(fig, LENGTH_CDF)

    fig, ax = plt.subplots(figsize=(11, 4.2))
    for side, i, _ in _SIDES:
        cum = series["clients"][side]
        ax.step(range(1, len(cum) + 1), cum, where="post", label=names[i])
    ax.set_xscale("log")
    ax.set_xlabel("k largest clients")
    ax.set_ylabel("share of requests")
    ax.legend()
    save(fig, CLIENTS)
    return paths
