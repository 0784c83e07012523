"""Generate a Workload from a client pool by per-client composition under a rate function.

The aggregate rate follows a rate function ``R(t)``; within each pool window the aggregate is split
among clients by their share of the window's rate, and each client's arrivals follow its own gap
distribution (Gamma or Weibull with the window's CV/shape). Pool windows are laid end to end from
the generation's time 0 (cyclically when the duration is longer than the pool's span); ``R`` may
change at any time, not only on the 600 s grid.

Arrival modes:

- ``renewal`` (default): each client is one renewal process in its own rescaled time
  ``Λ_c(t) = ∫ share_c · R``; the process carries across window boundaries (the pending arrival is
  kept; a window where the client is idle simply pauses its clock), so counts per window vary as a
  real process's do.
- ``servegen``: the reference behaviour: a fixed count ``round(mass)`` per client-window, gaps drawn
  from the window's distribution and rescaled to fill the window (restarting at each boundary).

Fields are sampled from independent random streams (one per field, derived from the seed by name);
``correlated=True`` reuses one uniform number per request for every field, as the reference does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from numpy.random import SeedSequence, default_rng

from slobench.errors import UserError
from slobench.schema import WORKLOAD_SCHEMA, conform_workload
from slobench.workload.arrivals import (
    MAX_ARRIVALS,
    RateFunction,
    arrival_times,
    as_rate_function,
)
from slobench.workload.pool import PATTERN_WEIBULL, ClientPool, SparseDist

MODES = ("renewal", "servegen")
# Arrow's default allocator (mimalloc) holds on to freed memory; the system allocator returns it.
_POOL = pa.system_memory_pool()
DEFAULT_APP = {"language": "chatbot", "reason": "reasoning", "multimodal": "chatbot"}
STREAMS = ("arrivals", "input_tokens", "output_tokens", "reason_ratio", "image_count",
           "image_tokens", "correlated")
RATE_SPEC_FORMS = (
    "trace (the pool's own rates), trace*2 (scaled), peak:50 (trace scaled to a peak of 50 "
    "req/s), file:rates.csv (time_s,rate rows), a number (constant req/s), ramp:1..20/60s or "
    "step:2+2/30s..20"
)


@dataclass(frozen=True)
class PiecewiseRate:
    """A piecewise-constant rate: ``rates[i]`` req/s (>= 0) on ``[knots[i], knots[i+1])``; the
    last rate holds after the last knot. Zero-rate pieces have no arrivals."""

    knots: np.ndarray
    rates: np.ndarray

    def __post_init__(self) -> None:
        k = np.asarray(self.knots, dtype=np.float64)
        r = np.asarray(self.rates, dtype=np.float64)
        if len(k) != len(r) + 1 or len(r) == 0:
            raise UserError("piecewise rate: need one more knot than rates")
        if np.any(np.diff(k) <= 0) or not np.all(np.isfinite(k)):
            raise UserError("piecewise rate: times must be finite and increasing")
        if np.any(r < 0) or not np.all(np.isfinite(r)):
            raise UserError("piecewise rate: rates must be finite numbers >= 0")
        if k[0] != 0:
            raise UserError("piecewise rate: the first time must be 0")
        object.__setattr__(self, "knots", k)
        object.__setattr__(self, "rates", r)
        object.__setattr__(self, "_cum", np.concatenate([[0.0], np.cumsum(r * np.diff(k))]))

    def rate(self, t: np.ndarray | float) -> np.ndarray:
        i = np.clip(np.searchsorted(self.knots, t, side="right") - 1, 0, len(self.rates) - 1)
        return self.rates[i]

    def integral(self, t: np.ndarray | float) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        i = np.clip(np.searchsorted(self.knots, t, side="right") - 1, 0, len(self.rates) - 1)
        return self._cum[i] + self.rates[i] * (t - self.knots[i])  # type: ignore[attr-defined]

    def inverse_integral(self, y: np.ndarray | float) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        cum = self._cum  # type: ignore[attr-defined]
        i = np.clip(np.searchsorted(cum, y, side="right") - 1, 0, len(self.rates) - 1)
        r = self.rates[i]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = self.knots[i] + np.where(r > 0, (y - cum[i]) / r, np.inf)
        return t

    def describe(self) -> str:
        return f"piecewise rate, {len(self.rates)} pieces, peak {self.rates.max():g} req/s"


def read_rate_file(path: str | Path) -> PiecewiseRate:
    """``time_s,rate`` rows (a header line is allowed) → a :class:`PiecewiseRate`."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UserError(
            f"{path}: cannot read the rate file ({exc.strerror}); check the path"
        ) from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: the rate file is not UTF-8 text (byte {exc.start}); fix it"
                        ) from None
    times, rates = [], []
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = [p.strip() for p in line.split(",")]
        try:
            if len(parts) != 2:
                raise ValueError
            t, r = float(parts[0]), float(parts[1])
        except ValueError:
            if lineno == 1 and not times:
                continue  # header
            raise UserError(f"{path}:{lineno}: expected 'time_s,rate' numbers, got "
                            f"{line[:40]!r}; fix the line") from None
        if not (math.isfinite(t) and math.isfinite(r)) or r < 0 or t < 0:
            raise UserError(f"{path}:{lineno}: time and rate must be finite numbers >= 0")
        if times and t <= times[-1]:
            raise UserError(f"{path}:{lineno}: times must increase; fix the order")
        times.append(t)
        rates.append(r)
    if not times:
        raise UserError(f"{path}: the rate file has no 'time_s,rate' row")
    if times[0] != 0:
        times.insert(0, 0.0)
        rates.insert(0, 0.0)
    return PiecewiseRate(np.array([*times, times[-1] + 1.0]), np.array(rates))


