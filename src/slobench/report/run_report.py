"""HTML reports: ``report.html`` of one run, and a page comparing runs side by side.

Both are single self-contained files (see ``report/html.py``): plotly.js inlined once, no network
when they open, every string from a server or a dataset escaped. Tables are computed from every
request; plots are thinned for large runs (at most ``MAX_ECDF_POINTS`` points per distribution
curve, ``MAX_SCATTER_POINTS`` per scatter, ``MAX_BINS`` time bins), and the page says so.

See docs/reports.md.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from slobench import __version__
from slobench.report.html import (
    COLORS,
    Figure,
    ecdf_points,
    goodput_load_figure,
    render_page,
    rounded,
    text,
    thin,
    write_page,
)
from slobench.report.terminal import fmt_frac, fmt_rate, fmt_s, health_text
from slobench.slo.fidelity import fidelity_warnings
from slobench.slo.metrics import Derived, check_slos, derive
from slobench.slo.stats import percentiles

REPORT = "report.html"
MAX_ECDF_POINTS = 2000
MAX_SCATTER_POINTS = 5000
MAX_BINS = 200
MAX_ERROR_ROWS = 20
MAX_CLIENT_ROWS = 25
DIST_METRICS = (("ttft", "TTFT"), ("tpot", "TPOT"), ("e2e", "E2E"))
TABLE_METRICS = (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2e", "E2E"))


# -- loading -------------------------------------------------------------------------------------


@dataclass
class RunView:
    """One run, loaded once for its report: the analysis (summary, health, SLOs) and the
    per-request arrays every figure draws from (indexed like the Records rows)."""

    analysis: Any  # slobench.benchmark.Analysis
    d: Derived
    met: np.ndarray  # bool: met every constraint of its class
    apps: np.ndarray  # object
    clients: np.ndarray  # object
    status: np.ndarray  # object
    done: np.ndarray  # float: done_s (NaN when never done)
    in_window: np.ndarray  # bool: counted by the summary
    records: pa.Table

    @property
    def run_id(self) -> str:
        return str(self.analysis.run.run_id)

    @property
    def summary(self) -> dict[str, Any]:
        return self.analysis.summary

    @property
    def manifest(self) -> dict[str, Any]:
        return self.analysis.manifest

    @property
    def span_s(self) -> float:
        ends = np.r_[self.d.scheduled, self.done, self.summary.get("window") or [0.0, 0.0]]
        ends = ends[np.isfinite(ends)]
        return float(ends.max()) if ends.size else 0.0

    def classes(self) -> list[str]:
        return sorted((self.summary.get("classes") or {}).keys())


def _objects(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(pc.fill_null(table.column(name).cast(pa.string()), "").to_numpy(
        zero_copy_only=False), dtype=object)


def load_run(run_dir: Path, *, analysis: Any = None, slo: str | None = None) -> RunView:
    """A run's files, analysed (``slobench.benchmark.analyze`` unless ``analysis`` is given)."""
    if analysis is None:
        from slobench.benchmark import analyze

        analysis = analyze(Path(run_dir), slo=slo)
    records, _, _ = analysis.run.load_records()
    d = derive(records)
    met = check_slos(d, records, analysis.slos).met
    done = np.asarray(pc.fill_null(records.column("done_s").cast(pa.float64()), np.nan)
                      .to_numpy(), dtype=np.float64)
    a, b = (analysis.summary.get("window") or [-math.inf, math.inf])
    in_window = (d.scheduled >= a) & (d.scheduled < b)
    return RunView(analysis=analysis, d=d, met=met, apps=_objects(records, "app"),
                   clients=_objects(records, "client_id"), status=_objects(records, "status"),
                   done=done, in_window=in_window, records=records)


# -- small helpers -------------------------------------------------------------------------------


def _nice(x: float) -> float:
    """The smallest of 1, 2, 5 x 10^k at or above ``x``."""
    if not (x > 0 and math.isfinite(x)):
        return 1.0
    exp = math.floor(math.log10(x))
    for m in (1, 2, 5, 10):
        if m * 10 ** exp >= x * (1 - 1e-12):
            return float(m * 10 ** exp)
    return float(10 ** (exp + 1))


def _time_unit(span_s: float) -> tuple[str, float]:
    return ("h", 3600.0) if span_s >= 4 * 3600 else ("min", 60.0) if span_s >= 600 else ("s", 1.0)


@dataclass
class _Bins:
    edges: np.ndarray
    width: float
    unit: str
    div: float

    @classmethod
    def over(cls, span_s: float, n_requests: int) -> _Bins:
        """Bins over [0, span_s]: about five requests per bin, 10 to MAX_BINS bins."""
        target = min(max(n_requests / 5, 10), MAX_BINS)
        width = _nice(max(span_s, 1e-3) / target)
        n = max(1, math.ceil(max(span_s, 1e-3) / width))
        unit, div = _time_unit(span_s)
        return cls(np.arange(n + 1) * width, width, unit, div)

    @property
    def centres(self) -> list[Any]:
        return rounded((self.edges[:-1] + self.width / 2) / self.div, 6)

    def rate(self, times: np.ndarray, weights: np.ndarray | None = None) -> list[Any]:
        t = np.asarray(times, dtype=np.float64)
        keep = np.isfinite(t)
        w = None if weights is None else np.asarray(weights, dtype=np.float64)[keep]
        counts, _ = np.histogram(t[keep], bins=self.edges, weights=w)
        return rounded(counts / self.width)

    def quantiles(self, times: np.ndarray, values: np.ndarray,
                  qs: tuple[float, ...]) -> list[list[Any]]:
        """Per bin (by ``times``), the ``qs`` percentiles of ``values`` (None where empty)."""
        keep = np.isfinite(times) & np.isfinite(values)
        t, v = times[keep], values[keep]
        idx = np.clip(np.searchsorted(self.edges, t, side="right") - 1, 0, len(self.edges) - 2)
        order = np.argsort(idx, kind="stable")
        idx, v = idx[order], v[order]
        starts = np.searchsorted(idx, np.arange(len(self.edges) - 1), side="left")
        ends = np.searchsorted(idx, np.arange(len(self.edges) - 1), side="right")
        out = np.full((len(qs), len(starts)), np.nan)
        for i, (s, e) in enumerate(zip(starts, ends, strict=True)):
            if e > s:
                out[:, i] = np.percentile(v[s:e], qs)
        return [rounded(row) for row in out]


