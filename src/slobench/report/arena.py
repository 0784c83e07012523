"""``slobench arena``: a local, read-only leaderboard web app over the run catalog.

Columns are *scenarios* (one workload, by its fingerprint, judged against one SLO spec), rows are
*engine configurations* (engine, version, model, hardware, tensor parallelism, replicas and the
engine settings that differ from the defaults, read from each run's manifest). A cell holds the
best goodput that configuration reached in that scenario, its SLO attainment and its rank in the
column; the best of each column is highlighted, so a different winner per scenario shows at a
glance. A Pareto page per scenario plots throughput against p99 TTFT and p99 TPOT; every run links
to a page of its own and to its HTML report.

Safety: pages are jinja2 templates with autoescape on; figure data travels in a
``<script type="application/json">`` block with ``<``, ``>`` and ``&`` escaped; strings drawn by
plotly go through :func:`slobench.report.html.text`. The pages carry no inline script at all:
plotly.js (from the installed plotly package) and the page script are served by the app itself,
and the Content-Security-Policy allows scripts from this origin only (no inline script, no inline
event handler, no eval, nothing from elsewhere). Only GET is answered (405 otherwise),
except ``POST /api/scan`` when the app was made with ``allow_write=True``. A run's report is
served only for a run the catalog knows, by its uid, from its recorded directory.

See docs/arena.md.
"""

from __future__ import annotations

import atexit
import datetime as dt
import functools
import hashlib
import html
import ipaddress
import math
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
)
from sqlalchemy import func, select

from slobench import __version__
from slobench.errors import UserError
from slobench.report.html import COLORS, environment, plotly_js, rounded, script_json, text
from slobench.report.terminal import fmt_frac, fmt_rate, fmt_s
from slobench.store.catalog import Catalog, CatalogError, run_classes, runs

ARENA_KINDS = ("live", "simulated", "sweep-point")  # capacity trials: only with kind=...
HEAVY = ("summary_json", "server_json")
UID = re.compile(r"^[0-9a-f]{20}$")
SCENARIO_ID = re.compile(r"^[0-9a-f]{12}$")
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
# Engine settings shown (when not the default) for the built-in emulator and the simulator.
ENGINE_DEFAULTS: dict[str, Any] = {
    "weight_dtype": "bf16", "kv_dtype": "bf16", "factors": None,
    "max_num_batched_tokens": 8192, "max_num_seqs": 256, "block_size": 16,
    "enable_chunked_prefill": True, "enable_prefix_caching": True, "policy": "fcfs",
}
SETTING_NAMES = {"weight_dtype": "dtype", "kv_dtype": "kv", "max_num_batched_tokens":
                 "batched-tokens", "max_num_seqs": "max-seqs", "block_size": "block",
                 "enable_chunked_prefill": "chunked-prefill",
                 "enable_prefix_caching": "prefix-caching"}
Y_METRICS = {"throughput": ("requests_per_s", "throughput (req/s)"),
             "goodput": ("goodput_rps", "goodput (req/s)"),
             "tokens": ("output_tokens_per_s", "output tokens/s")}
X_METRICS = (("ttft_p99", "p99 TTFT"), ("tpot_p99", "p99 TPOT"))
ROW_COLUMNS = ("uid", "run_id", "group_id", "path", "kind", "status", "started_at", "engine",
               "engine_version", "model", "hardware", "tp", "replicas", "scenario",
               "workload_source", "workload_fingerprint", "workload_requests", "slo_spec",
               "duration_s", "requests", "ok", "errors", "attainment", "slo_passed",
               "goodput_rps", "requests_per_s", "input_tokens_per_s", "output_tokens_per_s",
               "ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99", "e2e_p50", "e2e_p99",
               "client_healthy")

CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


# -- the data ----------------------------------------------------------------------------------


@dataclass
class Filters:
    """What the leaderboard shows: parts of model/hardware names, an engine, a kind."""

    model: str | None = None
    hardware: str | None = None
    engine: str | None = None
    scenario: str | None = None
    kind: str | None = None  # None: ARENA_KINDS; "all": every kind

    @classmethod
    def of(cls, model: str | None = None, hardware: str | None = None,
           engine: str | None = None, scenario: str | None = None,
           kind: str | None = None) -> Filters:
        def clean(v: str | None) -> str | None:
            v = (v or "").strip()
            return v[:200] or None

        return cls(clean(model), clean(hardware), clean(engine), clean(scenario), clean(kind))

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in (("model", self.model), ("hardware", self.hardware),
                                  ("engine", self.engine), ("scenario", self.scenario),
                                  ("kind", self.kind)) if v}


def _reading(cat: Catalog) -> Any:
    """A read transaction on the catalog (its own: no write lock on SQLite; database errors as
    CatalogError). The one place the arena reaches into the catalog's connection handling."""
    return cat.reading()


