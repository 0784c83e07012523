"""Side-by-side comparison of runs, with bootstrap confidence intervals and regression gates.

``compare_runs(paths)`` loads every run directory once, judges all of them with one SLO spec and
computes, overall and per application class, the summary metrics of each run, the delta of each
run to the baseline, a bootstrap confidence interval of each delta, and which run is best at each
metric (a tie where the difference is not significant). ``parse_gate``/``evaluate_gates`` are the
``--fail-if`` regression gates of ``slobench compare``. No printing: the rich tables at the end
are returned for the CLI to print. See docs/compare.md.

The bootstrap resamples each run's requests independently (``resamples`` times), recomputes the
statistic, and takes the ``confidence`` percentile interval of the resampled differences; a
difference is significant when that interval excludes 0. Nothing loops per resample per request:

* a percentile of a per-request metric (TTFT, TPOT, E2E) is drawn exactly from the order
  statistics: when m values are resampled, the k-th smallest is ``x[ceil(m·U)]`` with
  ``U ~ Beta(k, m-k+1)`` (the k-th smallest of m uniforms), and the number of requests with a
  defined value is itself Binomial; O(resamples) work after one sort;
* a count (requests meeting the SLO, errors) is Binomial: attainment, goodput, error rate;
* a pooled statistic over the tokens of the requests (ITL percentiles over every gap, output
  tokens/s) resamples requests, not gaps, since the gaps of one request are correlated: the
  requests are dealt at random into at most 1,000 equal blocks, blocks are resampled
  (multinomial weights, a matrix product), and each ITL percentile is read off the resampled
  cumulative counts on a fine grid around the estimate. With 1,000 requests or fewer each block is
  one request; random equal blocks have the same resampling variance as single requests.

Speed (benchmarks/compare_speed.py, results in benchmarks/results/compare_speed.json; the
2-core development VM): two simulated runs of 100,000 requests each, three classes, 2,000
resamples: 2.6 s (median of 3; 3.1 s while other work loaded the VM) with 12.8 million output
tokens per run (``slobench run``'s default lengths), 4.8 s with 25.5 million. Time grows with
the number of tokens (the ITL passes and percentiles), hardly with the resamples.
"""

from __future__ import annotations

import math
import re
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from slobench.errors import UserError, did_you_mean
from slobench.report.terminal import fmt_frac, fmt_rate, fmt_s
from slobench.slo.health import DEFAULT_CPU_THRESHOLD, DEFAULT_LAG_THRESHOLD_S, assess
from slobench.slo.metrics import Derived, check_slos, derive
from slobench.slo.spec import SLOSet, parse_slo
from slobench.slo.stats import percentiles
from slobench.store.rundir import SUMMARY, RunDir, recorded_window
from slobench.units import UNIT_SECONDS

OVERALL = "overall"
MAX_BLOCKS = 1000  # resampling units of the pooled (per-token) statistics
GRID = 64  # thresholds of the ITL percentile grid, per percentile
SUBSAMPLE = 200_000  # values that place that grid
CHUNK = 1 << 20  # values per pass step: bounded scratch memory
LATENCIES = ("ttft", "tpot", "itl", "e2e")
STATS = (50, 90, 99)


@dataclass(frozen=True)
class MetricDef:
    key: str  # "goodput", "ttft.p99"
    label: str  # as shown in tables
    unit: str  # "count", "fraction", "req/s", "tok/s", "s"
    better: str | None  # "higher", "lower", or None (no better: counts)

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.label, "unit": self.unit, "better": self.better}


METRICS: tuple[MetricDef, ...] = (
    MetricDef("requests", "requests", "count", None),
    MetricDef("ok", "ok", "count", None),
    MetricDef("error_rate", "error rate", "fraction", "lower"),
    MetricDef("attainment", "SLO met", "fraction", "higher"),
    MetricDef("goodput", "goodput", "req/s", "higher"),
    MetricDef("throughput", "out tok/s", "tok/s", "higher"),
    *(MetricDef(f"{m}.p{q}", f"{m.upper()} p{q}", "s", "lower") for m in LATENCIES for q in STATS),
)
METRIC_BY_KEY = {m.key: m for m in METRICS}


# -- results -------------------------------------------------------------------------------------


@dataclass
class Delta:
    """One run against the baseline at one metric."""

    abs: float  # value - baseline value
    rel: float | None  # value / baseline - 1 (None when the baseline is 0)
    ci_abs: tuple[float, float] | None  # bootstrap interval of abs (None: no interval)
    ci_rel: tuple[float, float] | None
    significant: bool | None  # the interval excludes 0 (None: no interval)
    direction: str | None  # "better", "worse", "same" (None: the metric has no better side)

    def as_dict(self) -> dict[str, Any]:
        return {"abs": self.abs, "rel": self.rel,
                "ci_abs": list(self.ci_abs) if self.ci_abs else None,
                "ci_rel": list(self.ci_rel) if self.ci_rel else None,
                "significant": self.significant, "direction": self.direction}


@dataclass
class MetricResult:
    values: list[float]  # one per run (NaN: undefined)
    deltas: list[Delta | None]  # None for the baseline and where undefined
    best: list[int] | None  # the best run and every run not significantly worse than it
    draws: list[np.ndarray | None] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {"values": self.values,
                "deltas": [d.as_dict() if d else None for d in self.deltas],
                "best": self.best, "tie": bool(self.best and len(self.best) > 1)}


