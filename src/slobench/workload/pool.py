"""Client pools: a client × window matrix of arrival statistics and per-client lengths.

A :class:`ClientPool` is immutable: its numpy arrays are flagged read-only, and every method that
changes something (``span``, ``filter``, ``top_k``, ``scaled``) returns a new pool that may share
the read-only arrays of the old one. Summaries return plain, JSON-serializable dicts.

Windows are 600 s long on the source grid, but a window may be partial after ``span`` (its
``window_dur`` is shorter): rates stay per second, so everything volume-related is weighted by the
window's duration.

Length distributions are kept sparse, CSR-style: for one field, row ``r = len_row * n_blocks +
block`` holds the values ``values[offsets[r]:offsets[r + 1]]`` and their cumulative probabilities
``cum[...]`` (ending at 1). Rows are (client, 6-hour block); extra rows past the clients hold
aggregates (e.g. the pool's aggregate lengths borrowed by clients without a dataset file).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from slobench.errors import UserError

WINDOW_S = 600.0
BLOCK_S = 21600.0

KINDS = ("language", "reason", "multimodal")
_GUIDE_CACHE_ENTRIES = 1 << 20  # SparseDist keeps a guide table this big (32 MB) at most
_SAMPLE_BLOCK = 1 << 14
# Gap families in the ``pattern`` matrix.
PATTERN_NONE, PATTERN_GAMMA, PATTERN_WEIBULL = 0, 1, 2
PATTERN_NAMES = {"": PATTERN_NONE, "Gamma": PATTERN_GAMMA, "Weibull": PATTERN_WEIBULL}


def frozen(a: np.ndarray) -> np.ndarray:
    """``a`` as a read-only array (a view when it already is one; never a writable alias)."""
    a = np.asarray(a)
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


@dataclass(frozen=True)
class SparseDist:
    """Sparse empirical distributions for many rows: CSR over rows (see module doc)."""

    offsets: np.ndarray  # int64, n_rows + 1
    values: np.ndarray  # float64
    cum: np.ndarray  # float64, cumulative probability within each row, ending at 1

    def __post_init__(self) -> None:
        for name in ("offsets", "values", "cum"):
            object.__setattr__(self, name, frozen(getattr(self, name)))

    @property
    def n_rows(self) -> int:
        return len(self.offsets) - 1

    def row_sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def probs(self) -> np.ndarray:
        """Per-entry probabilities (the differences of ``cum`` within each row), read-only."""
        cached = self.__dict__.get("_probs")
        if cached is not None:
            return cached
        p = np.diff(self.cum, prepend=0.0)
        starts = self.offsets[:-1][self.row_sizes() > 0]
        p[starts] = self.cum[starts]
        p = frozen(p)
        object.__setattr__(self, "_probs", p)
        return p

    def row(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[r], self.offsets[r + 1]
        return self.values[a:b], np.diff(self.cum[a:b], prepend=0.0)

    def sample_rows(self, rows: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Inverse-CDF samples: ``u[i]`` in [0, 1) drawn from row ``rows[i]`` (rows non-empty).

        Sample ``i`` is the first entry of its row whose cumulative probability exceeds ``u[i]``
        (monotone in ``u``, so one ``u`` shared by several fields gives rank-correlated draws).
        Only the rows in use are touched: a guide table over them (Chen's indexed search) gives
        each draw a start one or two entries before its answer, so a draw costs O(1) instead
        of a binary search.
        """
        rows = np.asarray(rows, dtype=np.int64)
        u = np.asarray(u, dtype=np.float64)
        if len(rows) == 0:
            return np.zeros(0, dtype=np.float64)
        if not (u.min() >= 0.0 and u.max() < 1.0):
            raise ValueError("sample_rows needs uniform numbers in [0, 1)")
        used, local = _compact_rows(rows, self.n_rows)
        start, values, cum, guide = self._guide(used)
        out = np.empty(len(rows), dtype=np.float64)
        left: list[tuple[np.ndarray, np.ndarray]] = []
        # In blocks of a few thousand draws: the temporaries stay small and are reused from
        # block to block (large fresh ones would cost a page fault per 4 KiB each time).
        for a in range(0, len(rows), _SAMPLE_BLOCK):
            b = a + _SAMPLE_BLOCK
            j, todo = _guided_walk(start, cum, guide, local[a:b], u[a:b])
            out[a:b] = values[j]
            if len(todo):
                left.append((todo + a, j[todo]))
        if left:  # the few draws still short of their answer finish by bisection
            todo = np.concatenate([t for t, _ in left])
            lo, uu = np.concatenate([j for _, j in left]), u[todo]
            hi = start[local[todo] + 1] - 1  # the row's last entry (cum = 1 > u)
            while np.any(lo < hi):
                mid = (lo + hi) >> 1
                right = cum[mid] <= uu
                lo = np.where(right, mid + 1, lo)
                hi = np.where(right, hi, mid)
            out[todo] = values[lo]
        return out

    def _guide(self, used: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """For the rows ``used``: (their starts in a compact copy, its values (float64), its
        cum, the guide table). The last one built is kept when small: the batches of a
        generation draw from the same rows."""
        key = used.tobytes()
        cached = self.__dict__.get("_guide_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        sizes = self.offsets[used + 1] - self.offsets[used]
        if np.any(sizes <= 0):
            raise AssertionError("sampling from an empty distribution row")
        start = np.zeros(len(used) + 1, dtype=np.int64)
        np.cumsum(sizes, out=start[1:])
        # Global index of each entry of the rows in use, in row order.
        gidx = np.repeat(self.offsets[used] - start[:-1], sizes) + np.arange(start[-1])
        cum = self.cum[gidx]
        size_of = np.repeat(sizes, sizes)
        # Guide: cell k of a row with m entries starts at the first entry j whose cum[j]·m
        # exceeds k (less a margin for rounding), so it never starts past the answer of a u in
        # [k/m, (k+1)/m). Entries are counted in whole numbers, so the table is exact.
        n_below = np.minimum(np.ceil(cum * size_of + 1e-6), size_of).astype(np.int64)
        guide = np.searchsorted(n_below + np.repeat(start[:-1], sizes), np.arange(start[-1]),
                                side="right")
        out = (start, self.values[gidx].astype(np.float64, copy=False), cum, guide)
        if start[-1] <= _GUIDE_CACHE_ENTRIES:
            object.__setattr__(self, "_guide_cache", (key, out))
        return out

    @staticmethod
    def from_rows(rows: list[tuple[np.ndarray, np.ndarray]]) -> SparseDist:
        """Build from (values, probabilities) per row; probabilities are normalized per row."""
        sizes = np.array([len(v) for v, _ in rows], dtype=np.int64)
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        values = np.concatenate([v for v, _ in rows]) if rows else np.zeros(0)
        probs = np.concatenate([p for _, p in rows]) if rows else np.zeros(0)
        return SparseDist(offsets, values.astype(np.float64), _row_cumsum(probs, offsets))


def _guided_walk(start: np.ndarray, cum: np.ndarray, guide: np.ndarray, local: np.ndarray,
                 u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each draw (in the compact rows of :meth:`SparseDist._guide`): an entry ``j`` of row
    ``local`` at or before the first one whose cumulative probability exceeds ``u``, and the
    draws not there yet (``cum[j] <= u``), after at most two steps forward from the guide."""
    # The guide cell: start of the row + floor(u · row size), at most the row's last cell.
    first = start[local]
    size = start[local + 1] - first
    cell = (u * size).astype(np.int64)
    np.minimum(cell, size - 1, out=cell)
    cell += first
    j = guide[cell]
    todo = np.flatnonzero(cum[j] <= u)
    for _ in range(2):
        if not len(todo):
            break
        j[todo] += 1
        todo = todo[cum[j[todo]] <= u[todo]]
    return j, todo


def _compact_rows(rows: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct rows in ``rows``, sorted; each element's index among them), without a sort
    of ``rows`` itself."""
    mark = np.zeros(n_rows, dtype=bool)
    mark[rows] = True
    used = np.flatnonzero(mark)
    local_of = np.zeros(n_rows, dtype=np.int64)
    local_of[used] = np.arange(len(used))
    return used, local_of[rows]


def _row_cumsum(probs: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Cumulative sums of ``probs`` restarting at each row, normalized to end at 1."""
    probs = np.asarray(probs, dtype=np.float64)
    sizes = np.diff(offsets)
    if len(probs) == 0:
        return np.zeros(0, dtype=np.float64)
    total = np.cumsum(probs)
    before = np.concatenate([[0.0], total])[offsets[:-1]]
    cum = total - np.repeat(before, sizes)
    row_tot = np.repeat(cum[np.maximum(offsets[1:] - 1, 0)], sizes)
    with np.errstate(invalid="ignore", divide="ignore"):
        cum = np.where(row_tot > 0, cum / row_tot, 0.0)
    # Force the exact 1 at each row end so a uniform draw in [0, 1) always lands in the row.
    ends = offsets[1:][sizes > 0] - 1
    cum[ends] = 1.0
    return cum


def mix_rows(dist: SparseDist, rows: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray,
                                                                               np.ndarray]:
    """The mixture of ``rows`` with ``weights`` as (sorted unique values, probabilities)."""
    rows = np.asarray(rows, dtype=np.int64)
    weights = np.asarray(weights, dtype=np.float64)
    keep = (weights > 0) & (dist.row_sizes()[rows] > 0)
    rows, weights = rows[keep], weights[keep]
    if len(rows) == 0:
        return np.zeros(0), np.zeros(0)
    sizes = dist.row_sizes()[rows]
    starts = dist.offsets[rows]
    idx = np.repeat(starts - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes) + np.arange(
        sizes.sum()
    )
    p = dist.probs()[idx] * np.repeat(weights / weights.sum(), sizes)
    values, inv = np.unique(dist.values[idx], return_inverse=True)
    probs = np.bincount(inv, weights=p, minlength=len(values))
    return values, probs / probs.sum()


@dataclass(frozen=True)
class LengthTable:
    """Per-field sparse distributions over rows (client or aggregate) × 6-hour blocks."""

    fields: Mapping[str, SparseDist]
    n_rows: int
    n_blocks: int
    block_s: float = BLOCK_S

    def row_index(self, len_row: np.ndarray, block: np.ndarray) -> np.ndarray:
        return np.asarray(len_row, dtype=np.int64) * self.n_blocks + np.asarray(block, np.int64)


def _check_matrix(name: str, a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    a = np.asarray(a)
    if a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}, expected {shape}")
    return frozen(a)


@dataclass(frozen=True)
class ClientPool:
    """A client × window matrix of arrival statistics plus per-client length distributions.

    ``rates`` (req/s), ``cvs`` (inter-arrival CV), ``pattern`` (0 idle, 1 Gamma, 2 Weibull),
    ``shape`` and ``scale`` (the gap distribution's parameters, scale in seconds) are
    ``(n_clients, n_windows)``. ``window_start`` is each window's start on the source's clock and
    ``window_dur`` its length (600 s, less for a partial window at either end of a span).
    ``len_row[c]`` is client c's row in ``lengths`` and ``block[w]`` window w's 6-hour block.
    """

    name: str
    kind: str
    client_ids: np.ndarray
    window_start: np.ndarray
    window_dur: np.ndarray
    rates: np.ndarray
    cvs: np.ndarray
    pattern: np.ndarray
    shape: np.ndarray
    scale: np.ndarray
    lengths: LengthTable
    len_row: np.ndarray
    block: np.ndarray
    borrowed: tuple[str, ...] = ()
    report: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"pool kind {self.kind!r} is not one of {KINDS}")
        c, w = len(self.client_ids), len(self.window_start)
        object.__setattr__(self, "client_ids", frozen(np.asarray(self.client_ids, dtype=str)))
        for name in ("window_start", "window_dur", "len_row", "block"):
            object.__setattr__(self, name, frozen(getattr(self, name)))
        for name in ("rates", "cvs", "pattern", "shape", "scale"):
            object.__setattr__(self, name, _check_matrix(name, getattr(self, name), (c, w)))
        if len(self.window_dur) != w or len(self.block) != w or len(self.len_row) != c:
            raise ValueError("window_dur/block/len_row do not match the matrix shape")

    # --- shape -----------------------------------------------------------------------------

    @property
    def n_clients(self) -> int:
        return len(self.client_ids)

    @property
    def n_windows(self) -> int:
        return len(self.window_start)

    @property
    def duration_s(self) -> float:
        return float(self.window_dur.sum())

    @property
    def start_s(self) -> float:
        return float(self.window_start[0]) if self.n_windows else 0.0

    @property
    def end_s(self) -> float:
        return float(self.window_start[-1] + self.window_dur[-1]) if self.n_windows else 0.0

    def requests(self) -> np.ndarray:
        """Expected requests per (client, window): rate × window duration (read-only)."""
        return frozen(self.rates * self.window_dur[None, :])

    def aggregate_rate(self) -> np.ndarray:
        """The pool's total request rate per window (req/s)."""
        return frozen(self.rates.sum(axis=0))

    def mean_rate(self) -> float:
        """The time-averaged aggregate rate over the pool's span (req/s)."""
        d = self.duration_s
        return float(self.requests().sum() / d) if d > 0 else 0.0

    # --- new pools -------------------------------------------------------------------------

    def _select_clients(self, keep: np.ndarray) -> ClientPool:
        keep = np.asarray(keep)
        if keep.dtype == bool:
            keep = np.flatnonzero(keep)
        if len(keep) == 0:
            raise UserError(f"pool {self.name}: no client is left after the selection; "
                            "loosen the filter")
        ids = self.client_ids[keep]
        return replace(
            self,
            client_ids=ids,
            rates=self.rates[keep],
            cvs=self.cvs[keep],
            pattern=self.pattern[keep],
            shape=self.shape[keep],
            scale=self.scale[keep],
            len_row=self.len_row[keep],
            borrowed=tuple(c for c in self.borrowed if c in set(ids.tolist())),
        )

    def span(self, start_s: float, end_s: float) -> ClientPool:
        """The pool between ``start_s`` and ``end_s`` (the source clock, any values, not only
        multiples of 600 s): windows cut at either end become partial (shorter ``window_dur``)."""
        start_s, end_s = float(start_s), float(end_s)
        if not (math.isfinite(start_s) and math.isfinite(end_s)) or end_s <= start_s:
            raise UserError(f"span {start_s:g}..{end_s:g} s is empty; give start < end")
        lo = np.maximum(self.window_start, start_s)
        hi = np.minimum(self.window_start + self.window_dur, end_s)
        keep = np.flatnonzero(hi > lo)
        if len(keep) == 0:
            raise UserError(
                f"span {start_s:g}..{end_s:g} s is outside pool {self.name} "
                f"({self.start_s:g}..{self.end_s:g} s); give a span inside it"
            )
        return replace(
            self,
            window_start=lo[keep],
            window_dur=(hi - lo)[keep],
            rates=self.rates[:, keep],
            cvs=self.cvs[:, keep],
            pattern=self.pattern[:, keep],
            shape=self.shape[:, keep],
            scale=self.scale[:, keep],
            block=self.block[keep],
        )

    def filter(
        self,
        *,
        min_rate: float | None = None,
        max_rate: float | None = None,
        min_cv: float | None = None,
        max_cv: float | None = None,
        min_mean_input: float | None = None,
        max_mean_input: float | None = None,
        min_mean_output: float | None = None,
        max_mean_output: float | None = None,
    ) -> ClientPool:
        """Clients whose mean rate (req/s over the span), volume-weighted mean inter-arrival CV
        and volume-weighted mean input/output length lie within the given bounds."""
        stats = self._client_stats()
        keep = np.ones(self.n_clients, dtype=bool)

        def bound(values: np.ndarray, lo: float | None, hi: float | None) -> None:
            nonlocal keep
            with np.errstate(invalid="ignore"):
                if lo is not None:
                    keep &= values >= lo
                if hi is not None:
                    keep &= values <= hi

        bound(stats["rate"], min_rate, max_rate)
        bound(stats["cv"], min_cv, max_cv)
        bound(stats["mean_input"], min_mean_input, max_mean_input)
        bound(stats["mean_output"], min_mean_output, max_mean_output)
        return self._select_clients(keep)

    def top_k(self, k: int) -> ClientPool:
        """The ``k`` clients with the most requests over the span (ties by order)."""
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise UserError(f"top-k {k!r} must be a whole number >= 1")
        vol = self.requests().sum(axis=1)
        order = np.argsort(-vol, kind="stable")[: int(k)]
        return self._select_clients(np.sort(order))

    def clients(self, ids: list[str]) -> ClientPool:
        """The named clients, in pool order."""
        want = set(ids)
        unknown = want - set(self.client_ids.tolist())
        if unknown:
            raise UserError(f"pool {self.name} has no client(s) {sorted(unknown)}")
        return self._select_clients(np.isin(self.client_ids, list(want)))

    # --- statistics ------------------------------------------------------------------------

    def _mean_length(self, field_name: str) -> np.ndarray:
        d = self.lengths.fields.get(field_name)
        out = np.full(self.n_clients, np.nan)
        if d is None:
            return out
        p = d.probs()
        row_mean = np.bincount(
            np.repeat(np.arange(d.n_rows), d.row_sizes()), weights=p * d.values,
            minlength=d.n_rows,
        )
        has = d.row_sizes() > 0
        rows = self.lengths.row_index(self.len_row[:, None], self.block[None, :])
        w = self.requests() * has[rows]
        tot = w.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(tot > 0, (w * row_mean[rows]).sum(axis=1) / tot, np.nan)
        return out

    def _input_field(self) -> str:
        return "text_tokens" if self.kind == "multimodal" else "input_tokens"

    def _client_stats(self) -> dict[str, np.ndarray]:
        req = self.requests()
        vol = req.sum(axis=1)
        d = self.duration_s
        with np.errstate(invalid="ignore", divide="ignore"):
            cv = np.where(vol > 0, (req * self.cvs).sum(axis=1) / vol, np.nan)
        return {
            "rate": vol / d if d > 0 else np.zeros(self.n_clients),
            "cv": cv,
            "mean_input": self._mean_length(self._input_field()),
            "mean_output": self._mean_length("output_tokens"),
        }

    def length_mix(self, field_name: str, *, clients: np.ndarray | None = None) -> tuple[
        np.ndarray, np.ndarray
    ]:
        """The request-weighted mixture of a length field over the span (values, probabilities)."""
        d = self.lengths.fields.get(field_name)
        if d is None:
            raise UserError(f"pool {self.name} ({self.kind}) has no length field {field_name!r}")
        sel = np.arange(self.n_clients) if clients is None else np.asarray(clients)
        rows = self.lengths.row_index(self.len_row[sel][:, None], self.block[None, :])
        return mix_rows(d, rows.ravel(), self.requests()[sel].ravel())

    def summary(self, *, percentiles: tuple[float, ...] = (50, 90, 99)) -> dict[str, object]:
        """JSON-serializable facts: span, aggregate rate over time, client shares, CV, lengths."""
        req = self.requests()
        total = float(req.sum())
        stats = self._client_stats()
        share = req.sum(axis=1) / total if total > 0 else np.zeros(self.n_clients)
        agg = self.aggregate_rate()
        with np.errstate(invalid="ignore", divide="ignore"):
            agg_cv = np.where(agg > 0, (self.rates * self.cvs).sum(axis=0) / agg, np.nan)
        lengths: dict[str, object] = {}
        for name in self.lengths.fields:
            values, probs = self.length_mix(name)
            lengths[name] = _dist_facts(values, probs, percentiles)
        order = np.argsort(-share, kind="stable")
        return {
            "name": self.name,
            "kind": self.kind,
            "clients": self.n_clients,
            "windows": self.n_windows,
            "start_s": self.start_s,
            "end_s": self.end_s,
            "requests": total,
            "mean_rate_rps": self.mean_rate(),
            "peak_rate_rps": float(agg.max()) if self.n_windows else 0.0,
            "rate_over_time": {
                "window_start_s": self.window_start.tolist(),
                "rate_rps": agg.tolist(),
                "cv": [None if math.isnan(x) else float(x) for x in agg_cv],
            },
            "client_share": {str(self.client_ids[i]): float(share[i]) for i in order},
            "top10_share": float(share[order[:10]].sum()),
            "client_cv": {
                str(self.client_ids[i]): _num(stats["cv"][i]) for i in order
            },
            "lengths": lengths,
            "borrowed_lengths": list(self.borrowed),
        }


def _num(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def _dist_facts(values: np.ndarray, probs: np.ndarray, percentiles: tuple[float, ...]) -> dict[
    str, object
]:
    if len(values) == 0:
        return {"mean": None, **{f"p{q:g}": None for q in percentiles}}
    order = np.argsort(values)
    v, c = values[order], np.cumsum(probs[order])
    out: dict[str, object] = {"mean": float((v * probs[order]).sum())}
    for q in percentiles:
        i = min(int(np.searchsorted(c, q / 100.0 - 1e-12)), len(v) - 1)
        out[f"p{q:g}"] = float(v[i])
    return out
