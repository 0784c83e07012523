"""How close is workload A to workload B? A realism report between two Workload tables.

:func:`compare_workloads` is pure statistics over two tables (``schema.WORKLOAD_SCHEMA``); B is the
reference (relative differences and the Wasserstein distance are taken relative to B). It returns
a plain, JSON-serializable dict: one entry per statistic with both values, a distance, the bands
and a verdict, a worst verdict per group, an overall summary line, and the small series the
figures need. :func:`load_source` is the one I/O helper: a file, a ServeGen pool directory or a
built-in profile (``profile:NAME``) as a Workload table.

Definitions (all on arrivals sorted in time, windows starting at the first arrival, only whole
windows counted, as in :mod:`slobench.workload.inspect`):

- mean rate: ``(n - 1) / span`` requests/s;
- peak/mean at 1 s, 10 s, 60 s: the largest window count over the mean window count; compared on
  the *excess* ``peak/mean - 1`` (any traffic tends to 1 at long windows, so the ratio itself
  hides the difference);
- gap CV: std/mean of the inter-arrival gaps (Poisson 1);
- count CV at 1 s, 10 s, 60 s: std/mean of the request counts per window (Poisson
  ``1/sqrt(mean count)``); index of dispersion at the same scales: variance/mean of those counts
  (Poisson 1 at every scale). Count CV is ``sqrt(dispersion / mean count)``, so its bands are
  about the square root of the dispersion bands;
- lengths (input, output; reasoning when both have it): the two-sample Kolmogorov-Smirnov
  statistic (sup of the CDF difference) and the Wasserstein-1 distance divided by B's mean, on
  samples capped at ``SAMPLE_CAP`` values each (evenly spaced order statistics of the sorted
  values: deterministic, and within ``1/SAMPLE_CAP`` of the full CDF);
- input/output Spearman rank correlation of each (on at most ``SAMPLE_CAP`` rows, evenly spaced in
  arrival order);
- clients: distinct clients; cumulative request share of the largest 1 and 5 clients; the Gini
  coefficient of requests per client (0: all equal, or a single client; towards 1: a few clients
  send almost everything);
- sessions (when either has sessions): share of follow-up requests, mean turns per session (an
  empty ``session_id`` is a session of one), median think time of follow-ups;
- prefix reuse (when either has prefix blocks): the unbounded prefix-cache hit ratio.

Verdicts: each statistic has a distance (``measure``) and two thresholds, ``close`` and ``far``
(``BANDS``): distance <= close is "close", <= far "differs", above "far". A statistic that only
one side defines is "far" for sessions and prefixes (one workload has them, the other not) and
"n/a" otherwise, as is one neither defines. Per-scale statistics (peak/mean, count CV, dispersion)
are "n/a" when either side has fewer than ``MIN_WINDOWS`` whole windows at that scale (a 60 s scale
needs 20 minutes). "n/a" is left out of the counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from slobench.errors import UserError
from slobench.workload.inspect import (
    _clean,
    _codes,
    _ints,
    choose_bin_s,
    interarrival_stats,
    length_stats,
    prefix_reuse,
    rate_over_time,
    session_stats,
    window_counts,
)

SCALES_S: tuple[float, ...] = (1.0, 10.0, 60.0)
# Denser scales for the "CV vs time scale" figure only.
PLOT_SCALES_S: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                                    1800.0, 3600.0)
SAMPLE_CAP = 100_000
# Per-scale statistics from fewer whole windows are shown but not judged: the variance of a
# handful of counts is noise (its relative error is about sqrt(2 / (windows - 1))).
MIN_WINDOWS = 20
TOP_K = (1, 5)
MAX_SHARE_POINTS = 200
PROFILE_PREFIX = "profile:"
VERDICTS = ("close", "differs", "far")
GROUPS = ("rate", "burstiness", "lengths", "clients", "sessions", "prefix")


@dataclass(frozen=True)
class Band:
    """How a statistic is compared: ``measure`` and the ``close`` / ``far`` thresholds.

    ``rel``: |a - b| / |b|. ``ratio``: max(a, b) / min(a, b) (scale-free, for quantities that
    span orders of magnitude). ``abs``: |a - b|. ``value``: the distance itself (KS, W1)."""

    measure: str
    close: float
    far: float


# The thresholds, chosen so that two realizations of the same profile (different seeds, 1 h)
# come out "close", and a Poisson baseline at the same mean rate does not (docs/realism.md).
BANDS: dict[str, Band] = {
    "mean_rate": Band("rel", 0.05, 0.20),
    "peak_to_mean": Band("ratio", 1.75, 3.0),  # on the excess peak/mean - 1
    "gap_cv": Band("rel", 0.10, 0.30),
    "count_cv": Band("ratio", 1.25, 1.75),
    "dispersion": Band("ratio", 1.5, 3.0),
    "ks": Band("value", 0.05, 0.15),
    "wasserstein": Band("value", 0.05, 0.20),
    "spearman": Band("abs", 0.05, 0.15),
    "clients": Band("ratio", 1.5, 3.0),
    "top_share": Band("abs", 0.05, 0.15),
    "gini": Band("abs", 0.05, 0.15),
    "followup_share": Band("abs", 0.05, 0.15),
    "turns_per_session": Band("rel", 0.10, 0.30),
    "think_p50": Band("rel", 0.20, 0.50),
    "block_reuse": Band("abs", 0.05, 0.15),
}
MEASURE_LABELS = {"rel": "rel. diff", "ratio": "ratio", "abs": "abs. diff", "value": ""}


# ----------------------------------------------------------------------------- one workload


def workload_facts(table: pa.Table, *, scales_s: Sequence[float] = SCALES_S,
                   sample_cap: int = SAMPLE_CAP) -> dict[str, Any]:
    """The facts of one table that the comparison needs (numpy arrays included: not JSON)."""
    n = table.num_rows
    arrival = table["arrival_s"].to_numpy().astype(np.float64, copy=False)
    order = np.argsort(arrival, kind="stable")
    arrival = arrival[order]
    if n and not np.array_equal(order, np.arange(n)):
        table = table.take(pa.array(order))
    span = float(arrival[-1] - arrival[0]) if n else 0.0
    inp, out = _ints(table, "input_tokens"), _ints(table, "output_tokens")
    reason = _ints(table, "reasoning_tokens")
    codes, names = _codes(table["client_id"])
    per_client = np.sort(np.bincount(codes, minlength=len(names)))[::-1]
    per_client = per_client[per_client > 0]
    cum_share = np.cumsum(per_client) / n if n else np.zeros(0)
    turn = table["turn"].to_numpy()
    sess = session_stats(table)
    sid_codes = _session_codes(table)
    return {
        "requests": n,
        "span_s": span,
        "mean_rate_rps": (n - 1) / span if n > 1 and span > 0 else None,
        "gap_cv": interarrival_stats(arrival)["cv"],
        "scales": [_scale(arrival, w) for w in scales_s],
        "plot_scales": [_scale(arrival, w) for w in PLOT_SCALES_S],
        "arrival": arrival,
        "lengths": {"input": inp, "output": out, "reasoning": reason[reason > 0]},
        "spearman": _spearman(inp, out, sample_cap),
        "clients": {
            "distinct": int(per_client.size),
            "top": {k: float(cum_share[min(k, cum_share.size) - 1]) if cum_share.size else None
                    for k in TOP_K},
            "gini": gini(per_client),
            "cum_share": cum_share,
        },
        "sessions": {
            "present": sess is not None,
            "followup_share": float((turn > 0).mean()) if n else None,
            "turns_per_session": n / sid_codes if sid_codes else None,
            "think_p50": ((sess or {}).get("think_s") or {}).get("p50"),
        },
        "prefix": prefix_reuse(table["prefix_blocks"]),
    }


def _session_codes(table: pa.Table) -> int:
    """Number of sessions, an empty ``session_id`` counting as a session of one request."""
    sid = table["session_id"]
    empty = int(pc.sum(pc.equal(sid, "")).as_py() or 0)
    named = pc.filter(sid, pc.not_equal(sid, ""))
    return empty + (len(_codes(named)[1]) if len(named) else 0)


def _scale(sorted_arrival: np.ndarray, w: float) -> dict[str, Any]:
    counts = window_counts(sorted_arrival, w)
    row: dict[str, Any] = {"window_s": float(w), "windows": 0, "mean_count": None,
                           "peak_to_mean": None, "cv": None, "poisson_cv": None,
                           "dispersion": None}
    if counts is None:
        return row
    mean = float(counts.mean())
    row["windows"] = int(counts.size)
    row["mean_count"] = mean
    if mean > 0:
        row["peak_to_mean"] = float(counts.max()) / mean
        row["cv"] = float(counts.std()) / mean
        row["poisson_cv"] = 1.0 / math.sqrt(mean)
        row["dispersion"] = float(counts.var()) / mean
    return row


def gini(counts: np.ndarray) -> float | None:
    """Gini coefficient of non-negative counts (0 when all are equal or there is one)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    if x.size == 0 or x.sum() <= 0:
        return None
    i = np.arange(1, x.size + 1)
    return float(2.0 * np.sum(i * x) / (x.size * x.sum()) - (x.size + 1) / x.size)


