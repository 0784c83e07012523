"""Virtual-time discrete-event simulation of serving replicas over a Workload table.

Every replica runs the same :class:`~slobench.engine.scheduler.Scheduler` the HTTP emulator runs;
here the clock is virtual: a step that starts at ``t`` ends at ``t + duration_s``, its tokens are
stamped with that end time, and the next step starts then. Requests reach a replica (through a
router, :mod:`slobench.engine.router`) at their ``arrival_s`` (a session's follow-up turn: when
the turn before it finished plus ``think_s``, and not before its ``arrival_s``), plus the cost
model's frontend delay (``admission_delay_s(prompt_tokens)``) when it has one, as the emulator's
engine sees them.
The result is a Records table exactly like a live run's (``slobench.schema.RECORDS_SCHEMA``), so
summaries, SLO checks and reports work on it unchanged.

Speed: per step the scheduler does O(1) work for its decoding sequences (they are one group with
running sums; token times are step indices into one timeline per replica, turned into times once at
the end with numpy), and a run of pure-decode steps with no arrival, completion or KV shortage in
between is advanced in one call (``Scheduler._fast_forward``), which gives exactly what
single-stepping gives (tests check it).
"""

from __future__ import annotations

import gc
import heapq
import time
from array import array
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from slobench.engine.core import EngineRequest
from slobench.engine.router import make_router
from slobench.engine.scheduler import Scheduler
from slobench.schema import RECORDS_SCHEMA, conform_workload, session_links

__all__ = ["SimulationResult", "simulate"]

_INF = float("inf")


@dataclass
class SimulationResult:
    """``records``: one row per Workload row (RECORDS_SCHEMA). ``stats``: per replica and
    totals. ``sim_end_s``: virtual time when the last request finished. ``traces`` (when asked
    for): per replica, one ``(step_index, StepShape | None, tokens_emitted, prefills_completed)``
    per step; ``timelines``: per replica, each step's end time."""

    records: pa.Table
    stats: dict[str, Any]
    sim_end_s: float
    traces: list[list[tuple[Any, ...]]] | None = None
    timelines: list[np.ndarray] = field(default_factory=list)


def simulate(
    workload: pa.Table,
    make_scheduler: Callable[[], Scheduler],
    *,
    replicas: int = 1,
    router: str = "round_robin",
    progress: Callable[[float], None] | None = None,
    deadlines: Mapping[str, tuple[float | None, float | None]] | None = None,
    priorities: Mapping[str, int] | None = None,
    fast_forward: bool = True,
    trace: bool = False,
    max_steps: int | None = None,
    horizon_s: float | None = None,
    replica_schedule: Sequence[tuple[float, int]] | None = None,
) -> SimulationResult:
    """Simulate ``workload`` on ``replicas`` schedulers made by ``make_scheduler``.

    ``deadlines`` maps an app to its (TTFT, TPOT) targets in seconds, given to each request (the
    ``slo`` policy schedules by them); ``priorities`` maps an app to its priority (lower first,
    for the ``priority`` policy). ``progress`` is called now and then with the virtual time.
    ``fast_forward=False`` single-steps everything (same result, slower: for tests).
    ``max_steps`` (all replicas together) raises RuntimeError when exceeded: a livelock guard.
    ``horizon_s``: session follow-ups due at or after it are not sent (as a live run with
    ``--duration`` does) and have no record.
    ``replica_schedule``: ``(from_s, count)`` pairs, a time-varying deployment (autoscaling):
    a request arriving at ``t`` is routed among the first ``count`` replicas of the last pair
    with ``from_s <= t`` (all ``replicas`` before the first pair). A replica taken out of the
    rotation drains what it holds; one brought in starts with an empty cache.
    """
    gc_was_enabled = gc.isenabled()
    gc.disable()  # millions of short-lived objects, no cycles: the collector only costs time
    try:
        return _simulate(workload, make_scheduler, replicas, router, progress, deadlines,
                         priorities, fast_forward, trace, max_steps, horizon_s,
                         _schedule(replica_schedule, replicas))
    finally:
        if gc_was_enabled:
            gc.enable()