def _window_shapes(view: RunView, div: float) -> list[dict[str, Any]]:
    """Grey bands over the warm-up and cool-down the summary leaves out."""
    a, b = view.summary.get("window") or [0.0, 0.0]
    end = view.span_s
    shapes = []
    for x0, x1 in ((0.0, a), (b, end)):
        if x1 > x0:
            shapes.append({"type": "rect", "xref": "x", "yref": "paper", "x0": x0 / div,
                           "x1": x1 / div, "y0": 0, "y1": 1, "fillcolor": "#888",
                           "opacity": 0.12, "line": {"width": 0}, "layer": "below"})
    return shapes


def _log_axis(values: np.ndarray) -> bool:
    v = values[np.isfinite(values)]
    return bool(v.size) and float(v.min()) > 0 and float(v.max()) / float(v.min()) >= 20


def _seconds_axis(title: str, log: bool) -> dict[str, Any]:
    if not log:
        return {"title": {"text": title}, "type": "linear"}
    return {"title": {"text": f"{title}, log scale"}, "type": "log", "dtick": "D2"}


def _color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def _limits(view: RunView, metric: str) -> dict[str, float]:
    out = {}
    for app in view.classes():
        for c in view.analysis.slos.for_app(app).constraints:
            if c.metric == metric:
                out[app] = c.limit_s
    return out


# -- figures of one run --------------------------------------------------------------------------


def _distribution_figure(view: RunView, metric: str, label: str) -> Figure | None:
    values = getattr(view.d, metric)
    rows = view.in_window & np.isfinite(values)
    if not rows.any():
        return None
    data: list[dict[str, Any]] = []
    classes = view.classes()
    limits = _limits(view, metric)
    for i, app in enumerate(classes):
        sel = values[rows & (view.apps == app)]
        if not sel.size:
            continue
        x, p = ecdf_points(sel, MAX_ECDF_POINTS)
        data.append({"type": "scatter", "mode": "lines", "line": {"shape": "hv",
                                                                   "color": _color(i)},
                     "name": text(f"{app} (n={sel.size:,})"), "legendgroup": text(app),
                     "x": rounded(x), "y": rounded(p),
                     "hovertemplate": "%{x:.4~g} s: %{y:.2%} of requests<extra>"
                                      + text(app) + "</extra>"})
        if app in limits:
            lim = limits[app]
            data.append({"type": "scatter", "mode": "lines", "x": [lim, lim], "y": [0, 1],
                         "name": text(f"{app} SLO {metric}<={fmt_s(lim)}"),
                         "legendgroup": text(app), "hoverinfo": "name",
                         "line": {"color": _color(i), "dash": "dot", "width": 1}})
    if len(classes) > 1:
        x, p = ecdf_points(values[rows], MAX_ECDF_POINTS)
        data.append({"type": "scatter", "mode": "lines", "name": f"all (n={int(rows.sum()):,})",
                     "x": rounded(x), "y": rounded(p),
                     "line": {"shape": "hv", "color": "black", "dash": "dash", "width": 1.5},
                     "hovertemplate": "%{x:.4~g} s: %{y:.2%} of requests<extra>all</extra>"})
    # SLO limits far beyond the data would squash the curves on a linear axis
    log = _log_axis(np.r_[values[rows], list(limits.values())])
    return Figure(f"{label} distribution per class (ECDF)", data, {
        "xaxis": _seconds_axis(f"{label} (s)", log),
        "yaxis": {"title": {"text": "fraction of requests at or below"}, "range": [0, 1.02],
                  "tickformat": ".0%"}})


def _latency_over_time(view: RunView, bins: _Bins) -> Figure | None:
    d = view.d
    if not (np.isfinite(d.ttft).any() or np.isfinite(d.e2e).any()):
        return None
    data: list[dict[str, Any]] = []
    keep = thin(d.scheduled, d.ttft, MAX_SCATTER_POINTS)
    if keep.size:
        data.append({"type": "scatter", "mode": "markers", "name": "TTFT (a request)",
                     "x": rounded(d.scheduled[keep] / bins.div, 6), "y": rounded(d.ttft[keep]),
                     "text": [text(a) for a in view.apps[keep]],
                     "marker": {"size": 3, "color": COLORS[0], "opacity": 0.35},
                     "hovertemplate": "sent at %{x:.4~g}: TTFT %{y:.4~g} s<br>%{text}"
                                      "<extra></extra>"})
    for metric, label, color in (("ttft", "TTFT", COLORS[0]), ("e2e", "E2E", COLORS[1])):
        p50, p99 = bins.quantiles(d.scheduled, getattr(d, metric), (50, 99))
        for q, ys, dash in (("p50", p50, "solid"), ("p99", p99, "dash")):
            data.append({"type": "scatter", "mode": "lines+markers", "name": f"{label} {q}",
                         "x": bins.centres, "y": ys, "connectgaps": False,
                         "line": {"color": color, "dash": dash, "width": 2},
                         "marker": {"size": 3, "color": color},
                         "hovertemplate": f"%{{x:.4~g}} {bins.unit}: {label} {q} "
                                          "%{y:.4~g} s<extra></extra>"})
    log = _log_axis(np.r_[d.ttft, d.e2e])
    return Figure("Latency over time", data, {
        "xaxis": {"title": {"text": f"scheduled time ({bins.unit})"}},
        "yaxis": _seconds_axis("seconds", log),
        "shapes": _window_shapes(view, bins.div)},
        note=f"Percentiles per {fmt_s(bins.width)} bin of scheduled time; grey: outside the "
             "summary window (warm-up, cool-down).")