def _spearman(x: np.ndarray, y: np.ndarray, cap: int) -> float | None:
    from scipy.stats import spearmanr

    if x.size < 3:
        return None
    if x.size > cap:  # evenly spaced rows keep the pairs and cover the whole span
        idx = np.linspace(0, x.size - 1, cap).astype(np.int64)
        x, y = x[idx], y[idx]
    if np.all(x == x[0]) or np.all(y == y[0]):
        return None  # a constant has no rank correlation
    return float(spearmanr(x, y).statistic)


def capped_sample(values: np.ndarray, cap: int = SAMPLE_CAP) -> np.ndarray:
    """The sorted values, or ``cap`` evenly spaced order statistics of them when there are more
    (the empirical CDF moves by at most 1/cap)."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    if v.size <= cap:
        return v
    return v[np.rint(np.linspace(0, v.size - 1, cap)).astype(np.int64)]


def length_distance(a: np.ndarray, b: np.ndarray, cap: int = SAMPLE_CAP
                    ) -> tuple[float | None, float | None]:
    """(KS statistic, Wasserstein-1 / mean of b) of two samples, each capped at ``cap``."""
    from scipy.stats import ks_2samp, wasserstein_distance

    sa, sb = capped_sample(a, cap), capped_sample(b, cap)
    if sa.size == 0 or sb.size == 0:
        return None, None
    ks = float(ks_2samp(sa, sb, method="asymp").statistic)
    mean_b = float(sb.mean())
    w1 = float(wasserstein_distance(sa, sb))
    return ks, (w1 / mean_b if mean_b > 0 else None)


# ----------------------------------------------------------------------------- comparison


def distance(a: float | None, b: float | None, measure: str) -> float | None:
    """The distance of ``a`` from the reference ``b`` under ``measure`` (see :class:`Band`);
    ``inf`` where it is unbounded (e.g. a ratio against 0), ``None`` where a value is missing."""
    if a is None or b is None:
        return None
    if measure == "abs":
        return abs(a - b)
    if measure == "rel":
        return abs(a - b) / abs(b) if b != 0 else (0.0 if a == 0 else math.inf)
    if measure == "ratio":
        lo, hi = min(a, b), max(a, b)
        if lo <= 0:
            return 1.0 if hi == lo else math.inf
        return hi / lo
    raise ValueError(f"unknown measure {measure!r}")


def verdict(dist: float | None, band: Band) -> str:
    """close / differs / far by the band's thresholds; n/a for a missing distance."""
    if dist is None or (isinstance(dist, float) and math.isnan(dist)):
        return "n/a"
    return "close" if dist <= band.close else "differs" if dist <= band.far else "far"