def _simulate(
    workload: pa.Table,
    make_scheduler: Callable[[], Scheduler],
    replicas: int,
    router: str,
    progress: Callable[[float], None] | None,
    deadlines: Mapping[str, tuple[float | None, float | None]] | None,
    priorities: Mapping[str, int] | None,
    fast_forward: bool,
    trace: bool,
    max_steps: int | None,
    horizon_s: float | None,
    schedule: tuple[list[float], list[int]] | None,
) -> SimulationResult:
    wall0 = time.perf_counter()
    wl = conform_workload(workload, "simulate")
    n = wl.num_rows
    rt = make_router(router, replicas)
    scheds = [make_scheduler() for _ in range(replicas)]
    if trace:
        for s in scheds:
            s.trace = []

    ids = wl["request_id"].to_pylist()
    apps = wl["app"].to_pylist()
    arrival = wl["arrival_s"].to_numpy()
    p_tok = wl["input_tokens"].to_numpy()
    o_tok = wl["output_tokens"].to_numpy()
    r_tok = wl["reasoning_tokens"].to_numpy()
    pb = wl["prefix_blocks"].combine_chunks()
    if isinstance(pb, pa.ChunkedArray):  # pyarrow < 16 returns a ChunkedArray
        pb = pb.chunk(0) if pb.num_chunks else pa.array([], pa.list_(pa.int64()))
    pb_off = pb.offsets.to_numpy()
    pb_val = pb.values.to_numpy()
    has_pb = bool(len(pb_val))

    delay_fn = getattr(scheds[0].cost, "admission_delay_s", None)
    if delay_fn is not None and n:
        uniq, inverse = np.unique(p_tok, return_inverse=True)
        delays = np.array([float(delay_fn(int(p))) for p in uniq])[inverse]
    else:
        delays = np.zeros(n)
    # Sessions: a follow-up turn is released when the turn before it finishes (plus think_s),
    # never before its own arrival_s; only session starts are known up front.
    prev, nxt = session_links(wl)
    starts = np.flatnonzero(prev < 0)
    has_followups = len(starts) < n
    scheduled = arrival.astype(np.float64, copy=True)
    engine_arrival = arrival[starts] + delays[starts]
    order = starts[np.argsort(engine_arrival, kind="stable")]
    n_static = len(order)
    eng_sorted = (arrival[order] + delays[order]).tolist()
    order_l = order.tolist()
    p_l = p_tok.tolist()
    o_l = o_tok.tolist()
    r_l = r_tok.tolist()
    think_l = wl["think_s"].to_numpy().tolist() if has_followups else []
    delay_l = delays.tolist() if has_followups else []
    arrival_l = arrival.tolist() if has_followups else []
    nxt_l = nxt.tolist() if has_followups else []
    row_of = ({ids[r]: r for r in np.flatnonzero(nxt >= 0).tolist()} if has_followups else {})
    released: list[tuple[float, int]] = []  # (engine arrival, row) of released follow-ups
    for s in scheds:
        s.fast_forward_past_finishes = not has_followups

    unsent = np.zeros(n, dtype=bool)  # follow-ups due after the horizon
    horizon_cut = float("inf") if horizon_s is None else float(horizon_s)

    def release_after(row: int, done_s: float) -> None:
        nx = nxt_l[row]
        t_send = max(arrival_l[nx], done_s + think_l[nx])
        if t_send >= horizon_cut:  # this turn and the rest of its session are never sent
            while nx >= 0:
                unsent[nx] = True
                nx = nxt_l[nx]
            return
        scheduled[nx] = t_send
        heapq.heappush(released, (t_send + delay_l[nx], nx))

    reqs: list[Any] = [None] * n
    rep_of = np.zeros(n, dtype=np.int64)
    outstanding = [0] * replicas  # requests in flight per replica, as seen at arrivals
    fin_times: list[deque[float]] = [deque() for _ in range(replicas)]  # finishes not yet seen
    busy = [0.0] * replicas
    idle = [True] * replicas
    timelines = [array("d") for _ in range(replicas)]  # end time of every step, per replica
    events: list[tuple[float, int]] = []
    horizon = float((arrival + delays).max()) if n else 0.0
    mark_every = max(horizon / 200.0, 1e-9)
    next_mark = 0.0
    steps_cap = max_steps if max_steps is not None else -1
    steps_done = 0
    # With follow-ups on several replicas, a finish on one replica can release a request at
    # any time, so a fast-forward must not run past another replica's next event.
    bound_by_others = has_followups and replicas > 1

    i = 0
    while i < n_static or events or released:
        ta = eng_sorted[i] if i < n_static else _INF
        from_release = bool(released) and released[0][0] < ta
        if from_release:
            ta = released[0][0]
        if events and events[0][0] < ta:
            t, ri = heapq.heappop(events)
            sched = scheds[ri]
            if progress is not None and t >= next_mark:
                progress(t)
                next_mark = t + mark_every
            if not sched.has_work():
                idle[ri] = True
                continue
            tl = timelines[ri]
            ends = None
            if fast_forward and sched._can_fast_forward():
                limit = min(ta, events[0][0]) if bound_by_others and events else ta
                ends = sched._fast_forward(t, limit)
            if ends:
                tl.extend(ends)
                end = ends[-1]
                steps_done += len(ends)
                if sched._finished:
                    fq = fin_times[ri]
                    for r in sched._finished:
                        fq.append(tl[r.done_step])
                        if row_of and (row := row_of.get(r.rid)) is not None:
                            release_after(row, tl[r.done_step])
            else:
                d = sched._sim_step(t)
                if d is None:
                    idle[ri] = True
                    continue
                end = t + d
                tl.append(end)
                steps_done += 1
                if sched._finished:
                    fin_times[ri].extend([end] * len(sched._finished))
                    if row_of:
                        for r in sched._finished:
                            if (row := row_of.get(r.rid)) is not None:
                                release_after(row, end)
            busy[ri] += end - t
            heapq.heappush(events, (end, ri))
            if steps_done > steps_cap >= 0:
                raise RuntimeError(
                    f"simulation exceeded max_steps={max_steps} at t={t:.3f} s (livelock?)"
                )
            continue

        if from_release:
            row = heapq.heappop(released)[1]
        else:
            row = order_l[i]
            i += 1
        app = apps[row]
        pfx: list[int] = []
        if has_pb:
            a, b = pb_off[row], pb_off[row + 1]
            if b > a:
                pfx = pb_val[a:b].tolist()
        ttft = tpot = None
        if deadlines is not None and app in deadlines:
            ttft, tpot = deadlines[app]
        req = EngineRequest(
            request_id=ids[row],
            prompt_tokens=p_l[row],
            max_output_tokens=o_l[row],
            arrival_s=ta,
            prefix_blocks=pfx,
            reasoning_tokens=r_l[row],
            app=app,
            priority=priorities.get(app, 0) if priorities is not None else 0,
            ttft_deadline_s=ttft,
            tpot_deadline_s=tpot,
        )
        for j in range(replicas):  # finishes before this arrival are visible to the router
            fq = fin_times[j]
            while fq and fq[0] < ta:
                fq.popleft()
                outstanding[j] -= 1
        if schedule is None:
            ri = rt.choose(req, outstanding)
        else:
            k = schedule[1][bisect_right(schedule[0], ta) - 1]
            ri = rt.choose(req, outstanding[:k] if k < replicas else outstanding)
        rep_of[row] = ri
        r = scheds[ri]._add(req)
        if r is None:  # rejected: answered at once, so the session goes on from here
            if has_followups and nxt_l[row] >= 0:
                release_after(row, float(scheduled[row]))
            continue
        reqs[row] = r
        outstanding[ri] += 1
        if idle[ri]:
            idle[ri] = False
            heapq.heappush(events, (ta, ri))

    tl_arrays = [np.frombuffer(tl, dtype=np.float64) if len(tl) else np.zeros(0)
                 for tl in timelines]
    sim_end = max((float(a[-1]) for a in tl_arrays if len(a)), default=0.0)
    sim_end = max(sim_end, horizon)
    records = _records(wl, reqs, rep_of, tl_arrays, scheds, scheduled, o_tok, r_tok)
    if unsent.any():
        records = records.filter(pa.array(~unsent))
    stats = _stats(scheds, busy, router)
    stats["requests"] = n - int(unsent.sum())
    stats["followups_after_horizon"] = int(unsent.sum())
    stats["sim_end_s"] = sim_end
    stats["wall_s"] = time.perf_counter() - wall0
    stats["steps"] = steps_done
    traces = [s.trace or [] for s in scheds] if trace else None
    for s in scheds:
        s.trace = None
    return SimulationResult(records, stats, sim_end, traces, tl_arrays)


