"""Per-request latency metrics from a Records table, and per-request SLO checks. Pure, vectorized.

Every array is indexed like the rows of the Records table. Latency metrics are float64 seconds and
NaN where undefined (failed request, missing time, too few tokens). See docs/slo.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from slobench.slo.spec import DEADLINE, METRICS, SLOSet

# Slack on every comparison: times come from a nanosecond clock and differences of float seconds
# carry rounding error, so a bound is met when the value exceeds it by at most 1 ns.
EPS_S = 1e-9


@dataclass(frozen=True)
class Derived:
    """Per-request metrics (arrays of length ``n``) and flattened per-token data.

    Memory: a day-long simulation has tens of millions of tokens, so the per-token arrays are
    few and narrow. ``token_times`` is a view of the Records column where it can be; the
    per-token request index and position are computed only when asked for (deadline SLOs)."""

    n: int
    ok: np.ndarray  # bool: status == "ok"
    non_streaming: np.ndarray  # bool: token_count_source == "non_streaming"
    scheduled: np.ndarray
    input_tokens: np.ndarray  # int64
    output_tokens: np.ndarray  # int64
    reasoning_tokens: np.ndarray  # int64
    n_token_times: np.ndarray  # int64: len(token_times)
    ttft: np.ndarray
    tpot: np.ndarray
    e2e: np.ndarray
    ttfa: np.ndarray
    think_tpot: np.ndarray
    answer_tpot: np.ndarray
    itl_max: np.ndarray
    send_lag: np.ndarray  # sent - scheduled - queue: the client's own delay (all sent requests)
    queue: np.ndarray  # queue_s (all requests)
    itl_values: np.ndarray  # every gap between consecutive tokens of the ok requests
    itl_index: np.ndarray  # int32/int64: the request (row) of each ITL value
    token_times: np.ndarray  # all token arrival times, flattened (all requests)

    @cached_property
    def token_index(self) -> np.ndarray:
        """The request (row) of each entry of ``token_times``."""
        return np.repeat(np.arange(self.n, dtype=_index_dtype(self.n)), self.n_token_times)

    @cached_property
    def token_pos(self) -> np.ndarray:
        """0-based position of each entry of ``token_times`` within its request."""
        starts = np.cumsum(self.n_token_times) - self.n_token_times
        return np.arange(self.token_times.size, dtype=np.int64) - np.repeat(
            starts, self.n_token_times)

    def metric(self, name: str) -> np.ndarray:
        """The per-request array of a spec metric (``itl`` is the per-request largest gap)."""
        return self.itl_max if name == "itl" else getattr(self, name)


def _f64(table: pa.Table, name: str) -> np.ndarray:
    col = pc.fill_null(table.column(name).cast(pa.float64()), np.nan)
    return np.asarray(col.to_numpy(), dtype=np.float64)


def _i64(table: pa.Table, name: str) -> np.ndarray:
    col = pc.fill_null(table.column(name).cast(pa.int64()), 0)
    return np.asarray(col.to_numpy(), dtype=np.int64)


def _eq(table: pa.Table, name: str, value: str) -> np.ndarray:
    col = pc.fill_null(pc.equal(table.column(name), value), False)
    return np.asarray(col.to_numpy(), dtype=bool)


def send_lags(records: pa.Table) -> np.ndarray:
    """The client's own delay per request: sent − scheduled − deliberate queueing (NaN where the
    request was never sent). A health figure of the load generator, not of the server."""
    return _f64(records, "sent_s") - _f64(records, "scheduled_s") - _f64(records, "queue_s")


def derive(records: pa.Table) -> Derived:
    """Per-request metrics of a (conformed) Records table. See the module docstring and docs."""
    n = records.num_rows
    ok = _eq(records, "status", "ok")
    non_streaming = _eq(records, "token_count_source", "non_streaming")
    sched = _f64(records, "scheduled_s")
    first = _f64(records, "first_token_s")
    answer = _f64(records, "first_answer_s")
    done = _f64(records, "done_s")
    queue = _f64(records, "queue_s")
    n_in = _i64(records, "input_tokens")
    n_out = _i64(records, "output_tokens")
    n_reason = _i64(records, "reasoning_tokens")
    n_answer = n_out - n_reason

    # Token times flattened through the list offsets: no Python loop per request.
    tt = records.column("token_times")
    lengths = np.asarray(pc.fill_null(pc.list_value_length(tt), 0).to_numpy(), dtype=np.int64)
    flat = pc.list_flatten(tt)
    if isinstance(flat, pa.ChunkedArray):
        flat = flat.combine_chunks() if flat.num_chunks != 1 else flat.chunk(0)
    if flat.type != pa.float64():
        flat = flat.cast(pa.float64())
    times = (np.asarray(flat.to_numpy(zero_copy_only=True)) if flat.null_count == 0
             else np.asarray(pc.fill_null(flat, np.nan).to_numpy(), dtype=np.float64))
    streamed = lengths > 0

    nan = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        e2e = np.where(ok, done - sched, nan)
        ttft = np.where(ok, first - sched, nan)
        ttfa = np.where(ok, answer - sched, nan)
        # Without streaming the whole answer arrives at done: TTFT (and TTFA) equal E2E.
        ttft = np.where(non_streaming & np.isnan(ttft), e2e, ttft)
        ttfa = np.where(non_streaming & np.isnan(ttfa) & (n_answer > 0), e2e, ttfa)
        tpot = np.where(ok & streamed & (n_out > 1),
                        (done - first) / np.maximum(n_out - 1, 1), nan)
        think_tpot = np.where(ok & streamed & (n_reason > 0),
                              (answer - first) / np.maximum(n_reason, 1), nan)
        answer_tpot = np.where(ok & streamed & (n_answer > 1),
                               (done - answer) / np.maximum(n_answer - 1, 1), nan)

    itl_values, itl_index = _gaps(times, lengths, ok)
    itl_max = np.full(n, nan)
    if itl_values.size:
        first_of = np.flatnonzero(np.r_[True, itl_index[1:] != itl_index[:-1]])
        itl_max[itl_index[first_of]] = np.fmax.reduceat(itl_values, first_of)

    return Derived(
        n=n, ok=ok, non_streaming=non_streaming, scheduled=sched, input_tokens=n_in,
        output_tokens=n_out, reasoning_tokens=n_reason, n_token_times=lengths, ttft=ttft,
        tpot=tpot, e2e=e2e, ttfa=ttfa, think_tpot=think_tpot, answer_tpot=answer_tpot,
        itl_max=itl_max, send_lag=send_lags(records), queue=queue, itl_values=itl_values,
        itl_index=itl_index, token_times=times,
    )


def _index_dtype(n: int) -> type:
    return np.int32 if n < 2**31 else np.int64


def _gaps(times: np.ndarray, lengths: np.ndarray, ok: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray]:
    """Every gap between consecutive tokens of the same ok request, and its request (row)."""
    n = lengths.size
    if times.size < 2:
        return np.empty(0, dtype=np.float64), np.empty(0, dtype=_index_dtype(n))
    per_request = np.maximum(lengths - 1, 0) * ok
    gaps = np.diff(times)
    # Drop the gap across each request boundary and the gaps of failed requests, in place.
    keep = np.repeat(ok, lengths)[1:]
    ends = np.cumsum(lengths)[:-1]
    keep[ends[(ends > 0) & (ends < times.size)] - 1] = False
    values = gaps[keep] if not keep.all() else gaps
    del gaps, keep
    index = np.repeat(np.arange(n, dtype=_index_dtype(n)), per_request)
    return values, index


# Constraints that need per-token times: a non-streaming request cannot be verified against them.
NEEDS_STREAM = frozenset({"tpot", "itl", "think_tpot", "answer_tpot", DEADLINE})


def _undefined(d: Derived, metric: str) -> np.ndarray:
    """Where ``metric`` does not exist for an ok request, so a bound on it holds vacuously."""
    n_answer = d.output_tokens - d.reasoning_tokens
    if metric == "ttft":
        return d.output_tokens == 0
    if metric == "ttfa":
        return n_answer <= 0
    if metric in ("tpot", "itl"):
        return d.output_tokens <= 1
    if metric == "think_tpot":
        return d.reasoning_tokens == 0
    if metric == "answer_tpot":
        return n_answer <= 1
    return np.zeros(d.n, dtype=bool)  # e2e is always defined for an ok request


@dataclass(frozen=True)
class SLOCheck:
    """Per-request SLO outcome.

    ``met[i]``: request i met every constraint of its class. ``applies[k][i]``: the class of request
    i has a constraint on ``k`` (a metric or ``deadline``); ``passed[k][i]``: that constraint held
    (always False for a failed request; False where ``applies`` is False).
    """

    met: np.ndarray
    applies: dict[str, np.ndarray]
    passed: dict[str, np.ndarray]


def check_slos(derived: Derived, records: pa.Table, slos: SLOSet) -> SLOCheck:
    """Check every request against the SLO of its own class (``slos.for_app(app)``)."""
    d = derived
    n = d.n
    apps = np.asarray(records.column("app").to_numpy(), dtype=object)
    limits = {k: np.full(n, np.nan) for k in (*METRICS, DEADLINE)}
    per_tok = np.full(n, np.nan)
    for app in (np.unique(apps) if n else ()):
        rows = apps == app
        for c in slos.for_app(str(app)).constraints:
            limits[c.metric][rows] = c.limit_s
            if c.metric == DEADLINE:
                per_tok[rows] = c.per_token_s

    applies: dict[str, np.ndarray] = {}
    passed: dict[str, np.ndarray] = {}
    met = d.ok.copy()
    for key, limit in limits.items():
        has = ~np.isnan(limit)
        if not has.any():
            continue
        if key == DEADLINE:
            ok_k = _deadline_pass(d, limit, per_tok)
        else:
            value = d.metric(key)
            with np.errstate(invalid="ignore"):
                within = value <= limit + EPS_S
            ok_k = within | (np.isnan(value) & _undefined(d, key))
        if key in NEEDS_STREAM:
            ok_k &= ~d.non_streaming
        ok_k &= d.ok & has
        applies[key] = has
        passed[key] = ok_k
        met &= ok_k | ~has
    return SLOCheck(met=met, applies=applies, passed=passed)


def _deadline_pass(d: Derived, base: np.ndarray, per_tok: np.ndarray) -> np.ndarray:
    """Token i (1-based) of each request arrived by scheduled + base + (i-1) * per_tok."""
    ti = d.token_index
    due = d.scheduled[ti] + base[ti] + d.token_pos * per_tok[ti]
    with np.errstate(invalid="ignore"):
        late = ~(d.token_times <= due + EPS_S) & ~np.isnan(base[ti])
    n_late = np.bincount(ti[late], minlength=d.n)
    # Tokens must have been timed unless there were none to time.
    timed = (d.n_token_times > 0) | (d.output_tokens == 0)
    return (n_late == 0) & timed


def meets(derived: Derived, records: pa.Table, slos: SLOSet) -> np.ndarray:
    """Bool per request: status ok and every constraint of its class holds."""
    return check_slos(derived, records, slos).met