def _throughput_over_time(view: RunView, bins: _Bins) -> Figure:
    d = view.d
    ok = d.ok
    # Output tokens when they arrived (streamed); at completion for non-streamed answers.
    tok_ok = ok[d.token_index] if d.token_index.size else np.zeros(0, dtype=bool)
    streamed_tokens = d.token_times[tok_ok]
    unstreamed = ok & (d.n_token_times == 0)
    out_rate = np.asarray(bins.rate(streamed_tokens), dtype=float) + np.asarray(
        bins.rate(view.done[unstreamed], d.output_tokens[unstreamed]), dtype=float)
    data: list[dict[str, Any]] = [
        {"type": "scatter", "mode": "lines", "name": "offered (scheduled/s)",
         "x": bins.centres, "y": bins.rate(d.scheduled),
         "line": {"color": "#999", "dash": "dot", "shape": "hvh"}},
        {"type": "scatter", "mode": "lines", "name": "completed ok (req/s)",
         "x": bins.centres, "y": bins.rate(view.done[ok]),
         "line": {"color": COLORS[0], "shape": "hvh"}},
        {"type": "scatter", "mode": "lines", "name": "meeting the SLO (req/s)",
         "x": bins.centres, "y": bins.rate(view.done[view.met]),
         "line": {"color": COLORS[2], "shape": "hvh"}},
    ]
    failed = ~ok & np.isfinite(view.done)
    if failed.any():
        data.append({"type": "scatter", "mode": "lines", "name": "failed (req/s)",
                     "x": bins.centres, "y": bins.rate(view.done[failed]),
                     "line": {"color": COLORS[3], "shape": "hvh"}})
    data.append({"type": "scatter", "mode": "lines", "name": "output tokens/s", "yaxis": "y2",
                 "x": bins.centres, "y": rounded(out_rate),
                 "line": {"color": COLORS[1], "width": 1, "shape": "hvh"}})
    return Figure("Throughput over time", data, {
        "hovermode": "x", "hoverdistance": -1,
        "xaxis": {"title": {"text": f"time ({bins.unit})"}},
        "yaxis": {"title": {"text": "requests/s"}, "rangemode": "tozero"},
        "yaxis2": {"title": {"text": "output tokens/s"}, "overlaying": "y", "side": "right",
                   "rangemode": "tozero", "showgrid": False, "tickmode": "auto"},
        "shapes": _window_shapes(view, bins.div)},
        note=f"{fmt_s(bins.width)} bins; requests counted when they completed, tokens when "
             "they arrived.")


def _attainment_figure(view: RunView) -> Figure | None:
    classes = view.summary.get("classes") or {}
    if not classes:
        return None
    names = sorted(classes)
    blocks = [classes[a] for a in names]
    overall = view.summary.get("overall") or {}
    if len(names) > 1:
        names.append("all")
        blocks.append(overall)
    x = [text(n) for n in names]
    att = [(b.get("slo") or {}).get("attainment") for b in blocks]
    target = [(b.get("slo") or {}).get("target") for b in blocks]
    passed = [(b.get("slo") or {}).get("passed") for b in blocks]
    colors = ["#2ca02c" if p else "#d62728" for p in passed]
    hover = [f"{fmt_frac(a)} met (target {fmt_frac(t)}); goodput "
             f"{fmt_rate(b.get('goodput_rps'), ' req/s')} of {b.get('requests', 0):,} requests"
             for a, t, b in zip(att, target, blocks, strict=True)]
    data: list[dict[str, Any]] = [
        {"type": "bar", "name": "attainment", "x": x, "y": rounded(att),
         "marker": {"color": colors}, "text": [fmt_frac(a) for a in att],
         "textposition": "outside", "hovertext": hover, "hoverinfo": "x+text",
         "hovertemplate": "%{x}: %{hovertext}<extra></extra>"},
        {"type": "scatter", "mode": "markers", "name": "target", "x": x, "y": rounded(target),
         "marker": {"symbol": "line-ew-open", "size": 44, "color": "black",
                    "line": {"width": 3}},
         "hovertemplate": "%{x}: target %{y:.1%}<extra></extra>"},
    ]
    return Figure("SLO attainment per class", data, {
        "yaxis": {"title": {"text": "requests meeting their SLO"}, "range": [0, 1.12],
                  "tickformat": ".0%"},
        "xaxis": {"type": "category"}, "bargap": 0.4, "showlegend": True},
        note="Green: the class met its attainment target (black bar); red: it did not.",
        height=380)


def _send_lag_figures(view: RunView, bins: _Bins) -> tuple[list[Figure], str | None]:
    health = view.analysis.health or {}
    if health.get("simulated"):
        return [], "Send lag: none in a simulated run (no client; the run is valid by " \
                   "construction)."
    lag = view.d.send_lag
    if not np.isfinite(lag).any():
        return [], "Send lag: no request was sent, so there is nothing to plot."
    thr = ((health.get("thresholds") or {}).get("send_lag_p99_s"))
    lag_ms = lag * 1e3
    p50, p99, pmax = bins.quantiles(view.d.scheduled, lag_ms, (50, 99, 100))
    data: list[dict[str, Any]] = [
        {"type": "scatter", "mode": "lines", "name": name, "x": bins.centres, "y": ys,
         "line": {"color": color, "dash": dash, "shape": "hvh"},
         "hovertemplate": f"%{{x:.4~g}} {bins.unit}: {name} %{{y:.3~g}} ms<extra></extra>"}
        for name, ys, color, dash in (("p50", p50, COLORS[0], "solid"),
                                      ("p99", p99, COLORS[3], "solid"),
                                      ("max", pmax, "#999", "dot"))]
    shapes = _window_shapes(view, bins.div)
    if thr:
        shapes.append({"type": "line", "xref": "paper", "yref": "y", "x0": 0, "x1": 1,
                       "y0": thr * 1e3, "y1": thr * 1e3,
                       "line": {"color": "black", "dash": "dash", "width": 1}})
    over_time = Figure("Send lag over time", data, {
        "xaxis": {"title": {"text": f"scheduled time ({bins.unit})"}},
        "yaxis": {"title": {"text": "send lag (ms)"}, "rangemode": "tozero"},
        "shapes": shapes},
        note="Send lag: how late the client sent each request against its schedule (the "
             "load generator's health, not the server's). Dashed: the p99 threshold of a "
             "valid run." if thr else None)
    x, p = ecdf_points(lag_ms, MAX_ECDF_POINTS)
    dist_data: list[dict[str, Any]] = [
        {"type": "scatter", "mode": "lines", "name": "send lag", "x": rounded(x),
         "y": rounded(p), "line": {"shape": "hv", "color": COLORS[0]},
         "hovertemplate": "%{x:.3~g} ms: %{y:.2%} of requests<extra></extra>"}]
    if thr:
        dist_data.append({"type": "scatter", "mode": "lines", "name": "p99 threshold",
                          "x": [thr * 1e3, thr * 1e3], "y": [0, 1], "hoverinfo": "name",
                          "line": {"color": "black", "dash": "dash", "width": 1}})
    distribution = Figure("Send lag distribution (ECDF)", dist_data, {
        "xaxis": {"title": {"text": "send lag (ms)"}},
        "yaxis": {"title": {"text": "fraction of requests"}, "range": [0, 1.02],
                  "tickformat": ".0%"}}, height=360)
    return [over_time, distribution], None