def _stat(group: str, key: str, label: str, a: float | None, b: float | None, band: str, *,
          dist: float | None = None, lone: str = "n/a", compare: tuple[float | None,
                                                                   float | None] | None = None
          ) -> dict[str, Any]:
    """One statistic. ``compare`` overrides the values the distance is taken on (the peak
    excess); ``dist`` gives it directly (KS, W1); ``lone`` is the verdict when only one side
    has a value."""
    bd = BANDS[band]
    ca, cb = compare if compare is not None else (a, b)
    if dist is None and bd.measure != "value":
        dist = distance(ca, cb, bd.measure)
    v = lone if (a is None) != (b is None) else verdict(dist, bd)
    return {"group": group, "key": key, "label": label, "a": a, "b": b,
            "measure": MEASURE_LABELS[bd.measure] if bd.measure != "value" else band,
            "distance": dist, "close": bd.close, "far": bd.far, "verdict": v}


def _few(sa: dict[str, Any], sb: dict[str, Any], stat: dict[str, Any]) -> dict[str, Any]:
    """Leave a per-scale statistic unjudged when either side has too few windows for it."""
    if min(sa["windows"], sb["windows"]) < MIN_WINDOWS:
        stat["verdict"] = "n/a"
        stat["note"] = f"fewer than {MIN_WINDOWS} windows"
    return stat


