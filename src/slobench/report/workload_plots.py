"""Figures of one workload (from ``workload.inspect.inspect_workload``'s dict): an HTML page that
works offline (plotly.js inlined once) and optional PNG files.

Figures, in page order (``FIGURE_TITLES``): request rate over time; rate over time by client
(stacked, top clients + rest); burstiness across time scales (CV of window counts against the
Poisson expectation, and the index of dispersion against Poisson's 1); token-length CDFs and
histograms (log x); client shares and application shares (requests and tokens).

PNG export uses plotly's own exporter (the optional ``kaleido`` package, which needs a Chrome or
Chromium); when that is missing, matplotlib draws simpler versions of the same figures if it is
installed; otherwise :func:`write_pngs` raises :class:`PngUnavailable` with what to install.
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slobench.errors import UserError

RATE = "Request rate over time"
RATE_BY_CLIENT = "Request rate over time by client"
BURST = "Burstiness across time scales"
LENGTH_CDF = "Token length CDFs"
LENGTH_HIST = "Token length histograms"
CLIENTS = "Client shares"
APPS = "Application shares"
FIGURE_TITLES = (RATE, RATE_BY_CLIENT, BURST, LENGTH_CDF, LENGTH_HIST, CLIENTS, APPS)

_LENGTH_FIELDS = (("input", "input tokens"), ("output", "output tokens"),
                  ("reasoning", "reasoning tokens (requests that reason)"))
_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")


class PngUnavailable(Exception):
    """No PNG exporter is installed; the message says what to install."""


def _plotly() -> Any:
    try:
        import plotly.graph_objects as go
    except ImportError:
        raise UserError("the HTML and PNG figures need plotly; install it with "
                        "'pip install plotly'") from None
    return go


def _time_axis(stats: dict[str, Any]) -> tuple[list[float], str, float]:
    """Bin start times in a readable unit (s, min or h), the unit, and its length in seconds."""
    rot = stats["rate_over_time"]
    span = stats.get("span_s") or 0.0
    unit, div = ("h", 3600.0) if span >= 4 * 3600 else ("min", 60.0) if span >= 600 else ("s", 1.0)
    x = [(rot["start_s"] + i * rot["bin_s"]) / div for i in range(len(rot["counts"]))]
    return x, unit, div


def _bin_label(w: float) -> str:
    if w >= 3600 and w % 3600 == 0:
        return f"{w / 3600:g} h"
    if w >= 60 and w % 60 == 0:
        return f"{w / 60:g} min"
    return f"{w:g} s"


def _layout(fig: Any, title: str, **kw: Any) -> Any:
    kw.setdefault("height", 420)
    fig.update_layout(title={"text": title, "x": 0.01}, template="plotly_white",
                      margin={"l": 60, "r": 20, "t": 60, "b": 50},
                      legend={"orientation": "h", "y": -0.2}, **kw)
    return fig


def figures(stats: dict[str, Any]) -> dict[str, Any]:
    """Title -> plotly Figure, for the figures the data supports (e.g. no by-client figure for
    a single-client workload)."""
    go = _plotly()
    from plotly.subplots import make_subplots

    out: dict[str, Any] = {}
    rot = stats["rate_over_time"]
    x, unit, div = _time_axis(stats)
    xc = [v + rot["bin_s"] / 2 / div for v in x]  # bin centres
    bins = _bin_label(rot["bin_s"])

    fig = go.Figure(go.Bar(x=xc, y=rot["rate_rps"], name="requests/s", marker_color=_COLORS[0],
                           hovertemplate="%{x:.4g} " + unit + ": %{y:.4g} req/s<extra></extra>"))
    if stats.get("mean_rate_rps"):
        fig.add_hline(y=stats["mean_rate_rps"], line_dash="dash", line_color="black",
                      annotation_text=f"mean {stats['mean_rate_rps']:.3g} req/s")
    out[RATE] = _layout(fig, f"{RATE} ({bins} bins)", bargap=0,
                        xaxis_title=f"time ({unit})", yaxis_title="requests/s")

    by_client = rot.get("by_client") or {}
    if len(by_client) > 1:
        fig = go.Figure()
        for i, (name, counts) in enumerate(by_client.items()):
            fig.add_trace(go.Scatter(x=xc, y=[c / rot["bin_s"] for c in counts], name=name,
                                     stackgroup="clients", mode="lines", line_width=0.5,
                                     line_color=_COLORS[i % len(_COLORS)]))
        out[RATE_BY_CLIENT] = _layout(fig, f"{RATE_BY_CLIENT} ({bins} bins, stacked)",
                                      xaxis_title=f"time ({unit})", yaxis_title="requests/s")

    scales = [s for s in stats["scales"] if s.get("dispersion") is not None]
    cv = (stats.get("interarrival") or {}).get("cv")
    if scales:
        fig = make_subplots(rows=1, cols=2, subplot_titles=(
            "CV of request counts per window", "Index of dispersion (variance / mean)"))
        ws = [s["window_s"] for s in scales]
        labels = [_bin_label(w) for w in ws]
        fig.add_trace(go.Scatter(x=ws, y=[s["cv"] for s in scales], mode="lines+markers",
                                 name="this workload", line_color=_COLORS[3], text=labels,
                                 legendgroup="w"), row=1, col=1)
        fig.add_trace(go.Scatter(x=ws, y=[s["poisson_cv"] for s in scales], mode="lines",
                                 name="Poisson at the same rate", line_dash="dash",
                                 line_color="gray", legendgroup="p"), row=1, col=1)
        fig.add_trace(go.Scatter(x=ws, y=[s["dispersion"] for s in scales], mode="lines+markers",
                                 name="this workload", line_color=_COLORS[3], text=labels,
                                 legendgroup="w", showlegend=False), row=1, col=2)
        fig.add_trace(go.Scatter(x=[ws[0], ws[-1]], y=[1.0, 1.0], mode="lines",
                                 name="Poisson at the same rate", line_dash="dash",
                                 line_color="gray", legendgroup="p", showlegend=False),
                      row=1, col=2)
        fig.update_xaxes(type="log", title_text="window length", tickvals=ws, ticktext=labels)
        fig.update_yaxes(type="log")
        title = BURST + (f" (inter-arrival CV {cv:.2f}; Poisson 1)" if cv is not None else "")
        out[BURST] = _layout(fig, title)
        fig.update_layout(margin_t=90)

    tokens = stats["tokens"]
    present = [(k, label) for k, label in _LENGTH_FIELDS
               if tokens.get(k) and tokens[k].get("count")]
    if present:
        fig = go.Figure()
        for i, (k, label) in enumerate(present):
            cdf = tokens[k]["cdf"]
            fig.add_trace(go.Scatter(x=[max(v, 0.5) for v in cdf["x"]], y=cdf["p"], name=label,
                                     mode="lines", line_shape="hv", line_color=_COLORS[i]))
        out[LENGTH_CDF] = _layout(fig, LENGTH_CDF, xaxis={"type": "log", "title": "tokens"},
                                  yaxis={"title": "fraction of requests", "range": [0, 1.02]})
        fig = go.Figure()
        for i, (k, label) in enumerate(present):
            h = tokens[k]["histogram"]
            edges = h["edges"]
            mids = [math.sqrt(max(a, 0.5) * b) for a, b in itertools.pairwise(edges)]
            widths = [b - a for a, b in itertools.pairwise(edges)]
            fig.add_trace(go.Bar(x=mids, y=h["counts"], width=widths, name=label, opacity=0.6,
                                 marker_color=_COLORS[i]))
        out[LENGTH_HIST] = _layout(fig, f"{LENGTH_HIST} (log-spaced bins)", barmode="overlay",
                                   xaxis={"type": "log", "title": "tokens"},
                                   yaxis={"title": "requests"})

    for key, title, what in (("clients", CLIENTS, "client"), ("apps", APPS, "app")):
        block = stats[key]
        names = [e["name"] for e in block["top"]]
        req = [e["share"] for e in block["top"]]
        tok = [e["token_share"] or 0.0 for e in block["top"]]
        if block.get("rest"):
            names.append(f"rest ({block['rest']['count']} {what}s)")
            req.append(block["rest"]["share"])
            tok.append(block["rest"]["token_share"] or 0.0)
        fig = go.Figure()
        fig.add_trace(go.Bar(y=names, x=req, orientation="h", name="share of requests",
                             marker_color=_COLORS[0], texttemplate="%{x:.1%}",
                             textposition="outside"))
        fig.add_trace(go.Bar(y=names, x=tok, orientation="h", name="share of tokens (in + out)",
                             marker_color=_COLORS[1], texttemplate="%{x:.1%}",
                             textposition="outside"))
        top_n = len(block["top"])
        sub = f" (top {top_n} of {block['distinct']})" if block.get("rest") else ""
        out[title] = _layout(fig, title + sub, barmode="group",
                             height=max(320, 60 + 44 * len(names)),
                             xaxis={"tickformat": ".0%", "title": "share"},
                             yaxis={"autorange": "reversed"})
    return out


def _summary_rows(stats: dict[str, Any]) -> list[tuple[str, str]]:
    def num(v: Any, f: str = ".4g") -> str:
        if v is None:
            return "–"
        return f"{v:,.0f}" if f == ".4g" and abs(v) >= 1000 else format(v, f)

    ia = stats.get("interarrival") or {}
    rows = [("requests", f"{stats['requests']:,}"), ("span", f"{num(stats['span_s'])} s"),
            ("mean rate", f"{num(stats.get('mean_rate_rps'))} req/s"),
            ("peak rate", f"{num(stats['rate_over_time'].get('peak_rps'))} req/s "
                          f"({_bin_label(stats['rate_over_time']['bin_s'])} bins)"),
            ("inter-arrival CV", num(ia.get("cv"), ".3f")),
            ("clients", str(stats["clients"]["distinct"])),
            ("apps", ", ".join(f"{e['name']} {e['share']:.1%}" for e in stats["apps"]["top"]))]
    for k in ("input", "output", "reasoning"):
        t = stats["tokens"].get(k)
        if t:
            label = f"{k} tokens" + (" (requests that reason: "
                                     f"{stats['tokens']['reasoning_share']:.1%})"
                                     if k == "reasoning" else "")
            rows.append((label, f"p50 {num(t['p50'])}, p90 {num(t['p90'])}, "
                                       f"p99 {num(t['p99'])}, max {num(t['max'])}, "
                                       f"mean {num(t['mean'])}"))
    if stats.get("sessions"):
        s = stats["sessions"]
        rows.append(("sessions", f"{s['sessions']:,} ({s['multi_turn_sessions']:,} multi-turn), "
                                 f"follow-ups {s['followup_share']:.1%}"))
    if stats.get("images"):
        im = stats["images"]
        rows.append(("images", f"{im['images']:,} in {im['share_with_images']:.1%} of requests"))
    if stats.get("prefix"):
        p = stats["prefix"]
        rows.append(("prefix reuse", f"first block seen before {p['first_block_reuse']:.1%}, "
                                     f"blocks seen before {p['block_reuse']:.1%}"))
    return rows


def write_html(stats: dict[str, Any], path: str | Path, *, source: str = "workload") -> Path:
    """One self-contained HTML page (plotly.js inlined once, so it works offline)."""
    figs = figures(stats)
    parts = []
    for i, fig in enumerate(figs.values()):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0),
                                 config={"displaylogo": False}))
    rows = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                     for k, v in _summary_rows(stats))
    title = f"Workload {html.escape(source)}"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th {{ text-align: left; padding: 2px 16px 2px 0; font-weight: 600; }}
td {{ padding: 2px 0; }}
.fig {{ margin-bottom: 1.5em; }}
</style></head>
<body>
<h1>{title}</h1>
<p>Made by <code>slobench workload inspect</code>. Poisson traffic has an inter-arrival CV of 1
and an index of dispersion of 1 at every time scale; larger values mean burstier traffic.</p>
<table>
{rows}
</table>
{"".join(f'<div class="fig">{p}</div>' for p in parts)}
</body></html>
"""
    path = Path(path)
    _write(path, page.encode("utf-8"))
    return path