# ---------------------------------------------------------------------------------------------
# Windows of the generation


@dataclass(frozen=True)
class _Plan:
    start: np.ndarray  # generation time of each window
    end: np.ndarray
    pool_w: np.ndarray  # the pool window it composes from (after the zero-traffic fallback)
    agg: np.ndarray  # the pool's aggregate rate in that pool window


def _plan(pool: ClientPool, duration_s: float) -> _Plan:
    if pool.n_windows == 0:
        raise UserError(f"pool {pool.name} has no window")
    reps = max(1, math.ceil(duration_s / max(pool.duration_s, 1e-9)))
    w = np.tile(np.arange(pool.n_windows), reps)
    dur = np.tile(pool.window_dur, reps)
    end = np.cumsum(dur)
    start = end - dur
    keep = start < duration_s
    w, start, end = w[keep], start[keep], np.minimum(end[keep], duration_s)
    return _Plan(start, end, w, pool.aggregate_rate()[w])


def _composition_windows(pool: ClientPool, plan: _Plan) -> np.ndarray:
    """The pool window each generation window takes its client mix from: itself when it has
    traffic, else the nearest earlier active window (else the nearest later one)."""
    agg = pool.aggregate_rate()
    active = np.flatnonzero(agg > 0)
    if len(active) == 0:
        raise UserError(f"pool {pool.name} has no traffic in its span; choose another span")
    i = np.searchsorted(active, plan.pool_w, side="right") - 1
    prev = active[np.maximum(i, 0)]
    nxt = active[np.minimum(i + 1, len(active) - 1)]
    return np.where(agg[plan.pool_w] > 0, plan.pool_w, np.where(i >= 0, prev, nxt))