def query_runs(cat: Catalog, filters: Filters, *, limit: int | None = None
               ) -> list[dict[str, Any]]:
    """Catalog rows (without the heavy JSON columns), newest first, filtered like
    ``Catalog.list_runs`` (engine and kind exactly, model/hardware/scenario by a part)."""
    q = select(*(runs.c[name] for name in ROW_COLUMNS))
    if filters.engine:
        q = q.where(func.lower(runs.c.engine) == filters.engine.lower())
    for col, value in ((runs.c.model, filters.model), (runs.c.hardware, filters.hardware),
                       (runs.c.scenario, filters.scenario)):
        if value:
            q = q.where(col.icontains(value, autoescape=True))
    if filters.kind and filters.kind.lower() != "all":
        q = q.where(runs.c.kind == filters.kind.lower())
    elif not filters.kind:
        q = q.where(runs.c.kind.in_(ARENA_KINDS))
    q = q.order_by(runs.c.started_at.desc(), runs.c.run_id.desc())
    if limit is not None:
        q = q.limit(max(1, limit))
    with _reading(cat) as conn:
        return [{str(k): v for k, v in r._mapping.items()} for r in conn.execute(q)]


def class_specs(cat: Catalog, uids: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Per run: its SLO classes and the spec each was judged against."""
    out: dict[str, list[tuple[str, str]]] = {}
    for i in range(0, len(uids), 500):
        q = select(run_classes.c.uid, run_classes.c.app, run_classes.c.slo_spec).where(
            run_classes.c.uid.in_(uids[i:i + 500])).order_by(run_classes.c.app)
        with _reading(cat) as conn:
            for uid, app, spec in conn.execute(q):
                out.setdefault(uid, []).append((str(app), str(spec or "")))
    return out


def distinct_values(cat: Catalog) -> dict[str, list[str]]:
    """The engines, models, hardware and kinds in the catalog (for the filter form)."""
    out: dict[str, list[str]] = {}
    with _reading(cat) as conn:
        for name in ("engine", "model", "hardware", "kind"):
            col = runs.c[name]
            values = conn.execute(select(col).where(col.is_not(None)).distinct()
                                  .order_by(col).limit(500))
            out[name] = [str(v) for (v,) in values]
    return out


def _short_hash(*parts: Any) -> str:
    return hashlib.sha256(orjson.dumps([str(p) for p in parts])).hexdigest()[:12]


@functools.lru_cache(maxsize=4096)
def _manifest_facts(path: str, mtime_ns: int) -> tuple[tuple[tuple[str, str], ...], str, str]:
    try:
        manifest = orjson.loads((Path(path) / "manifest.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return (), "", ""
    manifest = manifest if isinstance(manifest, dict) else {}
    return (tuple(sorted(engine_settings(manifest).items())), workload_text(manifest),
            workload_text(manifest, with_rate=False))


def _facts(path: str | None) -> tuple[tuple[tuple[str, str], ...], str, str]:
    """A run's engine settings, how its workload was made, and the same without the rate."""
    if not path:
        return (), "", ""
    try:
        mtime = (Path(path) / "manifest.json").stat().st_mtime_ns
    except OSError:
        return (), "", ""
    return _manifest_facts(path, mtime)


def run_settings(path: str | None) -> dict[str, str]:
    """The key engine settings of the run in ``path`` (read from its manifest; cached)."""
    return dict(_facts(path)[0])


def workload_text(manifest: dict[str, Any], *, with_rate: bool = True) -> str:
    """A short account of how a synthetic or profile workload was made (rate, lengths, mix)."""
    opts = (manifest.get("config") or {}).get("workload_options") or {}
    if not isinstance(opts, dict):
        return ""
    parts = []
    for key, label in (("profile", ""), ("rate", "rate "), ("input_tokens", "in "),
                       ("output_tokens", "out "), ("apps", ""), ("sessions", "sessions ")):
        value = opts.get(key)
        if key == "rate" and not with_rate:
            continue
        if value not in (None, "", "off"):
            parts.append(f"{label}{str(value)[:60]}")
    return " · ".join(parts)


def _setting_text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()[:200]
    return str(value)[:200]


def engine_settings(manifest: dict[str, Any]) -> dict[str, str]:
    """What sets a configuration apart beyond engine, model, hardware and TP: the scheduler
    settings of the built-in emulator or the simulator that are not the defaults, the router of
    several replicas, and the parameters of a sweep point."""
    config = manifest.get("config") or {}
    target = manifest.get("target") or {}
    engine = target.get("engine") if isinstance(target.get("engine"), dict) else None
    if engine is None and isinstance(config.get("builtin_engine"), dict):
        engine = config["builtin_engine"].get("config") or None
    out: dict[str, str] = {}
    for key, default in ENGINE_DEFAULTS.items():
        if engine and key in engine and engine[key] != default:
            value = "custom" if key == "factors" else _setting_text(engine[key])
            out[SETTING_NAMES.get(key, key)] = value
    replicas = target.get("replicas") or config.get("replicas")
    router = target.get("router") or config.get("router")
    if isinstance(replicas, int) and replicas > 1 and router:
        out["router"] = str(router)
    sweep = manifest.get("sweep") or ((config.get("workload_options") or {}).get("sweep"))
    if isinstance(sweep, dict) and isinstance(sweep.get("params"), dict):
        for key, value in sweep["params"].items():
            out[str(key)[:64]] = _setting_text(value)
    return out


@dataclass
class Scenario:
    id: str
    name: str
    fingerprint: str
    slo_spec: str
    slo: str  # the classes of the runs with their specs
    requests: int | None
    detail: str = ""  # how the workload was made (rate, lengths), where the manifest says
    family: str = ""  # id of the runs of the same workload shape and SLOs at any rate
    runs: int = 0
    winners: list[str] = field(default_factory=list)  # configuration ids ranked first

    @property
    def label(self) -> str:
        return f"{self.name} · {self.fingerprint[:8]}" if self.fingerprint else self.name

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "fingerprint": self.fingerprint,
                "slo": self.slo, "slo_spec": self.slo_spec, "requests": self.requests,
                "detail": self.detail, "family": self.family,
                "runs": self.runs, "winners": self.winners}