@dataclass
class RunInfo:
    index: int
    path: str
    run_id: str
    description: str
    status: str
    workload_fingerprint: str | None
    slo_recorded: str | None
    client_valid: bool
    client_reasons: list[str]
    window: tuple[float, float]
    duration_s: float
    records_source: str
    classes: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass
class Comparison:
    runs: list[RunInfo]
    baseline: int
    confidence: float
    resamples: int
    seed: int
    slo_spec: str
    slo_source: str  # "--slo", or "baseline" (the baseline run's own spec)
    classes: list[str]
    scopes: dict[str, dict[str, MetricResult]]  # "overall" and each class -> metric key -> result
    notes: list[str]
    warnings: list[str]
    elapsed_s: float

    def wins(self, scope: str = OVERALL) -> dict[str, Any]:
        """Per run, the metrics it alone is best at; and the metrics where the best is a tie."""
        per_run = {i: [] for i in range(len(self.runs))}
        ties = []
        for key, res in self.scopes.get(scope, {}).items():
            if not res.best:
                continue
            if len(res.best) == 1:
                per_run[res.best[0]].append(key)
            else:
                ties.append(key)
        return {"runs": [per_run[i] for i in range(len(self.runs))], "ties": ties}

    def as_dict(self) -> dict[str, Any]:
        return _json({
            "baseline": self.baseline,
            "confidence": self.confidence,
            "resamples": self.resamples,
            "seed": self.seed,
            "slo": {"spec": self.slo_spec, "source": self.slo_source},
            "runs": [r.as_dict() for r in self.runs],
            "classes": self.classes,
            "metrics": [m.as_dict() for m in METRICS],
            "scopes": {s: {k: r.as_dict() for k, r in res.items()}
                       for s, res in self.scopes.items()},
            "wins": {s: self.wins(s) for s in self.scopes},
            "notes": self.notes,
            "warnings": self.warnings,
            "elapsed_s": self.elapsed_s,
        })


def _json(obj: Any) -> Any:
    """Plain JSON types: numpy scalars to Python, NaN and infinities to None."""
    if isinstance(obj, dict):
        return {str(k): _json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json(v) for v in obj]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


# -- bootstrap -----------------------------------------------------------------------------------