def _label_s(w: float) -> str:
    return f"{w / 60:g} min" if w >= 60 and w % 60 == 0 else f"{w:g} s"


def compare_workloads(a: pa.Table, b: pa.Table, *, names: tuple[str, str] = ("A", "B"),
                      scales_s: Sequence[float] = SCALES_S,
                      sample_cap: int = SAMPLE_CAP) -> dict[str, Any]:
    """The realism report of ``a`` against the reference ``b`` (see the module doc)."""
    for t, name in ((a, names[0]), (b, names[1])):
        if t.num_rows < 2:
            raise UserError(f"{name}: {t.num_rows} request(s); a comparison needs at least 2")
    fa = workload_facts(a, scales_s=scales_s, sample_cap=sample_cap)
    fb = workload_facts(b, scales_s=scales_s, sample_cap=sample_cap)
    stats: list[dict[str, Any]] = [
        _stat("rate", "mean_rate", "mean rate (req/s)", fa["mean_rate_rps"], fb["mean_rate_rps"],
              "mean_rate")]
    for sa, sb in zip(fa["scales"], fb["scales"], strict=True):
        pa_, pb = sa["peak_to_mean"], sb["peak_to_mean"]
        stats.append(_few(sa, sb, _stat(
            "rate", f"peak_to_mean_{sa['window_s']:g}s",
            f"peak/mean, {_label_s(sa['window_s'])} bins", pa_, pb, "peak_to_mean",
            compare=(None if pa_ is None else pa_ - 1, None if pb is None else pb - 1))))
    stats.append(_stat("burstiness", "gap_cv", "inter-arrival gap CV", fa["gap_cv"], fb["gap_cv"],
                       "gap_cv"))
    for field, band, label in (("cv", "count_cv", "count CV"),
                               ("dispersion", "dispersion", "var/mean of counts")):
        for sa, sb in zip(fa["scales"], fb["scales"], strict=True):
            stats.append(_few(sa, sb, _stat(
                "burstiness", f"{band}_{sa['window_s']:g}s",
                f"{label}, {_label_s(sa['window_s'])}", sa[field], sb[field], band)))
    for field in ("input", "output", "reasoning"):
        la, lb = fa["lengths"][field], fb["lengths"][field]
        if field == "reasoning" and not (la.size or lb.size):
            continue
        ks, w1 = length_distance(la, lb, sample_cap)
        pa_ = float(np.median(la)) if la.size else None
        pb = float(np.median(lb)) if lb.size else None
        ma = float(la.mean()) if la.size else None
        mb = float(lb.mean()) if lb.size else None
        stats.append(_stat("lengths", f"{field}_ks", f"{field} tokens p50 (KS)", pa_, pb, "ks",
                           dist=ks, lone="far"))
        stats.append(_stat("lengths", f"{field}_w1", f"{field} tokens mean (W1/mean)", ma, mb,
                           "wasserstein", dist=w1, lone="far"))
    stats.append(_stat("lengths", "spearman", "input~output Spearman", fa["spearman"],
                       fb["spearman"], "spearman"))
    ca, cb = fa["clients"], fb["clients"]
    stats.append(_stat("clients", "clients", "distinct clients", ca["distinct"], cb["distinct"],
                       "clients"))
    for k in TOP_K:
        stats.append(_stat("clients", f"top{k}_share", f"top-{k} client share" if k == 1 else
                           f"top-{k} clients' share", ca["top"][k], cb["top"][k], "top_share"))
    stats.append(_stat("clients", "gini", "Gini of requests/client", ca["gini"], cb["gini"],
                       "gini"))
    sa, sb = fa["sessions"], fb["sessions"]
    if sa["present"] or sb["present"]:
        stats.append(_stat("sessions", "followup_share", "follow-up share",
                           sa["followup_share"], sb["followup_share"], "followup_share"))
        stats.append(_stat("sessions", "turns_per_session", "requests per session",
                           sa["turns_per_session"], sb["turns_per_session"],
                           "turns_per_session"))
        stats.append(_stat("sessions", "think_p50", "think time p50 (s)", sa["think_p50"],
                           sb["think_p50"], "think_p50", lone="far"))
    if fa["prefix"] or fb["prefix"]:
        stats.append(_stat("prefix", "block_reuse", "prefix-cache hit ratio",
                           (fa["prefix"] or {}).get("block_reuse"),
                           (fb["prefix"] or {}).get("block_reuse"), "block_reuse", lone="far"))
    counts = {v: sum(s["verdict"] == v for s in stats) for v in (*VERDICTS, "n/a")}
    groups = {}
    for g in GROUPS:
        vs = [s["verdict"] for s in stats if s["group"] == g and s["verdict"] in VERDICTS]
        if vs:
            groups[g] = max(vs, key=VERDICTS.index)
    overall = max(groups.values(), key=VERDICTS.index) if groups else "n/a"
    line = (f"{names[0]} vs {names[1]}: {counts['close']} close, {counts['differs']} differ, "
            f"{counts['far']} far; "
            + ", ".join(f"{g} {v}" for g, v in groups.items()) + ".")
    result = {
        "names": list(names),
        "a": _side(fa), "b": _side(fb),
        "statistics": stats,
        "counts": counts,
        "groups": groups,
        "verdict": overall,
        "summary": line,
        "bands": {k: {"measure": v.measure, "close": v.close, "far": v.far}
                  for k, v in BANDS.items()},
        "series": _series(fa, fb),
    }
    return _clean(result)