@dataclass
class Config:
    id: str
    engine: str
    engine_version: str
    model: str
    hardware: str
    tp: int | None
    replicas: int | None
    settings: dict[str, str]
    cells: dict[str, dict[str, Any]] = field(default_factory=dict)  # by scenario id

    @property
    def label(self) -> str:
        hw = self.hardware or "?"
        if self.tp and self.tp > 1:
            hw = f"{self.tp}×{hw}"
        if self.replicas and self.replicas > 1:
            hw = f"{self.replicas} replicas of {hw}"
        engine = " ".join(x for x in (self.engine or "unknown engine", self.engine_version) if x)
        extra = ", ".join(f"{k}={v}" for k, v in self.settings.items())
        return f"{engine} · {self.model or '?'} · {hw}" + (f" · {extra}" if extra else "")

    @property
    def wins(self) -> int:
        return sum(1 for c in self.cells.values() if c["best"])

    @property
    def mean_rank(self) -> float:
        ranks = [c["rank"] / c["of"] for c in self.cells.values()]
        return sum(ranks) / len(ranks) if ranks else math.inf

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "label": self.label, "engine": self.engine,
                "engine_version": self.engine_version, "model": self.model,
                "hardware": self.hardware, "tp": self.tp, "replicas": self.replicas,
                "settings": self.settings, "wins": self.wins, "cells": self.cells}


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def scenario_key(row: dict[str, Any]) -> tuple[str, str]:
    return (row.get("workload_fingerprint") or f"name:{row.get('scenario') or '?'}",
            row.get("slo_spec") or "")


def family_key(row: dict[str, Any]) -> str:
    """The id of a scenario family: the same scenario name, SLOs and workload shape (lengths,
    mix, profile), at any rate: its runs trace throughput against latency as load grows."""
    return _short_hash("family", row.get("scenario") or "", row.get("slo_spec") or "",
                       _facts(row.get("path"))[2])


def config_key(row: dict[str, Any]) -> tuple[Any, ...]:
    settings = run_settings(row.get("path"))
    return (row.get("engine") or "", row.get("engine_version") or "", row.get("model") or "",
            row.get("hardware") or "", row.get("tp"), row.get("replicas"),
            tuple(sorted(settings.items())))


def _cell(row: dict[str, Any], n: int) -> dict[str, Any]:
    return {"run_uid": row["uid"], "run_id": row["run_id"],
            "goodput_rps": _num(row.get("goodput_rps")), "attainment": _num(row.get("attainment")),
            "slo_passed": row.get("slo_passed"), "requests_per_s": _num(row.get("requests_per_s")),
            "ttft_p99": _num(row.get("ttft_p99")), "tpot_p99": _num(row.get("tpot_p99")),
            "client_healthy": row.get("client_healthy"), "status": row.get("status"),
            "runs": n, "rank": 0, "of": 0, "best": False}


def _better(row: dict[str, Any]) -> tuple[Any, ...]:
    """Sort key of the best run of a cell: a valid client first, then goodput, attainment and
    the lower p99 TTFT."""
    ttft = _num(row.get("ttft_p99"))
    return (row.get("client_healthy") is not False, _num(row.get("goodput_rps")) or 0.0,
            _num(row.get("attainment")) or 0.0, -(ttft if ttft is not None else math.inf))


def _rank_key(cell: dict[str, Any]) -> tuple[float, float]:
    """Cells rank by goodput, then attainment; equal to 4 significant digits: the same rank."""
    g, a = rounded([cell["goodput_rps"] or 0.0, cell["attainment"] or 0.0])
    return (-(g or 0.0), -(a or 0.0))


@dataclass
class Board:
    scenarios: list[Scenario]
    configs: list[Config]
    runs: list[dict[str, Any]]  # the rows the board was built from (ranked runs only)
    skipped: int = 0  # rows without metrics (running, never summarized)

    def scenario(self, sid: str) -> Scenario | None:
        return next((s for s in self.scenarios if s.id == sid), None)

    def as_dict(self) -> dict[str, Any]:
        return {"scenarios": [s.as_dict() for s in self.scenarios],
                "configurations": [c.as_dict() for c in self.configs],
                "runs_ranked": len(self.runs), "runs_without_metrics": self.skipped}