def write_pngs(stats: dict[str, Any], directory: str | Path) -> list[Path]:
    """One PNG per figure in ``directory`` (created). Plotly + kaleido when they work, else
    matplotlib; raises PngUnavailable when neither can draw."""
    return pngs_with_fallback(stats, directory, _pngs_plotly, _pngs_matplotlib)


def pngs_with_fallback(data: Any, directory: str | Path,
                       *drawers: Callable[[Any, Path], list[Path]]) -> list[Path]:
    """Create ``directory`` and try each drawer in turn (each raises PngUnavailable when its
    library cannot draw); PngUnavailable with every reason when none can."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{directory}: cannot create the PNG directory ({exc})") from None
    reasons = []
    for draw in drawers:
        try:
            return draw(data, directory)
        except PngUnavailable as exc:
            reasons.append(str(exc))
    raise PngUnavailable("; ".join(reasons))


def _slug(title: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in title.lower()).strip("_")


def _pngs_plotly(stats: dict[str, Any], directory: Path) -> list[Path]:
    try:
        import kaleido  # noqa: F401
    except ImportError:
        raise PngUnavailable("plotly's PNG export needs kaleido ('pip install kaleido', and a "
                             "Chrome or Chromium)") from None
    import logging

    figs = figures(stats)
    paths = []
    # kaleido's browser driver logs harmless decoding noise (with tracebacks) on stderr.
    quiet = [logging.getLogger(name) for name in ("choreographer", "kaleido")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.CRITICAL)
    try:
        for title, fig in figs.items():
            path = directory / f"{_slug(title)}.png"
            try:
                fig.write_image(path, width=1100, height=fig.layout.height or 420, scale=1)
            except Exception as exc:  # kaleido reports a missing browser in many ways
                first = str(exc).splitlines()[0] if str(exc) else ""
                raise PngUnavailable(f"plotly's PNG export failed ({type(exc).__name__}: "
                                     f"{first})") from None
            paths.append(path)
    finally:
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)
    return paths


def pyplot() -> Any:
    """matplotlib's pyplot on the headless Agg backend, or PngUnavailable."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PngUnavailable("matplotlib is not installed either ('pip install matplotlib')"
                             ) from None
    return plt


