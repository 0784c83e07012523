"""Describe one Workload table: volume, rate over time, burstiness across time scales, who sends
it, how long the requests are, sessions, images and prefix reuse.

Pure statistics: :func:`inspect_workload` takes a Workload table (``schema.WORKLOAD_SCHEMA``) and
returns a plain, JSON-serializable dict (undefined values are ``None``, never NaN). Everything is
vectorized with numpy / pyarrow, so a million-request trace takes well under a second. The dict
also carries the small, downsampled series the figures need (rate per bin, length CDFs and
histograms), so a report never touches the raw table again.

Burstiness. ``interarrival.cv`` is std/mean of the gaps between sorted arrivals (1 for Poisson, 0
for constant pacing, above 1 for bursty traffic). Gaps alone miss burstiness that lives at longer
scales (a rate that swings over minutes), so ``scales`` also counts requests in consecutive
windows of 1 s, 10 s, 60 s and 600 s and reports, per window size: the CV of the counts (for
Poisson traffic ``1/sqrt(mean count)``, given as ``poisson_cv``) and the index of dispersion
``variance / mean`` of the counts (1 for Poisson at every scale; above 1 means burstier than
Poisson at that scale). Only whole windows inside the span are counted; a scale with fewer than
two whole windows is ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from slobench.schema import string_codes as _codes
from slobench.slo.stats import percentiles

DEFAULT_SCALES_S: tuple[float, ...] = (1.0, 10.0, 60.0, 600.0)
LENGTH_QS: tuple[float, ...] = (50, 90, 99)
TOP_CLIENTS = 10
TOP_CLIENTS_OVER_TIME = 5
MAX_RATE_BINS = 120
MIN_RATE_BINS = 10
# A rate bin should hold about this many requests on average (when the span allows it).
TARGET_PER_BIN = 10
_NICE_BINS_S = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900,
                1800, 3600, 7200, 10800, 21600, 43200, 86400)
_CDF_POINTS = 201
_HIST_BINS = 40


def inspect_workload(table: pa.Table, *, scales_s: Sequence[float] = DEFAULT_SCALES_S,
                     top_clients: int = TOP_CLIENTS) -> dict[str, Any]:
    """All the facts about one Workload table, as a JSON-serializable dict (see module doc)."""
    n = table.num_rows
    arrival = table["arrival_s"].to_numpy().astype(np.float64, copy=False)
    order = np.argsort(arrival, kind="stable")
    arrival = arrival[order]
    if n and not np.array_equal(order, np.arange(n)):
        table = table.take(pa.array(order))
    first = float(arrival[0]) if n else 0.0
    last = float(arrival[-1]) if n else 0.0
    span = last - first
    inp = _ints(table, "input_tokens")
    out = _ints(table, "output_tokens")
    reason = _ints(table, "reasoning_tokens")
    tokens = inp + out
    client = _codes(table["client_id"])
    result: dict[str, Any] = {
        "requests": n,
        "first_arrival_s": first,
        "last_arrival_s": last,
        "span_s": span,
        "mean_rate_rps": (n - 1) / span if n > 1 and span > 0 else None,
        "interarrival": interarrival_stats(arrival),
        "scales": burstiness_by_scale(arrival, scales_s),
        "rate_over_time": rate_over_time(arrival, client_codes=client[0],
                                         client_names=client[1]),
        "clients": shares(client[0], client[1], tokens, top=top_clients),
        "apps": shares(*_codes(table["app"]), tokens, top=None),
        "tokens": {
            "input": length_stats(inp),
            "output": length_stats(out),
            # Over the requests that reason (most requests of a mixed workload have none).
            "reasoning": length_stats(reason[reason > 0]) if reason.any() else None,
            "reasoning_share": float((reason > 0).mean()) if n else None,
            "total_input": int(inp.sum()),
            "total_output": int(out.sum()),
            "total_reasoning": int(reason.sum()),
        },
        "images": image_stats(table["image_tokens"]),
        "sessions": session_stats(table),
        "prefix": prefix_reuse(table["prefix_blocks"]),
    }
    return _clean(result)


# ----------------------------------------------------------------------------- arrivals


def interarrival_stats(arrival: np.ndarray) -> dict[str, Any]:
    """Gaps between sorted arrivals: count, mean, CV (std/mean) and percentiles."""
    gaps = np.diff(np.sort(np.asarray(arrival, dtype=np.float64)))
    mean = float(gaps.mean()) if gaps.size else None
    cv = float(gaps.std() / gaps.mean()) if gaps.size and gaps.mean() > 0 else None
    pct = percentiles(gaps, LENGTH_QS)
    return {"count": int(gaps.size), "mean_s": mean, "cv": cv, "p50_s": pct["p50"],
            "p99_s": pct["p99"], "max_s": pct["max"]}


def burstiness_by_scale(arrival: np.ndarray, scales_s: Sequence[float] = DEFAULT_SCALES_S
                        ) -> list[dict[str, Any]]:
    """Per window size: whole windows counted, mean count, CV of counts (observed and Poisson)
    and the index of dispersion var/mean. Windows start at the first arrival."""
    arr = np.sort(np.asarray(arrival, dtype=np.float64))
    out: list[dict[str, Any]] = []
    span = float(arr[-1] - arr[0]) if arr.size else 0.0
    for w in scales_s:
        w = float(w)
        k = math.floor(span / w) if w > 0 else 0
        row: dict[str, Any] = {"window_s": w, "windows": k, "mean_count": None, "cv": None,
                               "poisson_cv": None, "dispersion": None}
        counts = window_counts(arr, w)
        if counts is not None:
            mean = float(counts.mean())
            var = float(counts.var())
            row["mean_count"] = mean
            if mean > 0:
                row["cv"] = math.sqrt(var) / mean
                row["poisson_cv"] = 1.0 / math.sqrt(mean)
                row["dispersion"] = var / mean
        out.append(row)
    return out


def window_counts(sorted_arrival: np.ndarray, window_s: float) -> np.ndarray | None:
    """Requests in each consecutive whole window of ``window_s`` from the first arrival (the
    partial window at the end is dropped); ``None`` when fewer than two whole windows fit."""
    arr = sorted_arrival
    span = float(arr[-1] - arr[0]) if arr.size else 0.0
    k = math.floor(span / window_s) if window_s > 0 else 0
    if k < 2:
        return None
    idx = np.floor((arr - arr[0]) / window_s).astype(np.int64)
    return np.bincount(idx[idx < k], minlength=k).astype(np.float64)


def choose_bin_s(span_s: float, n: int) -> float:
    """A round bin width for the rate-over-time series: at most MAX_RATE_BINS bins, about
    TARGET_PER_BIN requests per bin where the span allows, and at least MIN_RATE_BINS bins."""
    if span_s <= 0 or n < 2:
        return 1.0
    rate = (n - 1) / span_s
    lo, hi = span_s / MAX_RATE_BINS, span_s / MIN_RATE_BINS
    want = max(lo, min(TARGET_PER_BIN / rate, hi))
    above = [w for w in _NICE_BINS_S if w >= want]
    if above and above[0] <= hi:
        return float(above[0])
    below = [w for w in _NICE_BINS_S if lo <= w <= hi]
    if below:  # rounding up would leave too few bins: round down instead
        return float(below[-1])
    return float(above[0]) if above else float(math.ceil(want / 86400) * 86400)


def rate_over_time(arrival: np.ndarray, *, bin_s: float | None = None,
                   client_codes: np.ndarray | None = None,
                   client_names: Sequence[str] | None = None,
                   top: int = TOP_CLIENTS_OVER_TIME) -> dict[str, Any]:
    """Requests per bin (and per second) from the first arrival's bin on; bins are aligned to
    multiples of ``bin_s`` (chosen from the span when not given). With client codes, also the
    counts of the ``top`` clients by volume per bin and the rest (``by_client``). The last bin
    may be partly empty (the workload ends inside it): ``last_bin_fraction`` says how much of it
    the span covers."""
    arr = np.sort(np.asarray(arrival, dtype=np.float64))
    n = arr.size
    if n == 0:
        return {"bin_s": 1.0, "start_s": 0.0, "counts": [], "rate_rps": [], "peak_rps": None,
                "last_bin_fraction": None, "by_client": {}}
    span = float(arr[-1] - arr[0])
    w = float(bin_s) if bin_s else choose_bin_s(span, n)
    start = math.floor(arr[0] / w) * w
    idx = np.floor((arr - start) / w).astype(np.int64)
    nbins = int(idx.max()) + 1
    counts = np.bincount(idx, minlength=nbins)
    last_fraction = min(1.0, (float(arr[-1]) - (start + (nbins - 1) * w)) / w)
    result: dict[str, Any] = {
        "bin_s": w,
        "start_s": float(start),
        "counts": counts.tolist(),
        "rate_rps": (counts / w).tolist(),
        "peak_rps": float(counts.max() / w),
        "last_bin_fraction": last_fraction,
        "by_client": {},
    }
    if client_codes is not None and client_names is not None:
        codes = np.asarray(client_codes)
        # The arrival array was sorted; the codes must follow the same order.
        codes = codes[np.argsort(np.asarray(arrival, dtype=np.float64), kind="stable")]
        per_client = np.bincount(codes, minlength=len(client_names))
        ranked = _rank(per_client, client_names)
        by_client: dict[str, list[int]] = {}
        keep = ranked[:top]
        for c in keep:
            by_client[str(client_names[c])] = np.bincount(idx[codes == c],
                                                          minlength=nbins).tolist()
        if len(ranked) > top:
            rest = ~np.isin(codes, keep)
            by_client["(rest)"] = np.bincount(idx[rest], minlength=nbins).tolist()
        result["by_client"] = by_client
    return result


# ----------------------------------------------------------------------------- composition


def shares(codes: np.ndarray, names: Sequence[str], tokens: np.ndarray | None = None, *,
           top: int | None = TOP_CLIENTS) -> dict[str, Any]:
    """Requests and tokens (input + output) per category, largest first: ``top`` entries and
    the rest summed (``rest``: how many categories, requests, shares); ``None`` keeps all."""
    codes = np.asarray(codes)
    n = codes.size
    count = np.bincount(codes, minlength=len(names))
    tok = (np.bincount(codes, weights=tokens, minlength=len(names)) if tokens is not None
           else np.zeros(len(names)))
    total_tok = float(tok.sum())
    ranked = _rank(count, names)
    keep = ranked if top is None else ranked[:top]
    rest = ranked[len(keep):]

    def entry(req: int, t: float) -> dict[str, Any]:
        return {"requests": int(req), "share": req / n if n else None,
                "token_share": t / total_tok if total_tok > 0 else None}

    top_list = [{"name": str(names[c]), **entry(count[c], tok[c])} for c in keep]
    rest_entry = None
    if len(rest):
        rest_entry = {"count": len(rest), **entry(count[rest].sum(), tok[rest].sum())}
    top1 = top_list[0]["share"] if top_list else None
    return {"distinct": int((count > 0).sum()), "top": top_list, "rest": rest_entry,
            "largest_share": top1}


def length_stats(values: np.ndarray) -> dict[str, Any]:
    """p50/p90/p99/max/mean/count (the project's percentile function), plus a CDF sampled at
    ``_CDF_POINTS`` probabilities and a log-spaced histogram, small enough for a report."""
    arr = np.asarray(values, dtype=np.float64)
    out = percentiles(arr, LENGTH_QS)
    if arr.size == 0:
        out["cdf"] = {"p": [], "x": []}
        out["histogram"] = {"edges": [], "counts": []}
        return out
    p = np.linspace(0.0, 1.0, _CDF_POINTS)
    out["cdf"] = {"p": p.tolist(), "x": np.quantile(arr, p).tolist()}
    lo = max(1.0, float(arr.min()))
    hi = max(lo * 1.0001, float(arr.max()) + 1)
    edges = np.unique(np.round(np.geomspace(lo, hi, _HIST_BINS + 1)))
    if edges.size < 2:
        edges = np.array([lo, hi])
    edges[0] = min(edges[0], float(arr.min()))
    counts, _ = np.histogram(arr, bins=edges)
    out["histogram"] = {"edges": edges.tolist(), "counts": counts.tolist()}
    return out


def image_stats(col: pa.ChunkedArray | pa.Array) -> dict[str, Any] | None:
    """Images per request and tokens per image; ``None`` when no request carries an image."""
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    lengths = np.nan_to_num(lengths.astype(np.float64))
    if not lengths.any():
        return None
    flat = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float64)
    with_images = lengths > 0
    return {
        "requests_with_images": int(with_images.sum()),
        "share_with_images": float(with_images.mean()),
        "images": int(lengths.sum()),
        "images_per_request": (percentiles(lengths[with_images], LENGTH_QS)),
        "tokens_per_image": (percentiles(flat, LENGTH_QS)),
    }


def session_stats(table: pa.Table) -> dict[str, Any] | None:
    """Sessions with more than one request: how many, turns per session, think times, the share
    of requests that are follow-ups. ``None`` when every request stands alone (an empty
    ``session_id`` counts as its own session)."""
    sid = table["session_id"]
    nonempty = pc.not_equal(sid, "")
    ids = pc.filter(sid, nonempty)
    if len(ids) == 0:
        return None
    codes, names = _codes(ids)
    per_session = np.bincount(codes, minlength=len(names))
    multi = per_session > 1
    if not multi.any():
        return None
    turn = table["turn"].to_numpy()
    think = table["think_s"].to_numpy().astype(np.float64)
    follow = turn > 0
    n = table.num_rows
    return {
        "sessions": len(names),
        "multi_turn_sessions": int(multi.sum()),
        "requests_in_multi_turn": int(per_session[multi].sum()),
        "followup_share": float(follow.sum() / n) if n else None,
        "turns_per_session": (percentiles(per_session, LENGTH_QS)),
        "turns_per_multi_turn_session": (percentiles(per_session[multi], LENGTH_QS)),
        "think_s": (percentiles(think[follow], LENGTH_QS)) if follow.any() else None,
    }


def prefix_reuse(col: pa.ChunkedArray | pa.Array) -> dict[str, Any] | None:
    """How much KV could be reused, in arrival order (the table must be sorted by arrival).

    ``first_block_reuse``: of the requests with prefix blocks, the share whose first block
    appeared in an earlier request (anywhere in its block list). ``block_reuse``: the share of
    all blocks that appeared earlier, i.e. the hit ratio of an unbounded prefix cache.
    ``None`` when no request has prefix blocks."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    lengths = np.nan_to_num(lengths.astype(np.float64)).astype(np.int64)
    if not lengths.any():
        return None
    flat = pc.list_flatten(col).to_numpy(zero_copy_only=False)
    row = np.repeat(np.arange(lengths.size), lengths)
    _, inverse = np.unique(flat, return_inverse=True)
    inverse = inverse.ravel()
    # First row in which each distinct block appears: flat is in row order.
    first_row = np.full(int(inverse.max()) + 1, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_row, inverse, row)
    seen_before = first_row[inverse] < row
    has = lengths > 0
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))[has]
    first_reused = seen_before[starts]
    return {
        "requests_with_prefix": int(has.sum()),
        "blocks": int(flat.size),
        "distinct_blocks": int(first_row.size),
        "blocks_per_request": (percentiles(lengths[has], LENGTH_QS)),
        "first_block_reuse": float(first_reused.mean()),
        "block_reuse": float(seen_before.mean()),
    }


# ----------------------------------------------------------------------------- helpers


def _ints(table: pa.Table, name: str) -> np.ndarray:
    return table[name].to_numpy().astype(np.int64, copy=False)


def _rank(counts: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Indices by count descending, then name ascending; categories with no requests dropped."""
    idx = np.nonzero(counts)[0]
    return idx[np.lexsort((np.asarray(names, dtype=object)[idx].astype(str), -counts[idx]))]


def _clean(obj: Any) -> Any:
    """NaN / inf -> None, numpy scalars -> Python, recursively (the result is strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