def _side(f: dict[str, Any]) -> dict[str, Any]:
    return {"requests": f["requests"], "span_s": f["span_s"], "mean_rate_rps": f["mean_rate_rps"],
            "scales": f["scales"]}


def _series(fa: dict[str, Any], fb: dict[str, Any]) -> dict[str, Any]:
    """Small series for the figures: rate on a common bin, scales, length CDFs, share curves."""
    span = max(fa["span_s"], fb["span_s"])
    w = choose_bin_s(span, max(fa["requests"], fb["requests"]))
    out: dict[str, Any] = {"rate": {}, "scales": {}, "lengths": {}, "clients": {}}
    for side, f in (("a", fa), ("b", fb)):
        rot = rate_over_time(f["arrival"], bin_s=w)
        out["rate"][side] = {"bin_s": rot["bin_s"], "start_s": rot["start_s"],
                             "rate_rps": rot["rate_rps"]}
        out["scales"][side] = [s for s in f["plot_scales"] if s["dispersion"] is not None]
        out["lengths"][side] = {k: length_stats(v)["cdf"] for k, v in f["lengths"].items()
                                if v.size}
        cum = f["clients"]["cum_share"][:MAX_SHARE_POINTS]
        out["clients"][side] = cum.tolist()
    return out


# ----------------------------------------------------------------------------- sources (I/O)


def load_source(spec: str, *, duration_s: float = 3600.0, seed: int = 0,
                fmt: str = "auto") -> tuple[pa.Table, str]:
    """A Workload table and a short description from ``spec``: ``profile:NAME`` (a built-in
    profile), a ServeGen pool directory (both generated over ``duration_s`` at their own rate
    with ``seed``), or a workload/trace file (read whole with ``load_trace``)."""
    from slobench.workload.generate import generate_workload

    if spec.startswith(PROFILE_PREFIX):
        from slobench.workload.profiles import load_profile

        name = spec[len(PROFILE_PREFIX):]
        table = generate_workload(load_profile(name), duration_s, seed=seed)
        return table, f"profile {name} ({duration_s:g} s, seed {seed})"
    path = Path(spec)
    if path.is_dir():
        from slobench.workload.servegen import load_pool

        try:
            pool = load_pool(path)
        except OSError as exc:
            raise UserError(f"{path}: cannot read the pool ({exc})") from None
        table = generate_workload(pool, duration_s, seed=seed)
        return table, f"pool {path} ({duration_s:g} s, seed {seed})"
    from slobench.workload.traces import load_trace

    if not path.exists():
        raise UserError(f"{spec}: no such file or directory; give a workload or trace file, a "
                        f"ServeGen pool directory or {PROFILE_PREFIX}NAME")
    try:
        return load_trace(path, fmt), str(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the file ({exc})") from None