def build_board(rows: list[dict[str, Any]], specs: dict[str, list[tuple[str, str]]]) -> Board:
    """The leaderboard from catalog rows: every run with metrics goes to one (configuration,
    scenario) cell; a cell shows its best run; cells rank within their scenario column."""
    ranked = [r for r in rows if r.get("status") != "running" and _num(r.get("goodput_rps"))
              is not None]
    scen: dict[tuple[str, str], Scenario] = {}
    confs: dict[tuple[Any, ...], Config] = {}
    members: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in ranked:
        skey, ckey = scenario_key(r), config_key(r)
        s = scen.get(skey)
        if s is None:
            slo = "; ".join(f"{app}: {spec}" for app, spec in specs.get(r["uid"], []))
            s = scen[skey] = Scenario(
                id=_short_hash(*skey), name=r.get("scenario") or "workload",
                fingerprint=r.get("workload_fingerprint") or "", slo_spec=r.get("slo_spec") or "",
                slo=slo or (r.get("slo_spec") or "–"), requests=r.get("workload_requests"),
                detail=_facts(r.get("path"))[1], family=family_key(r))
        s.runs += 1
        c = confs.get(ckey)
        if c is None:
            c = confs[ckey] = Config(
                id=_short_hash(*ckey[:6], *ckey[6]), engine=ckey[0], engine_version=ckey[1],
                model=ckey[2], hardware=ckey[3], tp=ckey[4], replicas=ckey[5],
                settings=dict(ckey[6]))
        r["_config"], r["_scenario"], r["_family"] = c.id, s.id, s.family
        members.setdefault((c.id, s.id), []).append(r)
    by_id = {c.id: c for c in confs.values()}
    for (cid, sid), group in members.items():
        by_id[cid].cells[sid] = _cell(max(group, key=_better), len(group))
    for s in scen.values():
        column = sorted((c.cells[s.id] for c in confs.values() if s.id in c.cells), key=_rank_key)
        rank, prev = 0, None
        for i, cell in enumerate(column):
            key = _rank_key(cell)
            if key != prev:
                rank, prev = i + 1, key
            cell["rank"], cell["of"] = rank, len(column)
            cell["best"] = rank == 1 and (cell["goodput_rps"] or 0.0) > 0
        s.winners = [c.id for c in confs.values()
                     if s.id in c.cells and c.cells[s.id]["best"]]
    scenarios = sorted(scen.values(), key=lambda s: (s.name, s.slo, s.fingerprint))
    configs = sorted(confs.values(), key=lambda c: (-c.wins, c.mean_rank, c.label))
    return Board(scenarios, configs, ranked, skipped=len(rows) - len(ranked))


def load_board(cat: Catalog, filters: Filters) -> Board:
    rows = query_runs(cat, filters)
    return build_board(rows, class_specs(cat, [r["uid"] for r in rows]))