def resolve_rate(pool: ClientPool, rate: RateFunction | str | float | None,
                 duration_s: float) -> RateFunction:
    """The aggregate rate function: see ``RATE_SPEC_FORMS``; ``None`` means the pool's own."""
    plan = _plan(pool, duration_s)
    trace = PiecewiseRate(np.concatenate([plan.start, [plan.end[-1]]]), plan.agg)
    if rate is None:
        return trace
    if isinstance(rate, str):
        s = rate.strip()
        low = s.lower()
        if low == "trace":
            return trace
        if low.startswith("trace*"):
            try:
                f = float(low[6:])
            except ValueError:
                f = -1.0
            if not math.isfinite(f) or f <= 0:
                raise UserError(f"--rate {rate!r}: the factor must be a number > 0, e.g. trace*2")
            return PiecewiseRate(trace.knots, trace.rates * f)
        if low.startswith("peak:"):
            try:
                peak = float(low[5:])
            except ValueError:
                peak = -1.0
            if not math.isfinite(peak) or peak <= 0:
                raise UserError(f"--rate {rate!r}: the peak must be a number > 0, e.g. peak:50")
            top = trace.rates.max()
            if top <= 0:
                raise UserError(f"pool {pool.name} has no traffic to scale to a peak")
            return PiecewiseRate(trace.knots, trace.rates * (peak / top))
        if low.startswith("file:"):
            return read_rate_file(s[5:])
    return as_rate_function(rate)


# ---------------------------------------------------------------------------------------------
# Arrivals


def _unit_gaps(pattern: np.ndarray, cv: np.ndarray, shape: np.ndarray,
               rng: np.random.Generator, counts: np.ndarray | None = None) -> np.ndarray:
    """Mean-1 gaps: Gamma with CV ``cv`` or Weibull with shape ``shape``. One gap per element,
    or, with ``counts``, ``counts[i]`` gaps with the parameters of element ``i``."""
    wb_seg = pattern == PATTERN_WEIBULL
    k_wb = np.maximum(shape[wb_seg], 0.05)
    norm = np.exp(np.array([math.lgamma(1 + 1 / x) for x in k_wb.tolist()]))
    c = cv[~wb_seg]
    k_ga = np.where(c > 0, 1.0 / np.maximum(c, 1e-3) ** 2, np.maximum(shape[~wb_seg], 1e-6))
    if counts is None:
        wb = wb_seg
    else:
        if not wb_seg.any():  # all Gamma (the common case): no masks, no copies
            k = np.repeat(k_ga, counts)
            out = rng.standard_gamma(k, out=np.empty(len(k)))
            out /= k
            return out
        wb = np.repeat(wb_seg, counts)
        k_wb, norm = np.repeat(k_wb, counts[wb_seg]), np.repeat(norm, counts[wb_seg])
        k_ga = np.repeat(k_ga, counts[~wb_seg])
    out = np.empty(len(wb))
    if len(k_wb):
        out[wb] = rng.weibull(k_wb) / norm
    if len(k_ga):
        out[~wb] = rng.standard_gamma(k_ga) / k_ga
    return out