def _error_figure(view: RunView) -> Figure | None:
    failed = view.in_window & ~view.d.ok
    if not failed.any():
        return None
    classes = view.classes()
    kinds = Counter(view.status[failed].tolist())
    most = max(int((failed & (view.apps == app)).sum()) for app in classes)
    data = []
    for i, (kind, _) in enumerate(kinds.most_common()):
        sel = failed & (view.status == kind)
        counts = [int((sel & (view.apps == app)).sum()) for app in classes]
        data.append({"type": "bar", "name": text(kind), "x": [text(a) for a in classes],
                     "y": counts, "marker": {"color": COLORS[(i + 3) % len(COLORS)]},
                     "hovertemplate": "%{x}: %{y} " + text(kind) + "<extra></extra>"})
    return Figure("Errors per class", data, {
        "barmode": "stack", "xaxis": {"type": "category"},
        "yaxis": {"title": {"text": "failed requests"}, "dtick": max(1.0, _nice(most / 6)),
                  "tickformat": ",~g"}, "showlegend": True},
        note="Requests in the summary window that did not complete ok, by status.", height=340)


def run_figures(view: RunView) -> tuple[list[Figure], list[str]]:
    """The figures of a run's report, in page order, and notes on those left out."""
    figs: list[Figure] = []
    notes: list[str] = []
    for metric, label in DIST_METRICS:
        fig = _distribution_figure(view, metric, label)
        if fig is None:
            notes.append(f"{label}: no request in the window has one (failed, not streamed, or "
                         "a single output token), so there is no distribution to draw.")
        else:
            figs.append(fig)
    bins = _Bins.over(view.span_s, view.records.num_rows)
    lat = _latency_over_time(view, bins)
    if lat is not None:
        figs.append(lat)
    figs.append(_throughput_over_time(view, bins))
    att = _attainment_figure(view)
    if att is not None:
        figs.append(att)
    lag, note = _send_lag_figures(view, bins)
    figs += lag
    if note:
        notes.append(note)
    err = _error_figure(view)
    if err is not None:
        figs.append(err)
    return figs, notes


# -- tables of one run ---------------------------------------------------------------------------


def _lat(block: dict[str, Any], metric: str, q: str) -> str:
    return fmt_s(((block.get("latency") or {}).get(metric) or {}).get(q))


def _summary_row(name: str, block: dict[str, Any], *, overall: bool = False) -> dict[str, Any]:
    slo = block.get("slo") or {}
    thr = block.get("throughput") or {}
    passed = slo.get("passed")
    return {
        "name": name, "overall": overall, "requests": f"{block.get('requests', 0):,}",
        "ok": f"{block.get('ok', 0):,}", "errors": f"{sum((block.get('errors') or {}).values()):,}",
        "attainment": fmt_frac(slo.get("attainment")),
        "att_class": "pass" if passed else "fail" if passed is not None else "",
        "target": fmt_frac(slo.get("target")),
        "goodput": fmt_rate(block.get("goodput_rps"), " req/s"),
        "rps": fmt_rate(thr.get("requests_per_s"), " req/s"),
        "in_tps": fmt_rate(thr.get("input_tokens_per_s"), ""),
        "out_tps": fmt_rate(thr.get("output_tokens_per_s"), ""),
        "latency": [_lat(block, m, q) for m, _ in TABLE_METRICS for q in ("p50", "p90", "p99")],
    }


def _error_rows(view: RunView) -> tuple[list[dict[str, Any]], str | None]:
    failed = np.flatnonzero(view.in_window & ~view.d.ok)
    if not failed.size:
        return [], None
    msgs = _objects(view.records, "error")[failed]
    http = view.records.column("http_status").to_pylist() if "http_status" in \
        view.records.column_names else [None] * view.records.num_rows
    groups: dict[tuple[str, str, str], list[str]] = {}
    for i, msg in zip(failed.tolist(), msgs.tolist(), strict=True):
        key = (str(view.status[i]), "" if http[i] is None else str(http[i]), str(msg)[:300])
        groups.setdefault(key, []).append(str(view.apps[i]))
    ranked = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    rows = [{"status": s, "http": h or "–", "message": m or "–", "count": f"{len(apps):,}",
             "apps": ", ".join(sorted(set(apps))[:5]) + (" …" if len(set(apps)) > 5 else "")}
            for (s, h, m), apps in ranked[:MAX_ERROR_ROWS]]
    note = (f"The {MAX_ERROR_ROWS} most frequent of {len(ranked)} distinct errors; messages cut "
            "at 300 characters.") if len(ranked) > MAX_ERROR_ROWS else None
    return rows, note


def _client_rows(view: RunView) -> tuple[list[dict[str, Any]], str | None]:
    rows_mask = view.in_window
    if not rows_mask.any():
        return [], None
    clients = view.clients[rows_mask]
    counts = Counter(clients.tolist())
    out = []
    for client, n in counts.most_common(MAX_CLIENT_ROWS):
        sel = rows_mask & (view.clients == client)
        ttft = percentiles(view.d.ttft[sel], (50, 99))
        e2e = percentiles(view.d.e2e[sel], (99,))
        out.append({"client": client or "–", "requests": f"{n:,}",
                    "errors": f"{int((sel & ~view.d.ok).sum()):,}",
                    "attainment": fmt_frac(float(view.met[sel].mean())),
                    "ttft_p50": fmt_s(ttft["p50"]), "ttft_p99": fmt_s(ttft["p99"]),
                    "e2e_p99": fmt_s(e2e["p99"])})
    note = (f"The {MAX_CLIENT_ROWS} busiest of {len(counts):,} clients."
            if len(counts) > MAX_CLIENT_ROWS else None)
    return out, note