def _schedule(pairs: Sequence[tuple[float, int]] | None, replicas: int
              ) -> tuple[list[float], list[int]] | None:
    """Validated (times, counts) lookup lists, starting at -inf with all ``replicas``."""
    if pairs is None:
        return None
    times, counts = [-_INF], [replicas]
    for t, k in sorted((float(t), int(k)) for t, k in pairs):
        if not 1 <= k <= replicas:
            raise ValueError(f"replica_schedule count {k} at t={t} is not within 1..{replicas}")
        times.append(t)
        counts.append(k)
    return times, counts


def _records(
    wl: pa.Table,
    reqs: list[Any],
    rep_of: np.ndarray,
    timelines: list[np.ndarray],
    scheds: list[Scheduler],
    scheduled: np.ndarray,
    o_tok: np.ndarray,
    r_tok: np.ndarray,
) -> pa.Table:
    n = wl.num_rows
    # Each request's token times are runs (segments) of its replica's step timeline: gather them
    # as slices, so the only per-token array is the result itself.
    pieces: list[np.ndarray] = []
    counts = np.zeros(n, dtype=np.int64)
    done_at = np.zeros(n, dtype=np.float64)
    ok = np.zeros(n, dtype=bool)
    for row in range(n):
        r = reqs[row]
        if r is None:
            continue
        ok[row] = True
        tl = timelines[rep_of[row]]
        segs = r.segs
        c = 0
        for j in range(0, len(segs), 2):
            a, b = segs[j], segs[j + 1]
            if b > a:
                pieces.append(tl[a:b])
                c += b - a
        counts[row] = c
        if c == 0:
            done_at[row] = tl[r.done_step]
    if np.any(counts[ok] != o_tok[ok]):
        bad = int(np.flatnonzero(ok & (counts != o_tok))[0])
        raise RuntimeError(
            f"simulator bug: request {wl['request_id'][bad].as_py()} got {counts[bad]} tokens, "
            f"expected {o_tok[bad]}"
        )
    values = np.concatenate(pieces) if pieces else np.zeros(0)
    del pieces
    total = values.size
    offsets = np.zeros(n + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(counts)
    has = counts > 0
    first_i = np.where(has, offsets[:-1], 0)
    first = values[first_i] if total else np.zeros(n)
    last = values[np.where(has, offsets[1:] - 1, 0)] if total else np.zeros(n)
    has_ans = counts > r_tok
    ans = values[np.where(has_ans, offsets[:-1] + np.minimum(r_tok, np.maximum(counts - 1, 0)), 0)
                 ] if total else np.zeros(n)
    done = np.where(has, last, 0.0)
    zero_out = ok & ~has  # max_output_tokens == 0: done when its prompt was in
    if zero_out.any():
        done[zero_out] = done_at[zero_out]
    done = np.where(ok, done, scheduled)  # rejected: answered at once

    reasons: dict[str, str] = {}
    for s in scheds:
        reasons.update(s.reject_reasons)
    rid = wl["request_id"]
    error = [None] * n
    if not ok.all():
        for row in np.flatnonzero(~ok).tolist():
            error[row] = reasons.get(rid[row].as_py(), "rejected")

    columns = {
        "request_id": rid,
        "client_id": wl["client_id"],
        "app": wl["app"],
        "scheduled_s": pa.array(scheduled, pa.float64()),
        "sent_s": pa.array(scheduled, pa.float64()),
        "first_token_s": pa.array(first, pa.float64(), mask=~has),
        "first_answer_s": pa.array(ans, pa.float64(), mask=~has_ans),
        "done_s": pa.array(done, pa.float64()),
        "input_tokens": wl["input_tokens"],
        "output_tokens": pa.array(counts, pa.int64()),
        "reasoning_tokens": pa.array(np.where(ok, np.minimum(r_tok, counts), 0), pa.int64()),
        "token_times": pa.ListArray.from_arrays(
            pa.array(offsets.astype(np.int32)), pa.array(values, pa.float64())
        ),
        "status": pa.array(np.where(ok, "ok", "http_error").tolist(), pa.string()),
        "http_status": pa.array(np.where(ok, 200, 400).astype(np.int32), pa.int32()),
        "error": pa.array(error, pa.string()),
        "queue_s": pa.array(np.zeros(n), pa.float64()),
        "token_count_source": pa.array(
            np.where(ok, "usage_deltas", "none").tolist(), pa.string()
        ),
        "cached_tokens": pa.nulls(n, pa.int64()),
        "worker": pa.nulls(n, pa.int32()),  # no client processes in virtual time
        "retries": pa.array(np.zeros(n, np.int32), pa.int32()),
    }
    arrays = [
        columns[f.name].combine_chunks() if isinstance(columns[f.name], pa.ChunkedArray)
        else columns[f.name]
        for f in RECORDS_SCHEMA
    ]
    return pa.Table.from_arrays(arrays, schema=RECORDS_SCHEMA)


def _stats(
    scheds: list[Scheduler],
    busy: list[float],
    router: str,
) -> dict[str, Any]:
    per: list[dict[str, Any]] = []
    for i, s in enumerate(scheds):
        st = s.stats
        q = st["prefix_cache_queries"]
        per.append({
            "replica": i,
            "steps": st["steps_total"],
            "busy_s": busy[i],
            "preemptions": st["preemptions_total"],
            "prefix_cache_queries": q,
            "prefix_cache_hits": st["prefix_cache_hits"],
            "prefix_hit_rate": st["prefix_cache_hits"] / q if q else 0.0,
            "max_waiting": st["max_waiting"],
            "max_running": st["max_running"],
            "rejected": st["rejected_total"],
            "deferrals": st["deferrals_total"],
            "prompt_tokens": st["prompt_tokens_total"],
            "generation_tokens": st["generation_tokens_total"],
            "prefill_tokens_computed": st["prefill_tokens_computed"],
            "hit_tokens": st["hit_tokens_total"],
            "lost_tokens": st["lost_tokens_total"],
            "kv_capacity_tokens": st["kv_capacity_tokens"],
        })
    q = sum(p["prefix_cache_queries"] for p in per)
    h = sum(p["prefix_cache_hits"] for p in per)
    return {
        "replicas": per,
        "router": router,
        "preemptions": sum(p["preemptions"] for p in per),
        "rejected": sum(p["rejected"] for p in per),
        "prefix_hit_rate": h / q if q else 0.0,
        "generation_tokens": sum(p["generation_tokens"] for p in per),
        "max_waiting": max((p["max_waiting"] for p in per), default=0),
    }
