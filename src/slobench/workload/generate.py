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

from slobench.errors import UserError
from slobench.schema import WORKLOAD_SCHEMA, conform_workload
from slobench.workload.arrivals import (
    MAX_ARRIVALS,
    RateFunction,
    arrival_times,
    as_rate_function,
)
from slobench.workload.pool import PATTERN_WEIBULL, ClientPool, SparseDist
from slobench.workload.synthetic import _empty_lists, _repeat_string

MODES = ("renewal", "servegen")
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
               rng: np.random.Generator) -> np.ndarray:
    """Mean-1 gaps, one per element: Gamma with CV ``cv`` or Weibull with shape ``shape``."""
    out = np.empty(len(pattern))
    wb = pattern == PATTERN_WEIBULL
    if wb.any():
        k = np.maximum(shape[wb], 0.05)
        out[wb] = rng.weibull(k) / np.exp(np.array([math.lgamma(1 + 1 / x) for x in k]))
    ga = ~wb
    if ga.any():
        c = cv[ga]
        k = np.where(c > 0, 1.0 / np.maximum(c, 1e-3) ** 2, np.maximum(shape[ga], 1e-6))
        out[ga] = rng.standard_gamma(k) / k
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
            counts = np.rint(m).astype(np.int64)
            seg, pos = _segments(counts + 1)
            g = np.cumsum(_unit_gaps(pat[seg], cv[seg], sh[seg], self.rng))
            ends = np.cumsum(counts + 1) - 1
            base = np.concatenate([[0.0], g[ends[:-1]]])
            rel = (g - base[seg]) / np.maximum((g[ends] - base)[seg], 1e-300) * m[seg]
            keep = pos < counts[seg]
            return act[seg[keep]], rel[keep]
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
            g = _unit_gaps(pat[todo][seg], cv[todo][seg], sh[todo][seg], self.rng)
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

    def sample(self, client: np.ndarray, pool_w: np.ndarray) -> dict[str, np.ndarray]:
        p = self.pool
        base = p.lengths.row_index(p.len_row[client], p.block[pool_w])
        n = len(client)
        u = self.streams["correlated"].random(n) if self.correlated else None
        out: dict[str, np.ndarray] = {}
        if p.kind == "multimodal":
            text = np.rint(self._draw("text_tokens", base, u)).astype(np.int64)
            count = np.maximum(np.rint(self._draw("image_count", base, u)), 0).astype(np.int64)
            rep = np.repeat(base, count)
            u_img = None if u is None else np.repeat(u, count)
            per_image = np.rint(self._draw("image_tokens", rep, u_img)).astype(np.int64)
            offsets = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(count, out=offsets[1:])
            img_sum = np.add.reduceat(per_image, offsets[:-1]) if len(per_image) else 0
            img_sum = np.where(count > 0, img_sum, 0)
            out["input_tokens"] = text + img_sum
            out["image_offsets"] = offsets
            out["image_tokens"] = per_image
        else:
            out["input_tokens"] = np.rint(self._draw("input_tokens", base, u)).astype(np.int64)
        output = np.rint(self._draw("output_tokens", base, u)).astype(np.int64)
        out["output_tokens"] = output
        if p.kind == "reason":
            ratio = np.clip(self._draw("reason_ratio", base, u), 0.0, 1.0)
            out["reasoning_tokens"] = np.rint(ratio * output).astype(np.int64)
        return out


# ---------------------------------------------------------------------------------------------
# Tables


def _ids(start: int, n: int, width: int) -> pa.Array:
    digits = pc.utf8_lpad(pa.array(np.arange(start, start + n, dtype=np.int64)).cast(pa.string()),
                          width, "0")
    return pc.binary_join_element_wise("r", digits, "")


def _batch(arrival: np.ndarray, client: np.ndarray, fields: dict[str, np.ndarray],
           client_names: pa.Array, app: str, first_id: int, width: int) -> pa.RecordBatch:
    n = len(arrival)
    ids = _ids(first_id, n, width)
    if "image_offsets" in fields:
        images = pa.ListArray.from_arrays(pa.array(fields["image_offsets"].astype(np.int32)),
                                          pa.array(fields["image_tokens"], pa.int64()))
    else:
        images = _empty_lists(n)
    cols = [
        ids,
        pa.array(arrival, pa.float64()),
        pa.DictionaryArray.from_arrays(pa.array(client.astype(np.int32)),
                                       client_names).cast(pa.string()),
        _repeat_string(app, n),
        ids,
        pa.array(np.zeros(n, dtype=np.int32)),
        pa.array(np.zeros(n)),
        pa.array(fields["input_tokens"], pa.int64()),
        pa.array(fields["output_tokens"], pa.int64()),
        pa.array(fields.get("reasoning_tokens", np.zeros(n, np.int64)), pa.int64()),
        _empty_lists(n),
        images,
        pa.nulls(n, pa.string()),
    ]
    return pa.RecordBatch.from_arrays(cols, schema=WORKLOAD_SCHEMA)


def _streams(seed: int) -> dict[str, np.random.Generator]:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"--seed {seed!r} must be a whole number >= 0")
    kids = np.random.SeedSequence([int(seed), 0x5E7E]).spawn(len(STREAMS))
    return {n: np.random.default_rng(k) for n, k in zip(STREAMS, kids, strict=True)}


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
    app = app or DEFAULT_APP[pool.kind]
    names = pa.array(pool.client_ids.tolist(), pa.string())
    rates = pool.rates
    next_id = 0
    buf_t: list[np.ndarray] = []
    buf_c: list[np.ndarray] = []
    buf_w: list[np.ndarray] = []
    batch_end = batch_s

    def flush() -> pa.RecordBatch | None:
        nonlocal next_id
        if not buf_t:
            return None
        t, c, w = np.concatenate(buf_t), np.concatenate(buf_c), np.concatenate(buf_w)
        buf_t.clear()
        buf_c.clear()
        buf_w.clear()
        f = lengths.sample(c, w)
        b = _batch(t, c, f, names, app, next_id, width)
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
        y = rate_fn.integral(plan.start[k]) + rel / share[client]
        t = rate_fn.inverse_integral(y)
        ok = (t >= plan.start[k]) & (t < plan.end[k])
        client, t = client[ok], t[ok]
        order = np.argsort(t, kind="stable")
        buf_t.append(t[order])
        buf_c.append(client[order])
        buf_w.append(np.full(len(t), plan.pool_w[k], dtype=np.int64))
    if (b := flush()) is not None:
        yield b


def generate_workload(pool: ClientPool, duration_s: float, **options: object) -> pa.Table:
    """A Workload table from ``pool`` over ``duration_s`` (see :func:`iter_workload_batches`)."""
    batches = list(iter_workload_batches(pool, duration_s, **options))  # type: ignore[arg-type]
    table = pa.Table.from_batches(batches, schema=WORKLOAD_SCHEMA)
    return conform_workload(table, f"workload from pool {pool.name}")


def write_workload_parquet(batches: Iterable[pa.RecordBatch], path: str | Path) -> int:
    """Write batches to Parquet incrementally (temp file + rename); returns the row count."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with pq.ParquetWriter(tmp, WORKLOAD_SCHEMA, compression="zstd") as writer:
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
