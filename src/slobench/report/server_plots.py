"""The "Server metrics" section of a run's report: the target's own series over run time
(requests running and waiting, KV-cache usage, prefix-cache hit rate, tokens per engine step),
on the same time axis as the latency plots, and the server-side summary. See
docs/server-metrics.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from slobench.client import server_metrics as sm
from slobench.report.html import COLORS, Figure, rounded
from slobench.report.terminal import fmt_frac


def _line(name: str, x: list[Any], y: np.ndarray, color: str, unit: str, fmt: str,
          dash: str = "solid") -> dict[str, Any]:
    return {"type": "scatter", "mode": "lines+markers", "name": name, "x": x,
            "y": rounded(y), "connectgaps": False,
            "line": {"color": color, "width": 2, "dash": dash, "shape": "linear"},
            "marker": {"size": 3, "color": color},
            "hovertemplate": f"%{{x:.4~g}} {unit}: {name} %{{y:{fmt}}}<extra></extra>"}


def _has(y: np.ndarray) -> bool:
    return bool(np.isfinite(y).any())


def server_figures(table: Any, unit: str, div: float, shapes: list[dict[str, Any]]
                   ) -> list[Figure]:
    """Figures of a run's server-metric table (``server_metrics.load``), x in ``unit``."""
    figs: list[Figure] = []
    t = sm._col(table, "t_s")
    x = rounded(t / div, 6)
    axis = {"title": {"text": f"run time ({unit})"}}
    every = "One point per scrape of GET /metrics"
    running, waiting = sm._col(table, "requests_running"), sm._col(table, "requests_waiting")
    if _has(running) or _has(waiting):
        data = [_line(n, x, y, c, unit, ".0f") for n, y, c in
                (("running", running, COLORS[0]), ("waiting", waiting, COLORS[1])) if _has(y)]
        figs.append(Figure("Server: requests running and waiting", data, {
            "xaxis": axis, "yaxis": {"title": {"text": "requests"}, "rangemode": "tozero"},
            "shapes": shapes}, note=f"{every}; the server's own count (its batch and queue)."))
    kv = sm._col(table, "kv_cache_usage")
    if _has(kv):
        figs.append(Figure("Server: KV-cache usage", [_line("KV cache used", x, kv, COLORS[2],
                                                            unit, ".1%")], {
            "xaxis": axis, "yaxis": {"title": {"text": "share of KV cache"},
                                     "tickformat": ".0%", "range": [0, 1.05]},
            "shapes": shapes}, note=f"{every}."))
    iv = sm.interval_series(table)
    xi = rounded(iv["t_s"] / div, 6)
    if _has(iv["prefix_cache_hit_rate"]):
        figs.append(Figure("Server: prefix-cache hit rate", [
            _line("hit rate", xi, iv["prefix_cache_hit_rate"], COLORS[3], unit, ".1%")], {
            "xaxis": axis, "yaxis": {"title": {"text": "hit tokens / queried tokens"},
                                     "tickformat": ".0%", "range": [0, 1.05]},
            "shapes": shapes},
            note="Per interval between scrapes: prefix-cache hits over queries (the engine's "
                 "own hit-rate gauge where it exports no counters); gaps: no queries."))
    if _has(iv["tokens_per_step"]):
        figs.append(Figure("Server: tokens per engine step (batching efficiency)", [
            _line("tokens/step", xi, iv["tokens_per_step"], COLORS[4 % len(COLORS)], unit,
                  ".1f")], {
            "xaxis": axis, "yaxis": {"title": {"text": "tokens per step"},
                                     "rangemode": "tozero"}, "shapes": shapes},
            note="Per interval between scrapes: tokens the engine computed over the steps it "
                 "ran (prefill and decode); more tokens per step, better batching."))
    return figs


def _mean_max(block: dict[str, Any] | None, fmt: Any) -> str:
    if not block:
        return "–"
    return f"{fmt(block['mean'])} mean, {fmt(block['max'])} max"


def summary_rows(block: dict[str, Any]) -> list[tuple[str, str]]:
    """Rows (label, value) of the server-side summary of a ``server_metrics`` block."""
    s = block.get("summary") or {}
    rows = [("engine", str(block.get("engine") or "–")),
            ("scrapes", f"{block.get('scrapes', 0)} every {block.get('interval_s', '–')} s, "
                        f"{block.get('errors', 0)} failed")]
    if s:
        rows += [("requests running", _mean_max(s.get("requests_running"), lambda v: f"{v:.1f}")),
                 ("requests waiting", _mean_max(s.get("requests_waiting"), lambda v: f"{v:.1f}")),
                 ("KV-cache usage", _mean_max(s.get("kv_cache_usage"), fmt_frac)),
                 ("prefix-cache hit rate", fmt_frac(s.get("prefix_cache_hit_rate"))),
                 ("tokens per engine step", "–" if s.get("tokens_per_step") is None
                  else f"{s['tokens_per_step']:.1f}"),
                 ("preemptions", "–" if s.get("preemptions") is None else str(s["preemptions"]))]
    cache = block.get("prompt_cache") or {}
    if cache:
        rows.append(("cached prompt tokens (usage)",
                     f"{fmt_frac(cache.get('hit_share'))} of {cache.get('prompt_tokens', 0):,} "
                     f"prompt tokens in {cache.get('requests', 0):,} requests"))
    return rows


def server_section(run_dir: Path, manifest: dict[str, Any], window: Any, unit: str, div: float,
                   shapes: list[dict[str, Any]], records: Any) -> dict[str, Any]:
    """What the report's "Server metrics" section shows: ``figures``, summary ``rows`` and a
    ``note`` (why there is nothing to plot, when there is nothing); ``show`` is False for a
    simulated run (no server)."""
    if (manifest.get("target") or {}).get("kind") == "simulation":
        return {"show": False, "figures": [], "rows": [], "note": None}  # no server to scrape
    table = sm.load(run_dir)
    block = manifest.get("server_metrics")
    if block is None and table is not None:  # a killed run: recompute from the journal
        block = sm.run_summary(run_dir, {"engine": None, "scrapes": table.num_rows},
                               records, window)
    block = block or {}
    figures = server_figures(table, unit, div, shapes) if table is not None else []
    note = None
    if not figures:
        why = block.get("note") or ("no scrape of GET /metrics succeeded" if block else
                                    "this run has no server metrics (scraping was off, or the "
                                    "run predates it)")
        note = f"No server metrics to plot: {why}."
    return {"show": True, "figures": figures, "rows": summary_rows(block) if block else [],
            "note": note}