def _target_text(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    target = manifest.get("target") or {}
    config = manifest.get("config") or {}
    rows: list[tuple[str, str]] = []
    if target.get("kind") == "simulation":
        engine = config.get("engine") or {}
        rows.append(("target", f"simulation in virtual time ({target.get('replicas', 1)} "
                               f"replica(s), router {target.get('router', '–')})"))
        rows.append(("model", str(target.get("model", "–"))))
        rows.append(("engine", f"{engine.get('model', '–')} on {engine.get('tp', 1)}× "
                               f"{engine.get('gpu', '–')}" if engine else "–"))
        return rows
    builtin = config.get("builtin_engine")
    url = str(target.get("url", "–"))
    rows.append(("target", f"{url} (the built-in engine emulator)" if builtin else url))
    rows.append(("model", str(target.get("model", "–"))))
    engine = str(target.get("engine", "–"))
    if builtin:
        engine += f"; emulating {builtin.get('model', '–')} on {builtin.get('tp', 1)}× " \
                  f"{builtin.get('gpu', '–')}"
    rows.append(("engine", engine))
    server = manifest.get("server") or {}
    if isinstance(server, dict) and server.get("engine"):  # what the server says it is
        rows.append(("server", " ".join(str(v) for v in (server.get("engine"),
                                                         server.get("engine_version")) if v)))
    rows.append(("API", f"{target.get('api', '–')}, "
                        f"{'streaming' if target.get('stream', True) else 'not streaming'}"))
    return rows


def _warnings(view: RunView) -> list[str]:
    a = view.analysis
    m = view.manifest
    out = []
    status = m.get("status")
    if status == "running":
        out.append(f"This run did not finish (killed?): the report is built from "
                   f"{a.records_source}, everything the journal holds.")
    elif status == "interrupted":
        out.append("This run was interrupted: the summary covers the requests scheduled before "
                   "the cut-off.")
    if not view.records.num_rows:
        out.append("The run recorded no request.")
    if a.torn_lines:
        out.append(f"{a.torn_lines} torn journal line(s) were skipped.")
    out += fidelity_warnings(m.get("length_fidelity") or {})
    emulator = m.get("emulator") or {}
    if emulator and not emulator.get("keeping_real_time", True):
        out.append(f"The emulator fell behind real time ({emulator.get('late_steps')} of "
                   f"{emulator.get('steps')} steps late): its latencies are pessimistic.")
    target = m.get("target") or {}
    if target.get("stream") is False:
        out.append("Not streaming: TTFT equals E2E, and TPOT and ITL cannot be measured.")
    own = (m.get("config") or {}).get("slo")
    if own and a.slos != _parsed(own):
        out.append(f"Judged against other SLOs than the run's own ({own}).")
    excluded = view.summary.get("excluded_by_window") or 0
    if excluded and excluded == view.summary.get("total_requests"):
        out.append("No request falls in the summary window.")
    return out


def _parsed(spec: str) -> Any:
    from slobench.errors import UserError
    from slobench.slo.spec import parse_slo

    try:
        return parse_slo(spec)
    except UserError:
        return None


def _health(health: dict[str, Any]) -> dict[str, str]:
    """The terminal's client-health line, as a coloured box."""
    return {"cls": "good" if health.get("valid", True) else "bad",
            "text": health_text(health).plain}


def _sampling_note(n: int) -> str:
    note = (f"Tables are computed from all {n:,} requests. Distribution curves are drawn through "
            f"at most {MAX_ECDF_POINTS:,} evenly spaced order statistics each (exact quantiles "
            f"to 1/{MAX_ECDF_POINTS:,}); time series use at most {MAX_BINS} bins")
    if n > MAX_SCATTER_POINTS:
        note += (f"; scatter plots show {MAX_SCATTER_POINTS:,} of the {n:,} requests (evenly "
                 "spaced in time, the slowest 1% always)")
    return note + "."


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def run_page(view: RunView) -> str:
    """The HTML of a run's report."""
    s = view.summary
    m = view.manifest
    classes = s.get("classes") or {}
    rows = [_summary_row(app, classes[app]) for app in sorted(classes)]
    if len(classes) != 1:
        rows.append(_summary_row("all", s.get("overall") or {}, overall=True))
    per_constraint = [{"app": app, "constraint": c, "share": fmt_frac(v)}
                      for app in sorted(classes)
                      for c, v in ((classes[app].get("slo") or {}).get("per_constraint")
                                   or {}).items()]
    slo_rows = [{"app": app, "spec": view.analysis.slos.for_app(app).text,
                 "target": fmt_frac(view.analysis.slos.for_app(app).attain)}
                for app in sorted(classes)]
    window = s.get("window") or [0.0, 0.0]
    workload = m.get("workload") or {}
    about = [("status", str(m.get("status", "–"))), *_target_text(m),
             ("workload", f"{workload.get('source', '–')} ({workload.get('requests', '–')} "
                          f"requests, fingerprint {workload.get('fingerprint', '–')})"),
             ("started", str(m.get("started_at") or "–")),
             ("ended", str(m.get("ended_at") or "–")),
             ("records", f"{view.records.num_rows:,} from {view.analysis.records_source}"),
             ("run directory", str(view.analysis.run.path)),
             ("tool", f"slobench {(m.get('tool') or {}).get('version', '–')}")]
    overall = s.get("overall") or {}
    slo = overall.get("slo") or {}
    verdict = None
    if classes:
        failing = [a for a in sorted(classes) if not (classes[a].get("slo") or {}).get("passed")]
        verdict = {"passed": not failing,
                   "text": ("Every class met its SLO attainment target." if not failing else
                            f"Missed the SLO attainment target: {', '.join(failing)}.")
                   + f" Overall {fmt_frac(slo.get('attainment'))} of requests met their SLO; "
                     f"goodput {fmt_rate(overall.get('goodput_rps'), ' req/s')}."}
    figs, plot_notes = run_figures(view)
    server, server_first = _server_section(view), len(figs)
    figs = figs + server["figures"]
    error_rows, error_note = _error_rows(view)
    client_rows, client_note = _client_rows(view)
    return render_page(
        "run.html.j2", title=f"slobench run {view.run_id}", figures=figs,
        run_id=view.run_id, version=__version__, written=_now(), verdict=verdict,
        warnings=_warnings(view), health=_health(view.analysis.health or {}), about=about,
        slo_rows=slo_rows, rows=rows, per_constraint=per_constraint,
        latency_metrics=[label for _, label in TABLE_METRICS],
        window=f"{fmt_s(window[0])}–{fmt_s(window[1])}",
        window_note=(f"{s.get('total_requests', 0):,} requests, "
                     f"{s.get('excluded_by_window', 0):,} outside the window (warm-up, "
                     f"cool-down or after an interruption); rates are per "
                     f"{fmt_s(s.get('duration_s'))} of window."),
        sampling_note=_sampling_note(view.records.num_rows), plot_notes=plot_notes,
        error_rows=error_rows, error_note=error_note, client_rows=client_rows,
        client_note=client_note, server_section=server, server_first=server_first)


def _server_section(view: RunView) -> dict[str, Any]:
    """The "Server metrics" section (report/server_plots.py), on the latency plots' time axis."""
    from slobench.report.server_plots import server_section

    bins = _Bins.over(view.span_s, view.records.num_rows)
    return server_section(view.analysis.run.path, view.manifest, view.summary.get("window"),
                          bins.unit, bins.div, _window_shapes(view, bins.div), view.records)


def write_run_report(run_dir: Path, out: Path | None = None, *, analysis: Any = None) -> Path:
    """Write a run's HTML report (default ``<run_dir>/report.html``) and return its path.

    ``analysis``: a ``slobench.benchmark.Analysis`` of the run already made (e.g. with other
    SLOs); by default the run is analysed from its files, an interrupted or killed one included.
    """
    view = load_run(Path(run_dir), analysis=analysis)
    return write_page(out or Path(run_dir) / REPORT, run_page(view))


def try_write_run_report(run_dir: Path) -> Path | None:
    """``write_run_report`` for the end of a run: a failure is one warning line on stderr, never
    an exception (the run's data is already safe on disk)."""
    try:
        return write_run_report(run_dir)
    except Exception as exc:  # a report must never fail or lose a run
        print(f"warning: could not write {Path(run_dir) / REPORT} ({type(exc).__name__}: "
              f"{exc}); `slobench report {run_dir}` retries", file=sys.stderr)
        return None


# -- comparison ----------------------------------------------------------------------------------

# (key, label, getter, direction): +1 when larger is better, -1 when smaller is better.
_COMPARE_METRICS: tuple[tuple[str, str, Any, int], ...] = (
    ("requests", "requests", lambda b: b.get("requests"), 0),
    ("error_rate", "error rate", lambda b: (sum((b.get("errors") or {}).values())
                                            / b["requests"]) if b.get("requests") else None, -1),
    ("attainment", "SLO attainment", lambda b: (b.get("slo") or {}).get("attainment"), +1),
    ("goodput_rps", "goodput (req/s)", lambda b: b.get("goodput_rps"), +1),
    ("requests_per_s", "throughput (req/s)",
     lambda b: (b.get("throughput") or {}).get("requests_per_s"), +1),
    ("output_tokens_per_s", "output tokens/s",
     lambda b: (b.get("throughput") or {}).get("output_tokens_per_s"), +1),
    *((f"{m}_{q}", f"{label} {q}",
       (lambda b, m=m, q=q: ((b.get("latency") or {}).get(m) or {}).get(q)), -1)
      for m, label in TABLE_METRICS for q in ("p50", "p90", "p99")),
)
_SECONDS = re.compile(r"^(ttft|tpot|itl|e2e)_")
_CLASS_CONTAINERS = frozenset({"classes", "per_class", "by_class", "apps"})
_METRIC_KEYS = frozenset(re.sub(r"[^a-z0-9]", "", k) for k, *_ in _COMPARE_METRICS) | {
    "ttft", "tpot", "itl", "e2e", "goodput", "throughput"}


def _norm(name: Any) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def _significance(comparison: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Significance marks found anywhere in ``comparison``, keyed by (normalized metric, class or
    "", run id or ""): any dict carrying ``significant`` (bool) and/or a p-value (``p_value``,
    ``pvalue``, ``p``; significant below 0.05) under a metric. The metric is read from ``metric``
    or ``name``, or is the key the dict sits under (``{"ttft_p99": {"p_value": ..}}``); the class
    from ``class``/``app`` or a key under ``classes``; the run from ``run``, ``run_id``,
    ``candidate`` or ``other``. Tolerant of any nesting; unknown shapes give no marks."""
    out: dict[tuple[str, str, str], dict[str, Any]] = {}

    def first(d: dict[str, Any], keys: tuple[str, ...]) -> Any:
        for k in keys:
            if d.get(k) is not None:
                return d[k]
        return None

    def walk(obj: Any, ctx: dict[str, str]) -> None:
        if isinstance(obj, list):
            for v in obj:
                walk(v, ctx)
            return
        if not isinstance(obj, dict):
            return
        ctx = dict(ctx)
        for key, names in (("metric", ("metric", "name")), ("cls", ("class", "app")),
                           ("run", ("run", "run_id", "candidate", "other"))):
            v = first(obj, names)
            if isinstance(v, str | int | float) and not isinstance(v, bool):
                ctx[key] = str(v)
        p = first(obj, ("p_value", "pvalue", "p"))
        p = p if isinstance(p, int | float) and not isinstance(p, bool) else None
        sig = obj.get("significant")
        if ctx.get("metric") and (isinstance(sig, bool) or p is not None):
            out[(_norm(ctx["metric"]), ctx.get("cls", ""), ctx.get("run", ""))] = {
                "significant": sig if isinstance(sig, bool) else p < 0.05, "p": p}
        for k, v in obj.items():
            if not isinstance(v, dict | list):
                continue
            sub = dict(ctx)
            if str(k).lower() in _CLASS_CONTAINERS:
                walk_classes(v, sub)
                continue
            if _norm(k) in _METRIC_KEYS:
                sub["metric"] = str(k)
            walk(v, sub)

    def walk_classes(v: Any, ctx: dict[str, str]) -> None:
        if isinstance(v, dict):  # {"chatbot": {...}}
            for name, block in v.items():
                walk(block, {**ctx, "cls": str(name)})
        else:
            walk(v, ctx)

    walk(comparison, {})
    return out


def _mark(marks: dict[tuple[str, str, str], dict[str, Any]], key: str, cls: str,
          run_id: str) -> dict[str, Any] | None:
    """The mark for one cell: this metric (or its family, e.g. ``ttft`` for ``ttft_p99``), this
    class ("" for all classes), this run or any run."""
    for metric in (_norm(key), _norm(key.split("_")[0])):
        for k in ((metric, cls, run_id), (metric, cls, "")):
            if k in marks:
                return marks[k]
    return None


def _fmt_metric(key: str, v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if _SECONDS.match(key):
        return fmt_s(v)
    if key in ("attainment", "error_rate"):
        return fmt_frac(v)
    if key == "requests":
        return f"{int(v):,}"
    return fmt_rate(v, "")


def _compare_rows(views: list[RunView], marks: dict[tuple[str, str, str], dict[str, Any]],
                  cls: str = "") -> list[dict[str, Any]]:
    rows = []
    for key, label, get, direction in _COMPARE_METRICS:
        blocks = [(v.summary.get("classes") or {}).get(cls) if cls else v.summary.get("overall")
                  for v in views]
        values = [get(b) if b else None for b in blocks]
        if all(x is None for x in values):
            continue
        base = values[0]
        cells = []
        for i, (view, x) in enumerate(zip(views, values, strict=True)):
            cell: dict[str, Any] = {"value": _fmt_metric(key, x), "delta": "", "cls": "",
                                    "sig": "", "sig_title": "", "best": False}
            if i and x is not None and base is not None:
                if key in ("attainment", "error_rate"):
                    diff = x - base
                    cell["delta"] = f"{diff * 100:+.1f} pp"
                elif base:
                    diff = x / base - 1
                    cell["delta"] = f"{diff:+.1%}"
                else:
                    diff = 0.0 if x == base else math.inf
                    cell["delta"] = "" if x == base else "new"
                if direction and diff:
                    cell["cls"] = "better" if diff * direction > 0 else "worse"
            mark = _mark(marks, key, cls, view.run_id) if i else None
            if mark is not None:
                p = mark.get("p")
                cell["sig"] = "*" if mark.get("significant") else "n.s."
                cell["sig_title"] = ("significant" if mark.get("significant") else
                                     "not significant") + (f" (p = {p:.3g})" if p is not None
                                                           else "")
            cells.append(cell)
        rows.append({"label": label, "cells": cells})
    return rows


def _offered_rps(view: RunView) -> float | None:
    dur = view.summary.get("duration_s")
    return (view.summary.get("overall") or {}).get("requests", 0) / dur if dur else None


def compare_figures(views: list[RunView], labels: list[str]) -> list[Figure]:
    figs: list[Figure] = []
    dashes = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
    classes = sorted({c for v in views for c in v.classes()})
    data = []
    for i, (view, label) in enumerate(zip(views, labels, strict=True)):
        cls_blocks = view.summary.get("classes") or {}
        att = [((cls_blocks.get(c) or {}).get("slo") or {}).get("attainment") for c in classes]
        data.append({"type": "bar", "name": text(label), "x": [text(c) for c in classes],
                     "y": rounded(att), "marker": {"color": _color(i)},
                     "hovertemplate": "%{x}: %{y:.1%}<extra>" + text(label) + "</extra>"})
    targets = []
    for c in classes:  # the first run's target where it has the class
        blocks = [(v.summary.get("classes") or {}).get(c) for v in views]
        targets.append(next(((b.get("slo") or {}).get("target") for b in blocks if b), None))
    if classes:
        data.append({"type": "scatter", "mode": "markers", "name": "target",
                     "x": [text(c) for c in classes], "y": rounded(targets),
                     "marker": {"symbol": "line-ew-open", "size": 60, "color": "black",
                                "line": {"width": 3}},
                     "hovertemplate": "%{x}: target %{y:.1%}<extra></extra>"})
        figs.append(Figure("SLO attainment per class and run", data, {
            "barmode": "group", "xaxis": {"type": "category"},
            "yaxis": {"title": {"text": "requests meeting their SLO"}, "range": [0, 1.05],
                      "tickformat": ".0%"}}, height=400))
    for metric, label in DIST_METRICS:
        data = []
        all_values = []
        for i, (view, run_label) in enumerate(zip(views, labels, strict=True)):
            values = getattr(view.d, metric)[view.in_window]
            values = values[np.isfinite(values)]
            if not values.size:
                continue
            all_values.append(values)
            x, p = ecdf_points(values, MAX_ECDF_POINTS)
            data.append({"type": "scatter", "mode": "lines",
                         "name": text(f"{run_label} (n={values.size:,})"), "x": rounded(x),
                         "y": rounded(p), "line": {"shape": "hv", "color": _color(i),
                                                   "dash": dashes[i % len(dashes)]},
                         "hovertemplate": "%{x:.4~g} s: %{y:.2%}<extra>" + text(run_label)
                                          + "</extra>"})
        if not data:
            continue
        log = _log_axis(np.concatenate(all_values))
        figs.append(Figure(f"{label} distribution per run (ECDF, all classes)", data, {
            "xaxis": _seconds_axis(f"{label} (s)", log),
            "yaxis": {"title": {"text": "fraction of requests at or below"},
                      "range": [0, 1.02], "tickformat": ".0%"}}))
    loads = [_offered_rps(v) for v in views]
    known = [x for x in loads if x]
    if len(known) >= 2 and max(known) > 1.05 * min(known):
        points = [{"load": load, "goodput": (v.summary.get("overall") or {}).get("goodput_rps"),
                   "attainment": ((v.summary.get("overall") or {}).get("slo") or {})
                   .get("attainment"), "label": lab}
                  for v, load, lab in zip(views, loads, labels, strict=True)]
        fig = goodput_load_figure(points, title="Goodput against offered load")
        fig.note = "The runs were offered different loads: each point is one run."
        figs.append(fig)
    return figs


def _labels(views: list[RunView], comparison: dict[str, Any]) -> list[str]:
    """Run labels: the comparison's own (``runs: [{"run_id"|"id", "label"|"name"}]``, or
    ``#<index> <run_id>`` when it numbers the runs) where given, else the run ids."""
    given: dict[str, str] = {}
    runs = comparison.get("runs")
    if isinstance(runs, list):
        for r in runs:
            if isinstance(r, dict):
                rid = r.get("run_id") or r.get("id")
                lab = r.get("label") or r.get("name")
                if rid and not lab and isinstance(r.get("index"), int):
                    lab = f"#{r['index']} {rid}"  # as slobench compare's notes name runs
                if rid and lab:
                    given[str(rid)] = str(lab)
    return [given.get(v.run_id, v.run_id) for v in views]


def _unit_value(unit: str, v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if unit == "s":
        return fmt_s(v)
    if unit == "fraction":
        return fmt_frac(v)
    if unit == "count":
        return f"{round(v):,}"
    return fmt_rate(v, "")


def _unit_change(unit: str, d: dict[str, Any]) -> str:
    """A delta of ``slobench compare``: percentage points for fractions, relative otherwise."""
    if unit == "fraction":
        return "" if d.get("abs") is None else f"{d['abs'] * 100:+.1f} pp"
    if d.get("rel") is not None:
        return f"{d['rel']:+.1%}"
    if d.get("abs") is None:
        return ""
    return ("+" if d["abs"] >= 0 else "-") + _unit_value(unit, abs(d["abs"]))


def _interval_text(unit: str, d: dict[str, Any]) -> str:
    ci = d.get("ci_abs") if unit == "fraction" or d.get("ci_rel") is None else d.get("ci_rel")
    if not ci or len(ci) != 2 or None in ci:
        return ""
    if unit == "fraction":
        return f"[{ci[0] * 100:+.1f} pp, {ci[1] * 100:+.1f} pp]"
    return f"[{ci[0]:+.1%}, {ci[1]:+.1%}]"


def _sections_from_comparison(cmp: dict[str, Any], n_runs: int) -> list[dict[str, Any]] | None:
    """Table sections from ``Comparison.as_dict()`` of ``slobench compare`` (report/compare.py):
    ``metrics`` (key, label, unit, better) and ``scopes`` ({"overall" | class: {key: {values,
    deltas: [{abs, rel, ci_abs, ci_rel, significant, direction} | None], best}}}). None when the
    dict does not have that shape."""
    metrics, scopes = cmp.get("metrics"), cmp.get("scopes")
    if not (isinstance(metrics, list) and isinstance(scopes, dict) and scopes):
        return None
    confidence = cmp.get("confidence")
    level = f"{confidence:.0%} " if isinstance(confidence, int | float) else ""
    sections = []
    for scope in sorted(scopes, key=lambda sc: (sc != "overall", sc)):
        results = scopes[scope]
        if not isinstance(results, dict):
            return None
        rows = []
        for m in metrics:
            if not isinstance(m, dict) or m.get("key") not in results:
                continue
            res = results[m["key"]]
            values = res.get("values") or []
            deltas = res.get("deltas") or []
            if len(values) != n_runs:
                return None
            best = set(res.get("best") or []) if len(res.get("best") or []) < n_runs else set()
            cells = []
            for i, v in enumerate(values):
                d = deltas[i] if i < len(deltas) and isinstance(deltas[i], dict) else None
                cell = {"value": _unit_value(str(m.get("unit")), v), "delta": "", "cls": "",
                        "sig": "", "sig_title": "", "best": i in best}
                if d is not None:
                    cell["delta"] = _unit_change(str(m.get("unit")), d)
                    cell["cls"] = {"better": "better", "worse": "worse"}.get(
                        d.get("direction") or "", "")
                    ci = _interval_text(str(m.get("unit")), d)
                    if d.get("significant") is True:
                        cell["sig"] = "*"
                        cell["sig_title"] = f"significant: {level}interval {ci}".strip()
                    elif d.get("significant") is False:
                        cell["sig"] = "n.s."
                        cell["sig_title"] = f"not significant: {level}interval {ci}".strip()
                cells.append(cell)
            rows.append({"label": str(m.get("label", m["key"])), "cells": cells})
        sections.append({"name": "all classes" if scope == "overall" else f"class {scope}",
                         "rows": rows})
    return sections


def write_compare_report(runs: list[Path], comparison: dict[str, Any] | None, out: Path) -> Path:
    """A page comparing ``runs`` side by side: summary metrics with their change against the
    baseline, attainment per class and run, overlaid ECDFs of TTFT/TPOT/E2E, and goodput against
    load when the runs were offered different loads.

    ``comparison``: ``Comparison.as_dict()`` of ``slobench compare`` (report/compare.py) for the
    same runs in the same order. Its ``slo.spec`` judges every run, ``baseline`` picks the run
    the deltas are against, ``scopes``/``metrics`` fill the tables (values, deltas, bootstrap
    intervals, significance, best run), ``notes``/``warnings`` are shown. Every field is
    optional: without ``scopes`` the tables are computed here against the first run, with
    significance marks read from any dict carrying ``significant``/``p_value`` under a metric
    name (see :func:`_significance`); ``runs`` may give ``{"run_id", "label"}`` per run; a
    ``title`` string replaces the heading.
    """
    from slobench.errors import UserError

    comparison = comparison or {}
    if not runs:
        raise UserError("compare: give at least one run directory")
    slo = comparison.get("slo")
    slo = slo.get("spec") if isinstance(slo, dict) else slo
    views = [load_run(Path(r), slo=slo if isinstance(slo, str) else None) for r in runs]
    labels = _labels(views, comparison)
    baseline = comparison.get("baseline")
    baseline = baseline if isinstance(baseline, int) and 0 <= baseline < len(views) else 0
    sections = _sections_from_comparison(comparison, len(views))
    if sections is not None:
        notes = [str(n) for key in ("warnings", "notes")
                 if isinstance(comparison.get(key), list) for n in comparison[key]]
        conf = comparison.get("confidence")
        sig_text = ("*: the {}bootstrap interval of the difference excludes 0 (hover for it); "
                    "n.s.: it does not. Bold: the best run, or the runs tied for best."
                    ).format(f"{conf:.0%} " if isinstance(conf, int | float) else "")
        has_marks = True
    else:
        baseline = 0
        marks = _significance(comparison)
        sections = [{"name": "all classes", "rows": _compare_rows(views, marks)}]
        for cls in sorted({c for v in views for c in v.classes()}):
            sections.append({"name": f"class {cls}", "rows": _compare_rows(views, marks, cls)})
        notes = [str(n) for key in ("warnings", "notes")
                 if isinstance(comparison.get(key), list) for n in comparison[key]]
        for view, label in zip(views, labels, strict=True):
            notes += [f"{label}: {w}" for w in _warnings(view)]
            if not (view.analysis.health or {}).get("valid", True):
                notes.append(f"{label}: not a valid run (the client could not keep its "
                             "schedule).")
        has_marks = bool(marks)
        sig_text = ("*: the difference is statistically significant (hover for the p-value); "
                    "n.s.: it is not.")
    about = []
    for i, (view, label) in enumerate(zip(views, labels, strict=True)):
        m = view.manifest
        target = dict(_target_text(m))
        window = view.summary.get("window") or [0, 0]
        about.append({"label": label + (" (baseline)" if i == baseline else ""),
                      "run_id": view.run_id, "status": str(m.get("status", "–")),
                      "target": target.get("target", "–"), "model": target.get("model", "–"),
                      "engine": target.get("engine", "–"),
                      "workload": str((m.get("workload") or {}).get("source", "–")),
                      "slo": "; ".join(f"{c}: {view.analysis.slos.for_app(c).text}"
                                       for c in view.classes()) or "–",
                      "window": f"{fmt_s(window[0])}–{fmt_s(window[1])}"})
    figs = compare_figures(views, labels)
    title = comparison.get("title")
    title = title if isinstance(title, str) and title else f"Comparison of {len(views)} runs"
    page = render_page(
        "compare.html.j2", title=title, figures=figs, heading=title, version=__version__,
        written=_now(), labels=labels, baseline_label=labels[baseline], about=about,
        sections=sections, notes=notes, has_marks=has_marks, sig_text=sig_text,
        sampling_note=(f"Tables are computed from every request. Distribution curves are drawn "
                       f"through at most {MAX_ECDF_POINTS:,} evenly spaced order statistics "
                       "per run."))
    return write_page(Path(out), page)