def _segments(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(segment id per element, position within segment) for ragged segments."""
    seg = np.repeat(np.arange(len(counts)), counts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return seg, np.arange(int(counts.sum())) - starts[seg]


class _Arrivals:
    """Per-client arrival state carried from window to window."""

    def __init__(self, pool: ClientPool, mode: str, rng: np.random.Generator) -> None:
        self.pool, self.mode, self.rng = pool, mode, rng
        n = pool.n_clients
        self.y = np.zeros(n)  # each client's cumulative mass at the window start
        self.pending = np.full(n, np.nan)  # next arrival in the client's unit time

    def window(self, pw: int, mass: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(client index, position in the client's unit time relative to the window start)."""
        p = self.pool
        act = np.flatnonzero(mass > 0)
        pat, cv, sh = p.pattern[act, pw], p.cvs[act, pw], p.shape[act, pw]
        m = mass[act]
        if self.mode == "servegen":
            # counts + 1 gaps per client; the first `counts` cumulative gaps, scaled so that
            # the last one ends the window, are the arrivals. (In place: see _SAMPLE_BLOCK.)
            counts = np.rint(m).astype(np.int64)
            size = counts + 1
            g = _unit_gaps(pat, cv, sh, self.rng, size)
            np.cumsum(g, out=g)
            ends = np.cumsum(size) - 1
            base = np.concatenate([[0.0], g[ends[:-1]]])
            g -= np.repeat(base, size)
            g /= np.repeat(np.maximum(g[ends], 1e-300), size)
            g *= np.repeat(m, size)
            keep = np.ones(len(g), dtype=bool)
            keep[ends] = False
            return np.repeat(act, counts), g[keep]
        # renewal
        y0 = self.y[act]
        new = np.isnan(self.pending[act])
        if new.any():  # a first arrival somewhere in the first gap (forward recurrence)
            idx = np.flatnonzero(new)
            g0 = _unit_gaps(pat[idx], cv[idx], sh[idx], self.rng)
            self.pending[act[idx]] = y0[idx] + self.rng.random(len(idx)) * g0
        cur = self.pending[act].copy()
        end = y0 + m
        out_c, out_y = [], []
        todo = np.flatnonzero(cur < end)
        while len(todo):
            # The pending arrival is inside the window: emit it, then draw gaps onward.
            out_c.append(act[todo])
            out_y.append(cur[todo] - y0[todo])
            mm = end[todo] - cur[todo]
            counts = np.ceil(mm + 4.0 * np.maximum(cv[todo], 1.0) * np.sqrt(mm) + 4)
            counts = counts.astype(np.int64)
            if counts.sum() > MAX_ARRIVALS:
                raise UserError(f"more than {MAX_ARRIVALS} arrivals in one window; lower the rate")
            seg, _ = _segments(counts)
            g = _unit_gaps(pat[todo], cv[todo], sh[todo], self.rng, counts)
            cs = np.cumsum(g)
            ends = np.cumsum(counts) - 1
            base = np.concatenate([[0.0], cs[ends[:-1]]])
            pos = cur[todo][seg] + (cs - base[seg])
            ok = pos < end[todo][seg]
            last = np.zeros(len(pos), dtype=bool)
            last[ends] = True
            emit = ok & ~last  # a segment's last position is kept as the next "pending"
            out_c.append(act[todo][seg[emit]])
            out_y.append(pos[emit] - y0[todo][seg[emit]])
            n_ok = np.bincount(seg, weights=ok, minlength=len(todo)).astype(np.int64)
            firsts = ends - counts + 1
            done = ~ok[ends]
            nxt = np.where(done, pos[np.minimum(firsts + n_ok, ends)], pos[ends])
            self.pending[act[todo[done]]] = nxt[done]
            cur[todo] = nxt
            todo = todo[~done]
        self.y[act] = end
        if not out_c:
            return np.zeros(0, np.int64), np.zeros(0)
        return np.concatenate(out_c), np.concatenate(out_y)


# ---------------------------------------------------------------------------------------------
# Lengths


def _resolved_rows(pool: ClientPool, d: SparseDist) -> np.ndarray:
    """For each (len_row, block) row of ``d``: itself when non-empty, else the same client's
    nearest non-empty block, else the largest non-empty row of that block."""
    nb = pool.lengths.n_blocks
    sizes = d.row_sizes().reshape(-1, nb)
    nr = sizes.shape[0]
    ne = sizes > 0
    cols = np.arange(nb)[None, :]
    fwd = np.maximum.accumulate(np.where(ne, cols, -1), axis=1)
    bwd = np.minimum.accumulate(np.where(ne, cols, nb)[:, ::-1], axis=1)[:, ::-1]
    use_bwd = (fwd < 0) | ((bwd < nb) & (bwd - cols < cols - fwd))
    best = np.where(use_bwd, bwd, fwd)
    big = np.argmax(sizes, axis=0)  # per block, the row with the most entries
    row = np.where((best >= 0) & (best < nb), np.arange(nr)[:, None] * nb + best,
                   big[None, :] * nb + cols)
    if not ne.any():
        raise UserError(f"pool {pool.name}: a length field has no data at all")
    # A block with no data anywhere: fall back to any non-empty row.
    any_row = int(np.flatnonzero(d.row_sizes() > 0)[0])
    row = np.where(d.row_sizes()[row.ravel()].reshape(row.shape) > 0, row, any_row)
    return row.ravel()


def _rounded(x: np.ndarray) -> np.ndarray:
    """``x`` (a fresh float array, rounded in place) as int64."""
    return np.rint(x, out=x).astype(np.int64)


class _Lengths:
    def __init__(self, pool: ClientPool, streams: dict[str, np.random.Generator],
                 correlated: bool) -> None:
        self.pool, self.streams, self.correlated = pool, streams, correlated
        self.names = {
            "language": ("input_tokens", "output_tokens"),
            "reason": ("input_tokens", "output_tokens", "reason_ratio"),
            "multimodal": ("text_tokens", "output_tokens", "image_count", "image_tokens"),
        }[pool.kind]
        for n in self.names:
            if n not in pool.lengths.fields:
                raise UserError(f"pool {pool.name} ({pool.kind}) has no length field {n!r}")
        self.rows = {n: _resolved_rows(pool, pool.lengths.fields[n]) for n in self.names}

    def _draw(self, name: str, base_rows: np.ndarray, u: np.ndarray | None) -> np.ndarray:
        rng = self.streams["image_tokens" if name == "image_tokens" else
                           ("input_tokens" if name == "text_tokens" else name)]
        if u is None:
            u = rng.random(len(base_rows))
        return self.pool.lengths.fields[name].sample_rows(self.rows[name][base_rows], u)

    def sample_rows(self, base: np.ndarray) -> dict[str, np.ndarray]:
        """The length fields of requests whose (client, block) rows are ``base``."""
        p = self.pool
        n = len(base)
        u = self.streams["correlated"].random(n) if self.correlated else None
        out: dict[str, np.ndarray] = {}
        if p.kind == "multimodal":
            text = _rounded(self._draw("text_tokens", base, u))
            count = np.maximum(np.rint(self._draw("image_count", base, u)), 0).astype(np.int64)
            rep = np.repeat(base, count)
            u_img = None if u is None else np.repeat(u, count)
            per_image = _rounded(self._draw("image_tokens", rep, u_img))
            offsets = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(count, out=offsets[1:])
            img_sum = np.add.reduceat(per_image, offsets[:-1]) if len(per_image) else 0
            img_sum = np.where(count > 0, img_sum, 0)
            out["input_tokens"] = text + img_sum
            out["image_offsets"] = offsets
            out["image_tokens"] = per_image
        else:
            out["input_tokens"] = _rounded(self._draw("input_tokens", base, u))
        output = _rounded(self._draw("output_tokens", base, u))
        out["output_tokens"] = output
        if p.kind == "reason":
            ratio = np.clip(self._draw("reason_ratio", base, u), 0.0, 1.0)
            out["reasoning_tokens"] = np.rint(ratio * output).astype(np.int64)
        return out


# ---------------------------------------------------------------------------------------------
# Tables


_DIGITS4 = (np.arange(10_000)[:, None] // np.array([1000, 100, 10, 1]) % 10 + 48).astype(np.uint8)


def _digits(out: np.ndarray, start: int) -> None:
    """Row i of ``out`` (n × w bytes) ← ``start + i`` in w zero-padded decimal digits.

    Consecutive numbers: the last 4 digits cycle through a table, the digits above them change
    every 10,000 rows (filled recursively for the few distinct values)."""
    n, w = out.shape
    if n == 0 or w == 0:
        return
    low = min(w, 4)
    period = 10**low
    r = start % period
    cycle = _DIGITS4[:period, 4 - low:]
    out[:, w - low:] = np.resize(np.concatenate([cycle[r:], cycle[:r]]), (n, low))
    if w > low:
        h0, h1 = start // period, (start + n - 1) // period
        high = np.empty((h1 - h0 + 1, w - low), dtype=np.uint8)
        _digits(high, h0)
        edges = np.clip(np.arange(h0, h1 + 2) * period, start, start + n)
        out[:, :w - low] = np.repeat(high, np.diff(edges), axis=0)


def _np_array(a: np.ndarray, type_: pa.DataType, dtype: type) -> pa.Array:
    """A numpy array as an Arrow array without a copy (and without ``pa.array``'s check for a
    masked array, which imports numpy.ma on first use)."""
    a = np.ascontiguousarray(a, dtype=dtype)
    return pa.Array.from_buffers(type_, len(a), [None, pa.py_buffer(a)])


class _Columns:
    """Builds the record batches of one generation. The columns that are the same in every row
    (zeros, empty lists, nulls, the app name) and the request ids' offsets are views of buffers
    shared by all the batches, so a batch costs memory only for what varies per row."""

    def __init__(self, client_names: pa.Array, app: str, width: int) -> None:
        self.client_names, self.width = client_names, width
        self.app = np.frombuffer(app.encode(), dtype=np.uint8)
        self.rows = -1
        self._grow(1 << 12)

    def _grow(self, n: int) -> None:
        if n <= self.rows:
            return
        n = max(n, 2 * self.rows)
        self.rows = n
        w, a = self.width + 1, len(self.app)
        self.zeros = pa.py_buffer(np.zeros(8 * (n + 1), dtype=np.uint8))
        self.id_offsets = pa.py_buffer(np.arange(n + 1, dtype=np.int32) * np.int32(w))
        self.app_offsets = pa.py_buffer(np.arange(n + 1, dtype=np.int32) * np.int32(a))
        self.app_chars = pa.py_buffer(np.tile(self.app, n))
        self.no_lists = pa.Array.from_buffers(pa.list_(pa.int64()), n, [None, self.zeros],
                                              children=[pa.array([], pa.int64())])

    def _ids(self, start: int, n: int) -> pa.Array:
        """``r`` + the row number zero-padded to ``width`` digits, built in numpy."""
        width = self.width
        if n and start + n - 1 >= 10**width:  # wider than planned: pad to at least ``width``
            digits = pc.utf8_lpad(pa.array(np.arange(start, start + n)).cast(pa.string()),
                                  width, "0")
            return pc.binary_join_element_wise("r", digits, "")
        chars = np.empty((n, width + 1), dtype=np.uint8)
        chars[:, 0] = ord("r")
        _digits(chars[:, 1:], start)
        return pa.Array.from_buffers(pa.string(), n, [None, self.id_offsets,
                                                      pa.py_buffer(chars)])

    def batch(self, arrival: np.ndarray, client: np.ndarray, fields: dict[str, np.ndarray],
              first_id: int) -> pa.RecordBatch:
        n = len(arrival)
        self._grow(n)
        z = self.zeros
        ids = self._ids(first_id, n)
        empty = self.no_lists.slice(0, n)
        if "image_offsets" in fields:
            images = pa.ListArray.from_arrays(
                _np_array(fields["image_offsets"], pa.int32(), np.int32),
                _np_array(fields["image_tokens"], pa.int64(), np.int64))
        else:
            images = empty
        reasoning = fields.get("reasoning_tokens")
        cols = [
            ids,
            _np_array(arrival, pa.float64(), np.float64),
            pc.take(self.client_names, _np_array(client, pa.int32(), np.int32),
                    memory_pool=_POOL),
            pa.Array.from_buffers(pa.string(), n, [None, self.app_offsets, self.app_chars]),
            ids,
            pa.Array.from_buffers(pa.int32(), n, [None, z]),
            pa.Array.from_buffers(pa.float64(), n, [None, z]),
            _np_array(fields["input_tokens"], pa.int64(), np.int64),
            _np_array(fields["output_tokens"], pa.int64(), np.int64),
            pa.Array.from_buffers(pa.int64(), n, [None, z]) if reasoning is None
            else _np_array(reasoning, pa.int64(), np.int64),
            empty,
            images,
            pa.Array.from_buffers(pa.string(), n, [z, z, z], null_count=n),
        ]
        return pa.RecordBatch.from_arrays(cols, schema=WORKLOAD_SCHEMA)


def _batch(arrival: np.ndarray, client: np.ndarray, fields: dict[str, np.ndarray],
           client_names: pa.Array, app: str, first_id: int, width: int) -> pa.RecordBatch:
    return _Columns(client_names, app, width).batch(arrival, client, fields, first_id)


def _streams(seed: int) -> dict[str, np.random.Generator]:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"--seed {seed!r} must be a whole number >= 0")
    kids = SeedSequence([int(seed), 0x5E7E]).spawn(len(STREAMS))
    return {n: default_rng(k) for n, k in zip(STREAMS, kids, strict=True)}


def iter_workload_batches(
    pool: ClientPool,
    duration_s: float,
    *,
    rate: RateFunction | str | float | None = None,
    mode: str = "renewal",
    seed: int = 0,
    correlated: bool = False,
    app: str | None = None,
    batch_s: float = 3600.0,
) -> Iterator[pa.RecordBatch]:
    """Record batches of the Workload, in arrival order, about ``batch_s`` seconds each."""
    duration_s = float(duration_s)
    if not math.isfinite(duration_s) or duration_s <= 0:
        raise UserError(f"duration {duration_s:g} must be a finite number of seconds > 0")
    if mode not in MODES:
        raise UserError(f"arrival mode {mode!r} is unknown; use one of {', '.join(MODES)}")
    rate_fn = resolve_rate(pool, rate, duration_s)
    plan = _plan(pool, duration_s)
    comp = _composition_windows(pool, plan)
    masses = rate_fn.integral(plan.end) - rate_fn.integral(plan.start)
    expected = float(np.sum(masses))
    if expected > MAX_ARRIVALS:
        raise UserError(f"about {expected:.0f} requests expected, more than the limit "
                        f"{MAX_ARRIVALS}; lower the rate or the duration")
    width = max(6, len(str(int(expected * 2 + 1000))))
    streams = _streams(seed)
    arrivals = _Arrivals(pool, mode, streams["arrivals"])
    lengths = _Lengths(pool, streams, correlated)
    columns = _Columns(pa.array(pool.client_ids.tolist(), pa.string()),
                       app or DEFAULT_APP[pool.kind], width)
    rates = pool.rates
    len_row = pool.len_row * pool.lengths.n_blocks
    next_id = 0
    buf_t: list[np.ndarray] = []
    buf_c: list[np.ndarray] = []
    buf_r: list[np.ndarray] = []  # each request's (client, block) length row
    batch_end = batch_s

    def flush() -> pa.RecordBatch | None:
        nonlocal next_id
        if not buf_t:
            return None
        t, c, r = np.concatenate(buf_t), np.concatenate(buf_c), np.concatenate(buf_r)
        buf_t.clear()
        buf_c.clear()
        buf_r.clear()
        f = lengths.sample_rows(r)
        del r
        b = columns.batch(t, c, f, next_id)
        next_id += len(t)
        return b

    for k in range(len(plan.start)):
        if plan.start[k] >= batch_end:
            if (b := flush()) is not None:
                yield b
            batch_end = (math.floor(plan.start[k] / batch_s) + 1) * batch_s
        cw = comp[k]
        agg = rates[:, cw].sum()
        share = rates[:, cw] / agg
        client, rel = arrivals.window(int(cw), share * masses[k])
        if len(client) == 0:
            continue
        rel /= share[client]
        rel += rate_fn.integral(plan.start[k])
        t = rate_fn.inverse_integral(rel)
        del rel
        ok = (t >= plan.start[k]) & (t < plan.end[k])
        if not ok.all():
            client, t = client[ok], t[ok]
        order = np.argsort(t, kind="stable")
        client = client[order]
        buf_t.append(t[order])
        buf_c.append(client)
        buf_r.append(len_row[client] + pool.block[plan.pool_w[k]])
    if (b := flush()) is not None:
        yield b


def generate_workload(pool: ClientPool, duration_s: float, **options: object) -> pa.Table:
    """A Workload table from ``pool`` over ``duration_s`` (see :func:`iter_workload_batches`).

    Built from 600 s batches (unless ``batch_s`` says otherwise): the same rows as any other
    batch size, with the working memory of one batch instead of one hour."""
    options.setdefault("batch_s", 600.0)
    batches = list(iter_workload_batches(pool, duration_s, **options))  # type: ignore[arg-type]
    table = pa.Table.from_batches(batches, schema=WORKLOAD_SCHEMA)
    return conform_workload(table, f"workload from pool {pool.name}")


def write_workload_parquet(batches: Iterable[pa.RecordBatch], path: str | Path) -> int:
    """Write batches to Parquet incrementally (temp file + rename); returns the row count.

    Dictionary encoding only for the string columns that repeat (client, app): for the ids,
    unique per row, it would cost memory and time for nothing."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with pq.ParquetWriter(tmp, WORKLOAD_SCHEMA, compression="zstd",
                          use_dictionary=["client_id", "app"]) as writer:
        for b in batches:
            writer.write_batch(b)
            n += b.num_rows
    tmp.replace(path)
    return n


# ---------------------------------------------------------------------------------------------
# Naive baseline


def naive_workload(pool: ClientPool, duration_s: float, seed: int = 0,
                   rate: float | None = None, *, app: str | None = None) -> pa.Table:
    """Aggregate Poisson arrivals at the pool's mean rate (or ``rate``), lengths drawn from the
    pool's aggregate (request-weighted) distributions: the baseline for realism claims."""
    r = pool.mean_rate() if rate is None else float(rate)
    if not math.isfinite(r) or r <= 0:
        raise UserError(f"naive baseline rate {r:g} must be > 0 req/s")
    streams = _streams(seed)
    t = arrival_times("poisson", r, duration_s=duration_s, rng=streams["arrivals"])
    n = len(t)

    def draw(name: str, m: int, stream: str) -> np.ndarray:
        values, probs = pool.length_mix(name)
        d = SparseDist.from_rows([(values, probs)])
        return d.sample_rows(np.zeros(m, np.int64), streams[stream].random(m))

    fields: dict[str, np.ndarray] = {}
    output = np.rint(draw("output_tokens", n, "output_tokens")).astype(np.int64)
    fields["output_tokens"] = output
    if pool.kind == "multimodal":
        text = np.rint(draw("text_tokens", n, "input_tokens")).astype(np.int64)
        count = np.rint(draw("image_count", n, "image_count")).astype(np.int64)
        per = np.rint(draw("image_tokens", int(count.sum()), "image_tokens")).astype(np.int64)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(count, out=offsets[1:])
        s = np.add.reduceat(per, offsets[:-1]) if len(per) else np.zeros(n, np.int64)
        fields["input_tokens"] = text + np.where(count > 0, s, 0)
        fields["image_offsets"], fields["image_tokens"] = offsets, per
    else:
        fields["input_tokens"] = np.rint(draw("input_tokens", n, "input_tokens")).astype(np.int64)
    if pool.kind == "reason":
        ratio = np.clip(draw("reason_ratio", n, "reason_ratio"), 0, 1)
        fields["reasoning_tokens"] = np.rint(ratio * output).astype(np.int64)
    b = _batch(t, np.zeros(n, np.int64), fields, pa.array(["naive"]),
               app or DEFAULT_APP[pool.kind], 0, max(6, len(str(n))))
    return conform_workload(pa.Table.from_batches([b]), f"naive workload from pool {pool.name}")