def boot_percentile(values: np.ndarray, q: float, resamples: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Bootstrap draws of ``np.percentile(values[defined], q)`` when the n entries of ``values``
    (NaN: undefined for that request) are resampled with replacement; exact, O(resamples).

    A resample holds m* ~ Binomial(n, m/n) defined values, iid from the m defined ones. Its k-th
    smallest is x[ceil(m·U)] with U the k-th smallest of m* uniforms, U ~ Beta(k, m*-k+1); the
    next one is U + (1-U)·Beta(1, m*-k). numpy's linear interpolation needs those two."""
    v = np.asarray(values, dtype=np.float64)
    n = v.size
    x = np.sort(v[~np.isnan(v)])
    m = x.size
    out = np.full(resamples, np.nan)
    if m == 0:
        return out
    mstar = rng.binomial(n, m / n, resamples).astype(np.float64)
    has = mstar > 0
    ms = mstar[has]
    h = (ms - 1.0) * (q / 100.0)
    lo = np.floor(h)
    frac = h - lo
    k = lo + 1.0  # 1-based rank of the lower neighbour
    u1 = rng.beta(k, ms - k + 1.0)
    u2 = u1 + (1.0 - u1) * rng.beta(1.0, np.maximum(ms - k, 1.0))
    i1 = np.clip(np.ceil(m * u1).astype(np.int64) - 1, 0, m - 1)
    i2 = np.clip(np.ceil(m * u2).astype(np.int64) - 1, 0, m - 1)
    out[has] = x[i1] + frac * (x[i2] - x[i1])
    return out


def block_weights(n: int, resamples: int, rng: np.random.Generator,
                  max_blocks: int = MAX_BLOCKS) -> tuple[np.ndarray, np.ndarray]:
    """Requests dealt at random into ``min(n, max_blocks)`` blocks of equal size (±1), and
    multinomial resampling weights of the blocks: ``(block of each request, weights[resample,
    block])``."""
    blocks = min(n, max_blocks)
    if blocks == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((resamples, 0))
    if n <= max_blocks:
        block = np.arange(n, dtype=np.int64)
    else:
        block = np.empty(n, dtype=np.int64)
        block[rng.permutation(n)] = np.arange(n, dtype=np.int64) % blocks
    # multinomial(blocks, uniform) per resample: counts of ``blocks`` uniform block draws
    picks = rng.integers(0, blocks, size=(resamples, blocks))
    picks += np.arange(resamples)[:, None] * blocks
    weights = np.bincount(picks.ravel(), minlength=resamples * blocks)
    return block, weights.reshape(resamples, blocks).astype(np.float64)


def boot_pooled_percentiles(values: np.ndarray, owner: np.ndarray, block: np.ndarray,
                            weights: np.ndarray, qs: tuple[float, ...], rng: np.random.Generator,
                            estimates: list[float] | None = None) -> dict[float, np.ndarray]:
    """Bootstrap draws of percentiles of values pooled over requests (every ITL gap), resampling
    blocks of requests: ``owner`` is the request of each value, ``block`` the block of each
    request and ``weights`` the resampling weights of the blocks (``block_weights``);
    ``estimates`` is ``np.percentile(values, qs)`` when already known.

    Each draw's percentile is where the resampled cumulative count crosses q, interpolated on an
    evenly spaced grid of ``GRID`` thresholds per percentile. The grid spans ±6 cluster-robust
    standard errors (in quantile level) around the estimate, placed with a random subsample of at
    most ``SUBSAMPLE`` values (widened by its own error); the counts use every value, one pass per
    percentile, in chunks (no array as large as ``values`` is allocated). If more than 0.5% of the
    draws fall outside a grid, it is widened and the passes repeated; a draw still outside is
    clipped to the grid.
    """
    resamples, blocks = weights.shape
    out = {q: np.full(resamples, np.nan) for q in qs}
    total = values.size
    if total == 0 or blocks == 0:
        return out
    qs_sorted = sorted(qs)
    levels = np.asarray(qs_sorted, dtype=np.float64) / 100.0
    est = np.asarray(estimates if estimates is not None else np.percentile(values, qs_sorted),
                     dtype=np.float64)
    if total > SUBSAMPLE:
        pick = rng.integers(0, total, SUBSAMPLE)
        sub, sub_block = values[pick], block[owner[pick]]
    else:
        sub, sub_block = np.asarray(values), block[owner]
    size = sub.size
    n_b = np.bincount(sub_block, minlength=blocks).astype(np.float64)
    half = np.empty(len(qs_sorted))
    for j, e in enumerate(est):
        c_b = np.bincount(sub_block[sub <= e], minlength=blocks).astype(np.float64)
        frac = c_b.sum() / size
        se = math.sqrt(float(np.sum((c_b - frac * n_b) ** 2))) / size
        noise = math.sqrt(frac * (1 - frac) / size) if size < total else 0.0
        half[j] = 6.0 * se + 5.0 * noise + 5.0 / total
    sub_sorted = np.sort(sub)
    n_all = np.bincount(block[owner], minlength=blocks) if total <= CHUNK else sum(
        np.bincount(block[owner[i:i + CHUNK]], minlength=blocks) for i in range(0, total, CHUNK))
    tot = weights @ np.asarray(n_all, dtype=np.float64)
    has = tot > 0
    buf = np.empty(min(total, CHUNK))
    key = np.empty(min(total, CHUNK), dtype=np.intp)
    cdfs: list[np.ndarray] = []
    grids: list[np.ndarray] = []
    for _attempt in range(3):
        lo = np.percentile(sub_sorted, np.clip(levels - half, 0, 1) * 100)
        hi = np.percentile(sub_sorted, np.clip(levels + half, 0, 1) * 100)
        # the estimate strictly inside: with many equal values (an atom) at the estimate, a grid
        # starting or ending on it would put the atom on the wrong side of an end
        pad = np.maximum(np.abs(est), 1e-12) * 1e-9
        lo, hi = np.minimum(lo, est - pad), np.maximum(hi, est + pad)
        steps = (hi - lo) / (GRID - 1)
        # grid[k] = lo + k·step (k < GRID); a value v is <= grid[k] iff k >= ceil((v-lo)/step):
        # arithmetic binning, no search; one pass over the values for all percentiles
        hists = [np.zeros(blocks * (GRID + 1), dtype=np.int64) for _ in qs_sorted]
        for i in range(0, total, CHUNK):
            v = values[i:i + CHUNK]
            t, k = buf[:v.size], key[:v.size]
            slot = block[owner[i:i + CHUNK]] * (GRID + 1)  # the block's first histogram slot
            for hist, a, step in zip(hists, lo, steps, strict=True):
                np.subtract(v, a, out=t)
                t *= 1.0 / step
                np.ceil(t, out=t)
                np.clip(t, 0, GRID, out=t)
                np.copyto(k, t, casting="unsafe")
                k += slot
                hist += np.bincount(k, minlength=blocks * (GRID + 1))
        cdfs, grids = [], []
        outside = 0.0
        for hist, a, step, level in zip(hists, lo, steps, levels, strict=True):
            cum = hist.reshape(blocks, GRID + 1).cumsum(axis=1)[:, :GRID].astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                cdf = (weights @ cum) / tot[:, None]
            beyond = (cdf[:, 0] > level) | (cdf[:, -1] < level)
            outside = max(outside, float(np.mean(beyond[has])) if has.any() else 0.0)
            cdfs.append(cdf)
            grids.append(a + step * np.arange(GRID))
        if outside <= 0.005:
            break
        half *= 3.0
    for q, level, cdf, grid in zip(qs_sorted, levels, cdfs, grids, strict=True):
        reached = cdf >= level
        k = np.argmax(reached, axis=1)
        draws = np.where(reached.any(axis=1), grid[k], grid[-1])
        mid = np.flatnonzero(reached.any(axis=1) & (k > 0))
        km = k[mid]
        f0, f1 = cdf[mid, km - 1], cdf[mid, km]
        with np.errstate(invalid="ignore", divide="ignore"):
            w = np.where(f1 > f0, (level - f0) / (f1 - f0), 1.0)
        interpolated = grid[km - 1] + w * (grid[km] - grid[km - 1])
        atom = _atoms(sub_sorted, grid)[km]
        draws[mid] = np.where(np.isnan(atom), interpolated, atom)
        draws[tot == 0] = np.nan
        out[q] = draws
    return out


def _atoms(sorted_values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Per grid interval k, (grid[k-1], grid[k]], the value most of its sample values share, or
    NaN. Linear interpolation inside an interval assumes values spread across it; where they sit
    on one value (token gaps of exactly 0 from multi-token chunks, a simulator's step time),
    that value is the percentile, not a point between the grid's."""
    out = np.full(grid.size, np.nan)
    inside = sorted_values[(sorted_values > grid[0]) & (sorted_values <= grid[-1])]
    if inside.size < 2:
        return out
    vals, counts = np.unique(inside, return_counts=True)
    interval = np.searchsorted(grid, vals, side="left")  # vals[i] in (grid[k-1], grid[k]]
    per = np.bincount(interval, weights=counts, minlength=grid.size)
    top = np.zeros(grid.size)
    np.maximum.at(top, interval, counts)
    main = (counts >= 2) & (counts == top[interval]) & (counts >= 0.5 * per[interval])
    out[interval[main]] = vals[main]
    return out


def _interval(draws: np.ndarray, confidence: float) -> tuple[float, float] | None:
    """The percentile interval of bootstrap draws; None when too many draws are undefined."""
    ok = draws[np.isfinite(draws)]
    if ok.size < 0.9 * draws.size or ok.size == 0:
        return None
    tail = (1.0 - confidence) / 2.0 * 100.0
    lo, hi = np.percentile(ok, [tail, 100.0 - tail])
    return float(lo), float(hi)


def delta_of(base: float, value: float, base_draws: np.ndarray | None,
             draws: np.ndarray | None, confidence: float, better: str | None) -> Delta | None:
    """The delta of ``value`` to ``base`` and, with draws of both, its bootstrap interval."""
    if not (math.isfinite(base) and math.isfinite(value)):
        return None
    diff = value - base
    rel = value / base - 1.0 if base != 0 else None
    ci_abs = ci_rel = None
    significant = None
    if base_draws is not None and draws is not None:
        ci_abs = _interval(draws - base_draws, confidence)
        if ci_abs is not None:
            significant = bool(ci_abs[0] > 0 or ci_abs[1] < 0)
            if rel is not None:
                with np.errstate(invalid="ignore", divide="ignore"):
                    ratio = np.where(base_draws > 0, draws / base_draws - 1.0, np.nan)
                ci_rel = _interval(ratio, confidence)
    direction = None
    if better is not None:
        if diff == 0:
            direction = "same"
        else:
            direction = "better" if (diff > 0) == (better == "higher") else "worse"
    return Delta(diff, rel, ci_abs, ci_rel, significant, direction)


# -- loading -------------------------------------------------------------------------------------


@dataclass
class _Run:
    info: RunInfo
    manifest: dict[str, Any]
    d: Derived
    met: np.ndarray
    apps: np.ndarray


def describe_target(manifest: dict[str, Any]) -> str:
    """One line: what the run measured."""
    target = manifest.get("target") or {}
    config = manifest.get("config") or {}
    if target.get("kind") == "simulation":
        engine = target.get("engine") or {}
        reps = target.get("replicas") or 1
        return (f"{target.get('model') or engine.get('model')} on {reps}× "
                f"{engine.get('gpu', '?')} (simulated)")
    eng = config.get("builtin_engine")
    if eng:
        return f"{eng.get('model')} on {eng.get('tp', 1)}× {eng.get('gpu')} (built-in emulator)"
    parts = [str(target.get("model") or "?")]
    if target.get("url"):
        parts.append(f"at {target['url']}")
    if target.get("engine") and target.get("engine") != "generic":
        parts.append(f"({target['engine']})")
    return " ".join(parts)


def _health(run: RunDir, manifest: dict[str, Any], records: pa.Table) -> dict[str, Any]:
    health = run.read_json(SUMMARY).get("client_health") or manifest.get("client_health")
    if health:
        return health
    if (manifest.get("target") or {}).get("kind") == "simulation":
        return {"valid": True, "reasons": []}
    return assess(records, manifest.get("cpu_samples"), lag_threshold_s=DEFAULT_LAG_THRESHOLD_S,
                  cpu_threshold=DEFAULT_CPU_THRESHOLD)


def _load(index: int, path: Path, slos: SLOSet) -> _Run:
    run = RunDir.open(path)
    manifest = run.manifest()
    records, source, _ = run.load_records()
    window = recorded_window(manifest, records)
    if not window[1] > window[0]:
        raise UserError(f"{path}: the run's measurement window {list(window)} is empty; "
                        "check its manifest.json")
    health = _health(run, manifest, records)
    sched = records["scheduled_s"].to_numpy()
    keep = (sched >= window[0]) & (sched < window[1])
    if not keep.all():
        records = records.filter(pa.array(keep))
    d = derive(records)
    met = check_slos(d, records, slos).met
    apps = np.asarray(records.column("app").to_numpy(zero_copy_only=False), dtype=object)
    info = RunInfo(
        index=index, path=str(path), run_id=run.run_id, description=describe_target(manifest),
        status=str(manifest.get("status") or "running"),
        workload_fingerprint=(manifest.get("workload") or {}).get("fingerprint"),
        slo_recorded=(manifest.get("config") or {}).get("slo"),
        client_valid=bool(health.get("valid", True)),
        client_reasons=list(health.get("reasons") or []), window=window,
        duration_s=window[1] - window[0], records_source=source,
        classes=sorted({str(a) for a in apps}))
    return _Run(info, manifest, d, met, apps)


# -- statistics of one run ------------------------------------------------------------------------


def _scope_rng(seed: int, index: int, scope: str) -> np.random.Generator:
    return np.random.default_rng([seed, index, zlib.crc32(scope.encode())])


def scope_stats(d: Derived, met: np.ndarray, rows: np.ndarray, duration: float, *,
                resamples: int, rng: np.random.Generator
                ) -> tuple[dict[str, float], dict[str, np.ndarray | None]]:
    """Point values (as ``slobench report`` computes them) and bootstrap draws of every metric of
    the requests ``rows`` of one run."""
    n = int(rows.sum())
    ok = d.ok[rows]
    n_ok = int(ok.sum())
    n_met = int(met[rows].sum())
    values: dict[str, float] = {"requests": float(n), "ok": float(n_ok)}
    draws: dict[str, np.ndarray | None] = {"requests": None, "ok": None}
    nan = math.nan
    values["error_rate"] = (n - n_ok) / n if n else nan
    values["attainment"] = n_met / n if n else nan
    values["goodput"] = n_met / duration
    out_tokens = np.where(ok, d.output_tokens[rows], 0).astype(np.float64)
    values["throughput"] = float(out_tokens.sum()) / duration
    if n:
        draws["error_rate"] = rng.binomial(n, (n - n_ok) / n, resamples) / n
        met_draws = rng.binomial(n, n_met / n, resamples).astype(np.float64)
        draws["attainment"] = met_draws / n
        draws["goodput"] = met_draws / duration
    else:
        for key in ("error_rate", "attainment", "goodput"):
            draws[key] = None
    block, weights = block_weights(n, resamples, rng)
    draws["throughput"] = (weights @ np.bincount(block, weights=out_tokens,
                                                 minlength=weights.shape[1]) / duration
                           if n else None)
    for metric in ("ttft", "tpot", "e2e"):
        v = getattr(d, metric)[rows]
        pct = percentiles(v, STATS)
        for q in STATS:
            values[f"{metric}.p{q}"] = pct[f"p{q}"]
            draws[f"{metric}.p{q}"] = boot_percentile(v, q, resamples, rng) if n else None
    # ITL: every gap of the ok requests of these rows, owned by their request's block
    if rows.all():
        gaps, owner, row_block = d.itl_values, d.itl_index, block
    else:
        sel = rows[d.itl_index]
        gaps, owner = d.itl_values[sel], d.itl_index[sel]
        row_block = np.zeros(d.n, dtype=np.int64)
        row_block[rows] = block
    pct = percentiles(gaps, STATS)
    pooled = boot_pooled_percentiles(gaps, owner, row_block, weights, STATS, rng,
                                     [pct[f"p{q}"] for q in STATS]) if n else {}
    for q in STATS:
        values[f"itl.p{q}"] = pct[f"p{q}"]
        draws[f"itl.p{q}"] = pooled[q] if n else None
    return values, draws


# -- comparing -----------------------------------------------------------------------------------


def _best(values: list[float], draws: list[np.ndarray | None], better: str | None,
          confidence: float) -> list[int] | None:
    """The best run, then every run whose difference to it is not significant."""
    if better is None:
        return None
    finite = [i for i, v in enumerate(values) if math.isfinite(v)]
    if not finite:
        return None
    sign = 1.0 if better == "higher" else -1.0
    best = max(finite, key=lambda i: (sign * values[i], -i))
    tied = [best]
    for i in finite:
        if i == best:
            continue
        if values[i] == values[best]:
            tied.append(i)
            continue
        if draws[i] is None or draws[best] is None:
            continue
        ci = _interval(draws[i] - draws[best], confidence)  # type: ignore[operator]
        if ci is None or ci[0] <= 0 <= ci[1]:
            tied.append(i)
    return sorted(tied)


def _same_spec(a: str | None, b: str | None) -> bool:
    try:
        return parse_slo(a).to_text() == parse_slo(b).to_text()
    except UserError:
        return a == b


def compare_runs(paths: list[Path], *, slo: str | None = None, baseline: int = 0,
                 confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> Comparison:
    """Compare runs side by side against ``paths[baseline]`` (see the module docstring)."""
    started = time.perf_counter()
    if len(paths) < 2:
        raise UserError("compare: give at least two runs (run directories or run ids)")
    if not 0 <= baseline < len(paths):
        raise UserError(f"--baseline: {baseline} is not a run position; give 0..{len(paths) - 1} "
                        "(the order of the runs on the command line)")
    if not 0.5 <= confidence < 1.0:
        raise UserError(f"--confidence: {confidence:g} is outside 0.5..1; give e.g. 0.95")
    if resamples < 100:
        raise UserError(f"--resamples: {resamples} is too few for an interval; give 1000 or more")
    notes: list[str] = []
    warnings: list[str] = []

    # One SLO spec for every run: --slo, or the baseline's own.
    manifests = [RunDir.open(Path(p)).manifest() for p in paths]
    recorded = [(m.get("config") or {}).get("slo") for m in manifests]
    if slo is not None:
        spec, source = slo, "--slo"
        slos = parse_slo(slo, source="--slo")
        if any(not _same_spec(slos.to_text(), r) for r in recorded):
            notes.append("All runs judged with --slo (not the SLOs they ran with).")
    else:
        spec, source = recorded[baseline], "baseline"
        slos = parse_slo(spec, source=f"{paths[baseline]}/manifest.json")
        differ = [i for i, r in enumerate(recorded) if not _same_spec(r, spec)]
        if differ:
            which = ", ".join(f"#{i}" for i in differ)
            notes.append(f"Runs {which} ran with other SLOs: every run is re-judged with the "
                         f"baseline's (#{baseline}) spec.")
    loaded = [_load(i, Path(p), slos) for i, p in enumerate(paths)]
    classes = sorted({c for r in loaded for c in r.info.classes})
    if slo is not None:
        slos.check_classes(classes)

    base = loaded[baseline].info
    for r in loaded:
        i = r.info
        if i.index != baseline:
            if base.workload_fingerprint is None or i.workload_fingerprint is None:
                warnings.append(f"#{i.index} {i.run_id}: workload fingerprint unknown; make sure "
                                "the runs replayed the same workload")
            elif i.workload_fingerprint != base.workload_fingerprint:
                warnings.append(
                    f"#{i.index} {i.run_id} ran a different workload than the baseline "
                    f"(fingerprint {i.workload_fingerprint} vs {base.workload_fingerprint}): "
                    "differences may come from the workload, not the server")
        if not i.client_valid:
            warnings.append(f"#{i.index} {i.run_id}: client unhealthy, the run is not valid ("
                            + "; ".join(i.client_reasons) + ")")
        if i.status == "running":
            notes.append(f"#{i.index} {i.run_id} did not finish (killed?): compared on what its "
                         f"{i.records_source} holds.")
        elif i.status == "interrupted":
            notes.append(f"#{i.index} {i.run_id} was interrupted: compared on what it measured.")

    scopes: dict[str, dict[str, MetricResult]] = {}
    for scope in (OVERALL, *classes):
        per_run = []
        for r in loaded:
            rows = (np.ones(r.d.n, dtype=bool) if scope == OVERALL
                    else (r.apps == scope))
            per_run.append(scope_stats(r.d, r.met, rows, r.info.duration_s, resamples=resamples,
                                       rng=_scope_rng(seed, r.info.index, scope)))
        results: dict[str, MetricResult] = {}
        for m in METRICS:
            values = [float(v[m.key]) for v, _ in per_run]
            draws = [dr[m.key] for _, dr in per_run]
            deltas = [None if i == baseline else
                      delta_of(values[baseline], values[i], draws[baseline], draws[i],
                               confidence, m.better)
                      for i in range(len(loaded))]
            results[m.key] = MetricResult(values, deltas, _best(values, draws, m.better,
                                                                 confidence), draws)
        scopes[scope] = results
    return Comparison(runs=[r.info for r in loaded], baseline=baseline, confidence=confidence,
                      resamples=resamples, seed=seed, slo_spec=slos.to_text(), slo_source=source,
                      classes=classes, scopes=scopes, notes=notes, warnings=warnings,
                      elapsed_s=time.perf_counter() - started)


# -- regression gates ----------------------------------------------------------------------------

GATE_METRICS = ("goodput", "attainment", "ttft", "tpot", "itl", "e2e", "throughput",
                "error_rate")
_GATE_RE = re.compile(
    r"\s*(?:(?P<cls>[^\s:<>=]+)\s*:\s*)?(?P<metric>[A-Za-z_][A-Za-z0-9_]*)"
    r"(?:\.(?P<stat>[A-Za-z0-9_.]*))?\s*(?P<op>[<>=!]*)\s*(?P<value>.*?)\s*")
_VALUE_RE = re.compile(r"([+-]?)(\d+(?:\.\d*)?|\.\d+)\s*(%|pp|[a-zµ/]+)?", re.I)
_UNITS = {"goodput": ("req/s", "rps"), "throughput": ("tok/s",),
          "attainment": ("pp",), "error_rate": ("pp",)}
GATE_HELP = ("write [CLASS:]METRIC[.STAT] OP VALUE, e.g. 'goodput < -5%' or "
             "'chatbot:ttft.p99 > +50ms'")


@dataclass(frozen=True)
class Gate:
    """``--fail-if`` expression: trips when a run's delta to the baseline passes ``value``."""

    text: str
    scope: str  # "overall" or a class
    metric: str  # a METRICS key
    op: str  # "<" or ">"
    value: float  # relative (fraction) or absolute (the metric's unit; seconds for latencies)
    relative: bool

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _gate_error(text: str, what: str, pos: int, fix: str) -> UserError:
    return UserError(f"--fail-if: {what} in '{text}' at character {pos + 1}; {fix}")


def parse_gate(text: str) -> Gate:
    """Parse ``[CLASS:]METRIC[.STAT] OP VALUE[%|unit]`` (docs/compare.md); UserError says what is
    wrong, where, and how to fix it."""
    m = _GATE_RE.fullmatch(text)
    if not m or not text.strip():
        raise _gate_error(text, "not a gate expression", 0, GATE_HELP)
    metric = m.group("metric").lower()
    if metric not in GATE_METRICS:
        did = did_you_mean(metric, GATE_METRICS)
        raise _gate_error(text, f"unknown metric '{m.group('metric')}'", m.start("metric"),
                          f"{did}metrics: {', '.join(GATE_METRICS)}")
    stat = m.group("stat")
    if metric in LATENCIES:
        if stat is None:
            raise _gate_error(text, f"'{metric}' needs a percentile", m.end("metric"),
                              f"write {metric}.p50, {metric}.p90 or {metric}.p99")
        if stat.lower() not in {f"p{q}" for q in STATS}:
            raise _gate_error(text, f"unknown statistic '{stat}'", m.start("stat"),
                              "use p50, p90 or p99")
        key = f"{metric}.{stat.lower()}"
    else:
        if stat is not None:
            raise _gate_error(text, f"'{metric}' takes no statistic", m.start("stat") - 1,
                              f"write just '{metric}'")
        key = metric
    op = m.group("op")
    if op not in ("<", ">"):
        what = "missing operator" if not op else f"operator '{op}' is not supported"
        raise _gate_error(text, what, m.start("op"),
                          "use '<' (trip when the change is below VALUE) or '>' (above)")
    raw = m.group("value")
    v = _VALUE_RE.fullmatch(raw)
    if not raw:
        raise _gate_error(text, "missing value", m.start("value"),
                          "give a relative change like -5% or an absolute one like +50ms")
    if not v:
        raise _gate_error(text, f"'{raw}' is not a value", m.start("value"),
                          "write a signed number with % (relative) or a unit, e.g. -5% or +50ms")
    number = float(v.group(2)) * (-1.0 if v.group(1) == "-" else 1.0)
    unit = v.group(3) or ""
    unit_l = unit.lower()
    pos = m.start("value")
    if unit == "%":
        return Gate(text.strip(), m.group("cls") or OVERALL, key, op, number / 100.0, True)
    if metric in LATENCIES:
        if unit_l not in UNIT_SECONDS:
            fix = ("add a unit: e.g. +50ms, +1s (absolute) or +10% (relative)" if not unit
                   else "use us, ms, s or min, or % for a relative change")
            raise _gate_error(text, f"'{raw}' is not a duration" if unit else
                              f"'{raw}' has no unit", pos, fix)
        return Gate(text.strip(), m.group("cls") or OVERALL, key, op,
                    number * UNIT_SECONDS[unit_l], False)
    allowed = _UNITS[metric]
    if unit and unit_l not in allowed:
        raise _gate_error(text, f"unit '{unit}' does not fit '{metric}'", pos,
                          f"use % (relative) or {' / '.join(allowed)} (absolute)")
    if unit_l == "pp":
        number /= 100.0
    return Gate(text.strip(), m.group("cls") or OVERALL, key, op, number, False)


@dataclass
class GateResult:
    gate: Gate
    run: int
    change: float | None  # the delta the gate looks at (relative or absolute)
    crossed: bool
    significant: bool | None
    tripped: bool
    message: str

    def as_dict(self) -> dict[str, Any]:
        return _json({"gate": self.gate.text, "scope": self.gate.scope,
                      "metric": self.gate.metric, "run": self.run, "change": self.change,
                      "crossed": self.crossed, "significant": self.significant,
                      "tripped": self.tripped, "message": self.message})


def format_value(metric: str, value: float | None) -> str:
    """A metric value for messages and tables."""
    unit = METRIC_BY_KEY[metric].unit
    if value is None or not math.isfinite(value):
        return "–"
    if unit == "s":
        return fmt_s(value)
    if unit == "fraction":
        return fmt_frac(value)
    if unit == "count":
        return f"{value:,.0f}"
    return fmt_rate(value, " " + unit)


def format_change(metric: str, change: float, relative: bool) -> str:
    if relative:
        return f"{change * 100:+.1f}%"
    unit = METRIC_BY_KEY[metric].unit
    if unit == "fraction":
        return f"{change * 100:+.1f}pp"
    if unit == "s":
        return ("+" if change >= 0 else "") + fmt_s(change)
    return f"{change:+.3g} {unit}"


def evaluate_gates(cmp: Comparison, gates: list[Gate], *, strict: bool = False
                   ) -> list[GateResult]:
    """Each gate against each non-baseline run. A gate trips when the run's change passes the
    threshold and (unless ``strict``) the change is significant; a change that cannot be computed
    (a metric undefined in a run) trips too: a gate fails closed."""
    out: list[GateResult] = []
    b = cmp.baseline
    base_run = cmp.runs[b]
    for gate in gates:
        if gate.scope not in cmp.scopes:
            did = did_you_mean(gate.scope, cmp.classes)
            raise UserError(f"--fail-if: class '{gate.scope}' in '{gate.text}' is in none of the "
                            f"runs; {did}classes: {', '.join(cmp.classes) or '(none)'}")
        res = cmp.scopes[gate.scope][gate.metric]
        label = METRIC_BY_KEY[gate.metric].label
        where = "" if gate.scope == OVERALL else f"{gate.scope} "
        for run in cmp.runs:
            i = run.index
            if i == b:
                continue
            head = (f"'{gate.text}': #{i} {run.run_id} vs #{b} {base_run.run_id}: "
                    f"{where}{label}")
            d = res.deltas[i]
            if d is None:
                values = (f"{format_value(gate.metric, res.values[i])} vs "
                          f"{format_value(gate.metric, res.values[b])}")
                out.append(GateResult(gate, i, None, True, None, True,
                                      f"{head} cannot be compared ({values}); the gate fails "
                                      "closed"))
                continue
            if gate.relative:
                change = d.rel if d.rel is not None else math.copysign(math.inf, d.abs) \
                    if d.abs else 0.0
                ci = d.ci_rel
            else:
                change, ci = d.abs, d.ci_abs
            crossed = change < gate.value if gate.op == "<" else change > gate.value
            tripped = crossed and (strict or bool(d.significant))
            pct = f"{cmp.confidence:.0%}"
            ci_text = (f", {pct} CI {format_change(gate.metric, ci[0], gate.relative)}.."
                       f"{format_change(gate.metric, ci[1], gate.relative)}" if ci else "")
            sig = ("significant" if d.significant else "not significant"
                   if d.significant is not None else "no interval")
            change_text = (format_change(gate.metric, change, gate.relative)
                           if math.isfinite(change) else ("+inf%" if change > 0 else "-inf%"))
            msg = (f"{head} {format_value(gate.metric, res.values[i])} vs "
                   f"{format_value(gate.metric, res.values[b])} ({change_text}{ci_text}, {sig})")
            if crossed and not tripped:
                msg += "; passes the threshold but not significant (--strict to fail anyway)"
            out.append(GateResult(gate, i, change, crossed, d.significant, tripped, msg))
    return out


# -- terminal presentation (rich renderables; printing is the CLI's) -----------------------------


def _short(run_id: str, width: int = 12) -> str:
    return run_id if len(run_id) <= width else "…" + run_id[-(width - 1):]


def _delta_text(metric: str, d: Delta | None) -> Text:
    if d is None:
        return Text("")
    unit = METRIC_BY_KEY[metric].unit
    if unit == "count":
        body = f"{d.abs:+,.0f}"
    elif unit == "fraction":
        body = f"{d.abs * 100:+.1f}pp"
    elif d.rel is not None:
        pct = d.rel * 100
        body = f"{pct:+.1f}%" if abs(pct) < 999.5 else f"{d.rel + 1:.0f}×"
    else:
        body = format_change(metric, d.abs, False).replace(" ", "")
    if d.significant:
        body += "*"
        style = {"better": "green", "worse": "red"}.get(d.direction or "", "")
    else:
        body += " "
        style = "dim"
    return Text(body, style=style)


def _best_text(cmp: Comparison, best: list[int] | None) -> Text:
    if not best:
        return Text("")
    if len(best) == len(cmp.runs):
        return Text("tie", style="dim")
    return Text(" ".join(f"#{i}" for i in best), style="bold" if len(best) == 1 else "")


def _header(cmp: Comparison, run: RunInfo) -> str:
    head = f"#{run.index} {_short(run.run_id)}"
    return head + ("\n(baseline)" if run.index == cmp.baseline else "")


def metric_table(cmp: Comparison, scope: str = OVERALL) -> Table:
    """Rows: metrics; columns: runs (value, and delta to the baseline with * when significant,
    green better, red worse), then the best run (several: not significantly different)."""
    title = "All requests" if scope == OVERALL else f"Class {scope}"
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=(0, 1),
                  title=title, title_justify="left", title_style="bold")
    table.add_column("metric", no_wrap=True)
    for run in cmp.runs:
        table.add_column(_header(cmp, run), justify="right", no_wrap=True)
    table.add_column("best", no_wrap=True)
    for m in METRICS:
        res = cmp.scopes[scope][m.key]
        cells: list[Text | str] = [m.label]
        for run in cmp.runs:
            i = run.index
            cell = Text(format_value(m.key, res.values[i]).replace(" req/s", "/s")
                        .replace(" tok/s", ""))
            if i != cmp.baseline:
                cell.append(" ")
                cell.append_text(_delta_text(m.key, res.deltas[i]))
            cells.append(cell)
        cells.append(_best_text(cmp, res.best))
        table.add_row(*cells, end_section=m.key in ("ok", "throughput", "tpot.p99", "itl.p99")
                      and m.key != METRICS[-1].key)
    return table


def attainment_table(cmp: Comparison) -> Table:
    """Per class: SLO attainment of each run, with its delta to the baseline."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=(0, 1),
                  title="SLO attainment per class", title_justify="left", title_style="bold")
    table.add_column("class", no_wrap=True)
    for run in cmp.runs:
        table.add_column(_header(cmp, run), justify="right", no_wrap=True)
    table.add_column("best", no_wrap=True)
    for cls in cmp.classes:
        res = cmp.scopes[cls]["attainment"]
        cells: list[Text | str] = [cls]
        for run in cmp.runs:
            i = run.index
            cell = Text(format_value("attainment", res.values[i]))
            if i != cmp.baseline:
                cell.append(" ")
                cell.append_text(_delta_text("attainment", res.deltas[i]))
            cells.append(cell)
        cells.append(_best_text(cmp, res.best))
        table.add_row(*cells)
    return table


def render_comparison(cmp: Comparison, scope: str = OVERALL) -> Group:
    """Everything ``slobench compare`` prints for a scope ("overall" or a class)."""
    parts: list[Any] = []
    pct = f"{cmp.confidence:.0%}"
    judged = "--slo" if cmp.slo_source == "--slo" else f"the SLOs of #{cmp.baseline}"
    parts.append(Text(
        f"{len(cmp.runs)} runs against #{cmp.baseline} (the baseline), all judged with {judged}. "
        f"* = significant: the {pct} bootstrap interval of the difference ({cmp.resamples:,} "
        "resamples) excludes 0; green better, red worse."))
    for run in cmp.runs:
        valid = "" if run.client_valid else " [client unhealthy]"
        parts.append(Text(f"  #{run.index} {run.run_id}: {run.description}, "
                          f"{run.duration_s:.4g}s window ({run.path}){valid}",
                          style="" if run.client_valid else "red"))
    for w in cmp.warnings:
        parts.append(Text("warning: " + w, style="yellow"))
    for n in cmp.notes:
        parts.append(Text(n, style="yellow"))
    parts.append(Text(""))
    parts.append(metric_table(cmp, scope))
    if scope == OVERALL and len(cmp.classes) > 1:
        parts.append(Text(""))
        parts.append(attainment_table(cmp))
    wins = cmp.wins(scope)
    alone = [f"#{i} {cmp.runs[i].run_id} {len(keys)}" for i, keys in enumerate(wins["runs"])]
    parts.append(Text(f"Metrics each run alone is best at (significantly): {', '.join(alone)}; "
                      f"best shared (no significant difference among the best): "
                      f"{len(wins['ties'])}.", style="dim"))
    return Group(*parts)