def _pngs_matplotlib(stats: dict[str, Any], directory: Path) -> list[Path]:
    plt = pyplot()
    paths: list[Path] = []

    def save(fig: Any, title: str) -> None:
        fig.suptitle(title)
        fig.tight_layout()
        path = directory / f"{_slug(title)}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)

    rot = stats["rate_over_time"]
    x, unit, div = _time_axis(stats)
    fig, ax = plt.subplots(figsize=(11, 4.2))
    ax.bar(x, rot["rate_rps"], width=rot["bin_s"] / div, align="edge")
    ax.set_xlabel(f"time ({unit})")
    ax.set_ylabel("requests/s")
    save(fig, RATE)

    scales = [s for s in stats["scales"] if s.get("dispersion") is not None]
    if scales:
        ws = [s["window_s"] for s in scales]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
        a1.loglog(ws, [s["cv"] for s in scales], "o-", label="this workload")
        a1.loglog(ws, [s["poisson_cv"] for s in scales], "--", color="gray", label="Poisson")
        a1.set_title("CV of request counts per window")
        a2.loglog(ws, [s["dispersion"] for s in scales], "o-", label="this workload")
        a2.axhline(1.0, ls="--", color="gray", label="Poisson")
        a2.set_title("Index of dispersion")
        for a in (a1, a2):
            a.set_xlabel("window length (s)")
            a.legend()
        save(fig, BURST)

    fig, ax = plt.subplots(figsize=(11, 4.2))
    for k, label in _LENGTH_FIELDS:
        t = stats["tokens"].get(k)
        if t and t.get("count"):
            ax.step([max(v, 0.5) for v in t["cdf"]["x"]], t["cdf"]["p"], where="post",
                    label=label)
    ax.set_xscale("log")
    ax.set_xlabel("tokens")
    ax.set_ylabel("fraction of requests")
    ax.legend()
    save(fig, LENGTH_CDF)

    for key, title in (("clients", CLIENTS), ("apps", APPS)):
        block = stats[key]
        names = [e["name"] for e in block["top"]]
        req = [e["share"] for e in block["top"]]
        if block.get("rest"):
            names.append(f"rest ({block['rest']['count']})")
            req.append(block["rest"]["share"])
        fig, ax = plt.subplots(figsize=(11, max(3.0, 0.4 * len(names) + 1)))
        ax.barh(names[::-1], req[::-1])
        ax.set_xlabel("share of requests")
        save(fig, title)
    return paths


def _write(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as exc:
        raise UserError(f"{path}: cannot write the file ({exc})") from None