def sort_configs(board: Board, sort: str | None) -> tuple[list[Config], str]:
    """Rows in the order asked: ``wins`` (default: most scenarios won, then mean rank),
    ``name``, or a scenario id (rank in that column; configurations without a run last)."""
    if sort == "name":
        return sorted(board.configs, key=lambda c: c.label.lower()), "name"
    if sort and board.scenario(sort):
        return sorted(board.configs, key=lambda c: (c.cells[sort]["rank"] if sort in c.cells
                                                    else math.inf, c.label)), sort
    return list(board.configs), "wins"


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (lower x and higher y), by x ascending."""
    order = sorted((i for i, (x, y) in enumerate(points) if x is not None and y is not None),
                   key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    best_y = -math.inf
    for i in order:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return front


def pareto_figures(board: Board, members: list[dict[str, Any]], y: str = "throughput"
                   ) -> list[dict[str, Any]]:
    """Plotly figures (JSON) of some runs of ``board`` (a scenario's, or a family's): ``y``
    against p99 TTFT and p99 TPOT, one trace per configuration, the Pareto frontier as a step
    line."""
    ycol, ylabel = Y_METRICS.get(y, Y_METRICS["throughput"])
    confs = {c.id: c for c in board.configs}
    color = {c.id: COLORS[i % len(COLORS)] for i, c in enumerate(board.configs)}
    figs = []
    for xcol, xlabel in X_METRICS:
        pts = [r for r in members if _num(r.get(xcol)) is not None
               and _num(r.get(ycol)) is not None]
        data: list[dict[str, Any]] = []
        for cid in dict.fromkeys(r["_config"] for r in pts):
            mine = [r for r in pts if r["_config"] == cid]
            label = text(confs[cid].label)
            data.append({
                "type": "scatter", "mode": "markers", "name": label,
                "x": rounded([r[xcol] for r in mine]), "y": rounded([r[ycol] for r in mine]),
                "text": [f"{text(r['run_id'])}<br>{label}<br>goodput "
                         f"{fmt_rate(_num(r.get('goodput_rps')), ' req/s')}, SLO met "
                         f"{fmt_frac(_num(r.get('attainment')))}" for r in mine],
                "customdata": [r["uid"] for r in mine],
                "marker": {"size": 11, "color": color[cid], "line": {"width": 1,
                                                                     "color": "#333"}},
                "hovertemplate": f"{xlabel} %{{x:.4~g}}s, {ylabel} %{{y:.4~g}}<br>%{{text}}"
                                 "<extra></extra>"})
        front = pareto_front([(r[xcol], r[ycol]) for r in pts])
        if front:
            data.append({"type": "scatter", "mode": "lines", "name": "Pareto frontier",
                         "x": rounded([pts[i][xcol] for i in front]),
                         "y": rounded([pts[i][ycol] for i in front]),
                         "line": {"shape": "hv", "dash": "dot", "color": "#555", "width": 1.5},
                         "hoverinfo": "skip"})
        xs = [r[xcol] for r in pts if r[xcol] > 0]
        log = bool(xs) and max(xs) / min(xs) > 20
        figs.append({
            "title": f"{ylabel} against {xlabel}",
            "data": data,
            "layout": {"height": 440, "hovermode": "closest",
                       "margin": {"l": 70, "r": 20, "t": 40, "b": 50},
                       "legend": {"orientation": "h", "y": -0.22},
                       "xaxis": {"title": {"text": f"{xlabel} (s; lower is better)"},
                                 "type": "log" if log else "linear", "automargin": True},
                       "yaxis": {"title": {"text": f"{ylabel} (higher is better)"},
                                 "rangemode": "tozero", "automargin": True},
                       "font": {"family": "system-ui, sans-serif", "size": 12},
                       "paper_bgcolor": "white", "plot_bgcolor": "white",
                       "colorway": list(COLORS)},
            "points": len(pts), "frontier": len(front)})
    return figs


# -- formatting --------------------------------------------------------------------------------


def _when(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.timezone.utc).isoformat(timespec="seconds")
    return "–" if value is None else str(value)


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if k.startswith("_") or k in HEAVY:
            continue
        if isinstance(v, dt.datetime):
            v = _when(v)
        elif isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v
    return out


def _cell_view(cell: dict[str, Any] | None) -> dict[str, Any] | None:
    if cell is None:
        return None
    notes = []
    if cell["client_healthy"] is False:
        notes.append("client overloaded: the run is not valid")
    if cell["status"] not in ("complete", None):
        notes.append(f"run {cell['status']}")
    if cell["runs"] > 1:
        notes.append(f"best of {cell['runs']} runs")
    return {**cell, "goodput": fmt_rate(cell["goodput_rps"], " req/s"),
            "met": fmt_frac(cell["attainment"]), "notes": "; ".join(notes),
            "warn": cell["client_healthy"] is False,
            "rank_text": f"#{cell['rank']} of {cell['of']}"}


# -- the web app -------------------------------------------------------------------------------


ARENA_JS = """(function () {
  "use strict";
  var el = document.getElementById("arena-figures");
  var figs = el ? JSON.parse(el.textContent) : [];
  var config = {displaylogo: false, responsive: true, showLink: false,
                modeBarButtonsToRemove: ["sendDataToCloud"]};
  figs.forEach(function (f, i) {
    var div = document.getElementById("fig-" + i);
    Plotly.newPlot(div, f.data, f.layout, config).then(function () {
      div.on("plotly_click", function (ev) {
        var p = ev && ev.points && ev.points[0];
        if (p && typeof p.customdata === "string" && /^[0-9a-f]{20}$/.test(p.customdata)) {
          window.location.href = "/run/" + p.customdata;
        }
      });
    });
  });
  document.body.setAttribute("data-plots-ready", String(figs.length));
})();
"""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) only reaches this machine."""
    h = host.strip().strip("[]").lower()
    if h in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def host_warning(host: str) -> str | None:
    """The warning line for a bind address other than loopback (None for loopback)."""
    if is_loopback(host):
        return None
    return (f"warning: --host {host}: the arena is reachable from other machines; it has no "
            "authentication and shows every run of the catalog (model names, targets, "
            "results). Use --host 127.0.0.1 unless that is what you want.")


def _host_only(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def make_app(catalog_url: str, *, allow_write: bool = False, runs_dir: Path | None = None,
             allowed_hosts: list[str] | None = None) -> FastAPI:
    """The arena as a FastAPI app over the catalog at ``catalog_url`` (read on every request, so
    new runs show up on reload). Read-only: only GET is answered. ``allow_write`` (with
    ``runs_dir``) enables ``POST /api/scan``, which indexes ``runs_dir`` again. ``allowed_hosts``:
    the Host header names accepted (default: loopback names only, against DNS rebinding; an
    empty list accepts any)."""
    if allow_write and runs_dir is None:
        raise UserError("--allow-write: the rescan needs a runs folder (--runs-dir)")
    hosts = ({h.strip().strip("[]").lower() for h in allowed_hosts}
             if allowed_hosts is not None else {"127.0.0.1", "localhost", "::1"})
    app = FastAPI(title="slobench arena", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url=None)
    env = environment()
    state: dict[str, Any] = {}

    def catalog() -> Catalog:
        if "cat" not in state:
            state["cat"] = Catalog.open(catalog_url)
        return state["cat"]

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        host = _host_only(request.headers.get("host", ""))
        if hosts and host not in hosts:
            resp: Any = PlainTextResponse("unknown Host header\n", status_code=400)
        elif request.method != "GET" and not (
                allow_write and request.method == "POST" and request.url.path == "/api/scan"):
            resp = PlainTextResponse("the arena is read-only\n", status_code=405,
                                     headers={"Allow": "GET"})
        else:
            try:
                resp = await call_next(request)
            except (CatalogError, UserError) as exc:
                resp = PlainTextResponse(f"catalog unavailable: {exc}\n", status_code=503)
        for k, v in SECURITY_HEADERS.items():
            resp.headers.setdefault(k, v)
        resp.headers.setdefault("Content-Security-Policy", CSP)
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    def page(template: str, status: int = 200, **context: Any) -> HTMLResponse:
        body = env.get_template(template).render(version=__version__, allow_write=allow_write,
                                                 catalog=catalog().shown, **context)
        return HTMLResponse(body, status_code=status)

    def not_found(what: str) -> HTMLResponse:
        return page("arena_error.html.j2", status=404, title="Not found", message=what)

    def filters_of(request: Request) -> Filters:
        q = request.query_params
        return Filters.of(q.get("model"), q.get("hardware"), q.get("engine"), q.get("scenario"),
                          q.get("kind"))

    def run_row(uid: str) -> dict[str, Any] | None:
        if not UID.fullmatch(uid):
            return None
        return next((r for r in catalog().find(uid) if r["uid"] == uid), None)

    # -- pages ---------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    def leaderboard(request: Request) -> HTMLResponse:
        filters = filters_of(request)
        board = load_board(catalog(), filters)
        configs, sort = sort_configs(board, request.query_params.get("sort"))
        winners = {cid for s in board.scenarios for cid in s.winners}
        labels = {c.id: c.label for c in board.configs}
        rows = [{"id": c.id, "label": c.label, "engine": c.engine or "–",
                 "version": c.engine_version or "", "model": c.model or "–",
                 "hardware": c.hardware or "–", "tp": c.tp or "–",
                 "replicas": c.replicas or 1, "settings": c.settings, "wins": c.wins,
                 "cells": [_cell_view(c.cells.get(s.id)) for s in board.scenarios]}
                for c in configs]
        return page("arena_leaderboard.html.j2", title="slobench arena", board=board,
                    rows=rows, sort=sort, filters=filters.as_dict(),
                    choices=distinct_values(catalog()), kinds=["all", *ARENA_KINDS,
                                                               "capacity-trial"],
                    winners=sorted(labels[c] for c in winners),
                    query={k: v for k, v in filters.as_dict().items()})

    @app.get("/scenario/{sid}", response_class=HTMLResponse)
    def scenario_page(sid: str, request: Request, y: str = "throughput",
                      scope: str = "scenario") -> HTMLResponse:
        if not SCENARIO_ID.fullmatch(sid):
            return not_found("no such scenario")
        filters = filters_of(request)
        board = load_board(catalog(), filters)
        s = board.scenario(sid)
        if s is None:
            return not_found("no such scenario in the catalog (with these filters)")
        y = y if y in Y_METRICS else "throughput"
        # the family: the same workload shape and SLOs at every rate, capacity trials included
        wide = load_board(catalog(), Filters(**{**filters.__dict__,
                                                "kind": filters.kind or "all"}))
        family = [r for r in wide.runs if r["_family"] == s.family]
        if scope == "family":
            board, members = wide, family
        else:
            scope, members = "scenario", [r for r in board.runs if r["_scenario"] == sid]
        figs = pareto_figures(board, members, y)
        members = sorted(members, key=lambda r: -(_num(r.get("goodput_rps")) or 0.0))
        labels = {c.id: c.label for c in board.configs}
        run_rows = [{"uid": r["uid"], "run_id": r["run_id"], "config": labels[r["_config"]],
                     "workload": _facts(r.get("path"))[1] or r.get("workload_fingerprint")
                     or "–",
                     "goodput": fmt_rate(_num(r.get("goodput_rps")), " req/s"),
                     "met": fmt_frac(_num(r.get("attainment"))),
                     "passed": r.get("slo_passed"),
                     "rps": fmt_rate(_num(r.get("requests_per_s")), " req/s"),
                     "ttft": fmt_s(_num(r.get("ttft_p99"))),
                     "tpot": fmt_s(_num(r.get("tpot_p99"))),
                     "valid": r.get("client_healthy") is not False}
                    for r in members]
        return page("arena_scenario.html.j2", title=f"Scenario {s.label}", scenario=s,
                    figures=figs, figures_json=_markup(script_json(
                        [{"data": f["data"], "layout": f["layout"]} for f in figs])),
                    runs=run_rows, y=y, y_choices=list(Y_METRICS), query=filters.as_dict(),
                    scope=scope, family_runs=len(family),
                    winners=[labels[c] for c in s.winners if c in labels])

    @app.get("/run/{uid}", response_class=HTMLResponse)
    def run_page(uid: str) -> HTMLResponse:
        row = run_row(uid)
        if row is None:
            return not_found("no such run in the catalog")
        classes = catalog().classes([uid])
        settings = run_settings(row.get("path"))
        about = [("run", row["run_id"]), ("group", row.get("group_id") or "–"),
                 ("kind", row.get("kind") or "–"), ("status", row.get("status") or "–"),
                 ("engine", " ".join(x for x in (row.get("engine"), row.get("engine_version"))
                                     if x) or "–"),
                 ("model", row.get("model") or "–"), ("hardware", row.get("hardware") or "–"),
                 ("tensor parallel", str(row.get("tp") or "–")),
                 ("replicas", str(row.get("replicas") or "–")),
                 ("settings", ", ".join(f"{k}={v}" for k, v in settings.items()) or "defaults"),
                 ("target", row.get("target_url") or "–"),
                 ("scenario", row.get("scenario") or "–"),
                 ("workload", f"{row.get('workload_source') or '–'} "
                              f"({row.get('workload_requests') or '–'} requests, fingerprint "
                              f"{row.get('workload_fingerprint') or '–'})"),
                 ("started", _when(row.get("started_at"))),
                 ("duration", fmt_s(_num(row.get("duration_s")))),
                 ("client", "healthy" if row.get("client_healthy") else
                  "overloaded: the run is not valid" if row.get("client_healthy") is False
                  else "–"),
                 ("directory", row.get("path") or "–")]
        blocks = [{"name": "all", **row}, *({"name": c["app"], **c} for c in classes)]
        table = [{"name": b["name"], "spec": b.get("slo_spec") if b["name"] != "all" else "",
                  "requests": b.get("requests") if b.get("requests") is not None else "–",
                  "errors": b.get("errors") if b.get("errors") is not None else "–",
                  "met": fmt_frac(_num(b.get("attainment"))), "passed": b.get("slo_passed"),
                  "goodput": fmt_rate(_num(b.get("goodput_rps")), " req/s"),
                  "rps": fmt_rate(_num(b.get("requests_per_s")), " req/s"),
                  **{f"{m}{q}": fmt_s(_num(b.get(f"{m}_p{q}")))
                     for m in ("ttft", "tpot", "e2e") for q in ("50", "99")}}
                 for b in blocks]
        sid = _short_hash(*scenario_key(row))
        return page("arena_run.html.j2", title=f"Run {row['run_id']}", row=row, about=about,
                    table=table, scenario_id=sid,
                    has_dir=bool(row.get("path")) and Path(row["path"]).is_dir())

    @app.get("/run/{uid}/report.html")
    def run_report(uid: str) -> Response:
        row = run_row(uid)
        if row is None or not row.get("path"):
            return not_found("no such run in the catalog")
        path = Path(row["path"])
        if not (path / "manifest.json").is_file():
            return not_found("the run's directory is gone")
        try:
            report = _report_file(path)
        except UserError as exc:
            return page("arena_error.html.j2", status=500, title="No report",
                        message=f"cannot make the report of this run: {exc}")
        return FileResponse(report, media_type="text/html; charset=utf-8",
                            headers={"Content-Security-Policy": report_csp()})

    @app.get("/run/{uid}/summary.json")
    def run_summary(uid: str) -> Response:
        row = run_row(uid)
        if row is None:
            return JSONResponse({"error": "no such run in the catalog"}, status_code=404)
        with _reading(catalog()) as conn:
            raw = conn.execute(select(runs.c.summary_json).where(runs.c.uid == uid)).scalar()
        if not raw:
            return JSONResponse({"error": "the run has no summary yet"}, status_code=404)
        return Response(raw, media_type="application/json")

    # -- static ----------------------------------------------------------------------------

    @app.get("/static/plotly.min.js")
    def plotly_static() -> Response:
        return Response(plotly_js(), media_type="text/javascript; charset=utf-8",
                        headers={"Cache-Control": "max-age=86400"})

    @app.get("/static/arena.js")
    def arena_static() -> Response:
        return Response(ARENA_JS, media_type="text/javascript; charset=utf-8",
                        headers={"Cache-Control": "max-age=3600"})

    # -- JSON API ----------------------------------------------------------------------------

    @app.get("/api/runs")
    def api_runs(request: Request, limit: int = 500) -> JSONResponse:
        rows = query_runs(catalog(), filters_of(request), limit=min(max(limit, 1), 10_000))
        return JSONResponse([_jsonable(r) for r in rows])

    @app.get("/api/leaderboard")
    def api_leaderboard(request: Request) -> JSONResponse:
        filters = filters_of(request)
        board = load_board(catalog(), filters)
        return JSONResponse({"filters": filters.as_dict(), **board.as_dict()})

    @app.get("/api/scenario/{sid}")
    def api_scenario(sid: str, request: Request, y: str = "throughput",
                     scope: str = "scenario") -> JSONResponse:
        filters = filters_of(request)
        board = load_board(catalog(), filters)
        s = board.scenario(sid) if SCENARIO_ID.fullmatch(sid) else None
        if s is None:
            return JSONResponse({"error": "no such scenario"}, status_code=404)
        if scope == "family":
            board = load_board(catalog(), Filters(**{**filters.__dict__,
                                                     "kind": filters.kind or "all"}))
            members = [r for r in board.runs if r["_family"] == s.family]
        else:
            scope, members = "scenario", [r for r in board.runs if r["_scenario"] == sid]
        runs_of = [_jsonable({**r, "configuration": r["_config"]}) for r in members]
        ycol = Y_METRICS.get(y, Y_METRICS["throughput"])[0]
        fronts = {}
        for xcol, _ in X_METRICS:
            pts = [r for r in runs_of if r.get(xcol) is not None and r.get(ycol) is not None]
            fronts[f"{xcol}:{ycol}"] = [pts[i]["uid"] for i in
                                        pareto_front([(r[xcol], r[ycol]) for r in pts])]
        return JSONResponse({"scenario": s.as_dict(), "scope": scope, "runs": runs_of,
                             "frontiers": fronts})

    if allow_write:
        @app.post("/api/scan")
        def api_scan(request: Request) -> JSONResponse:
            origin = request.headers.get("origin")
            if request.headers.get("x-slobench") != "scan" or (
                    origin and _host_only(origin.split("://", 1)[-1])
                    != _host_only(request.headers.get("host", ""))):
                return JSONResponse({"error": "send the header 'X-Slobench: scan' from the "
                                     "arena's own origin"}, status_code=403)
            from slobench.api import recompute

            result = catalog().scan(Path(runs_dir or "runs"), summarize=recompute)
            return JSONResponse({"registered": len(result.registered),
                                 "failed": [{"path": p, "reason": why}
                                            for p, why in result.failed]})

    return app


def _markup(s: str) -> Any:
    from markupsafe import Markup

    return Markup(s)


# -- reports -----------------------------------------------------------------------------------

_META_CSP = re.compile(rb'<meta http-equiv="Content-Security-Policy" content="([^"]*)"')
_HASH = re.compile(r"'sha256-[A-Za-z0-9+/=]+'")


@functools.lru_cache(maxsize=1)
def _report_hashes() -> frozenset[str]:
    """The script hashes of a report written by this slobench (plotly.js and the script that
    draws the figures): read from the policy of a page rendered the way reports are."""
    from slobench.report.html import Figure, render_page

    page = render_page("figures.html.j2", title="x",
                       figures=[Figure("x", [{"type": "scatter", "x": [0], "y": [0]}])], intro=[])
    m = _META_CSP.search(page.encode())
    return frozenset(_HASH.findall(html.unescape(m.group(1).decode()))) if m else frozenset()


def report_csp() -> str:
    """The policy a run report is served with: its own (no network, no frame, no form) with the
    scripts of this slobench's reports only."""
    hashes = " ".join(sorted(_report_hashes())) or "'none'"
    return ("default-src 'none'; style-src 'unsafe-inline'; img-src data: blob:; font-src data:; "
            f"base-uri 'none'; form-action 'none'; frame-ancestors 'none'; script-src {hashes}")


def _report_current(report: Path) -> bool:
    """Whether ``report`` is a report whose scripts this slobench's policy allows (one written
    by another version, with another plotly.js, is made again)."""
    try:
        with report.open("rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    m = _META_CSP.search(head)
    if not m:
        return False
    found = set(_HASH.findall(html.unescape(m.group(1).decode())))
    return bool(found) and found <= _report_hashes()


_TMP_REPORTS: dict[str, Path] = {}


def _report_file(run_dir: Path) -> Path:
    """The run's report.html when it is current; written with ``write_run_report`` when the run
    has none. A report from another slobench version (other scripts than this policy allows) is
    left alone and made again in a temporary folder, as is the report of a run directory that
    is not writable."""
    from slobench.report.run_report import REPORT, write_run_report

    report = run_dir / REPORT
    if report.is_file() and not report.is_symlink():
        if _report_current(report):
            return report
    elif not report.exists():
        try:
            return write_run_report(run_dir)
        except UserError as exc:
            if "cannot write" not in str(exc):
                raise
    key = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:20]
    tmp = _TMP_REPORTS.get(key)
    if tmp is None or not tmp.is_file():
        tmp = write_run_report(run_dir, out=_tmp_folder() / key / REPORT)
        _TMP_REPORTS[key] = tmp
    return tmp


@functools.lru_cache(maxsize=1)
def _tmp_folder() -> Path:
    """One temporary folder for the reports made outside their run directories; removed when
    the process exits."""
    folder = Path(tempfile.mkdtemp(prefix="slobench-arena-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def scan_runs(cat: Catalog, runs_dir: Path) -> tuple[int, list[tuple[str, str]]]:
    """Index ``runs_dir`` into ``cat`` (killed runs summarized from their journal)."""
    from slobench.api import recompute

    result = cat.scan(runs_dir, summarize=recompute)
    return len(result.registered), result.failed


__all__ = ["Board", "Filters", "build_board", "engine_settings", "host_warning", "is_loopback",
           "make_app", "pareto_front", "query_runs", "report_csp", "scan_runs"]
