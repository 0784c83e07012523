"""Replica planning on the simulator: the fewest replicas that serve a workload within its SLOs
(``plan_one``), and a time-varying plan that follows a diurnal workload window by window
(``plan_schedule``). Jobs are plain dicts so they run in worker processes (``slobench plan``)
or anywhere else that can call a function (Ray tasks).

A job: ``workload`` (Parquet path), ``engine`` (EngineConfig fields), ``slo`` (spec text or
None), ``router``, ``horizon_s``, ``max_replicas``, ``prefix_block_tokens``, ``label`` (copied
into the result); ``window_s`` for ``plan_schedule``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import numpy as np
import pyarrow as pa

__all__ = ["fewest_replicas", "plan_one", "plan_schedule", "replica_schedule", "run_jobs",
           "window_edges"]

# Traffic before a window that its simulation replays first, so the window starts with the
# queues and caches it would have; judged are only the window's own requests.
LEAD_IN_S = 300.0
VALIDATION_ROUNDS = 4


def _setup(job: dict[str, Any]) -> tuple[pa.Table, Any, Any, Any]:
    import pyarrow.parquet as pq

    from slobench.engine.config import EngineConfig
    from slobench.slo.spec import parse_slo

    # A path on this machine, or the Parquet bytes themselves (Ray workers elsewhere).
    src = job["workload"]
    table = pq.read_table(pa.BufferReader(src) if isinstance(src, bytes) else src)
    engine = EngineConfig(**job["engine"])
    return table, engine, parse_slo(job["slo"]), engine.scheduler_maker(
        job["prefix_block_tokens"])


def _judge(records: pa.Table, slos: Any, window: tuple[float, float], load: float) -> Any:
    from slobench.slo.capacity import is_saturated, trial_from_summary
    from slobench.slo.summary import summarize

    summary = summarize(records, slos, window=window)
    return trial_from_summary(load, summary, saturated=is_saturated(records, window))


def fewest_replicas(table: pa.Table, maker: Any, slos: Any, *, router: str, horizon_s: float,
                    max_replicas: int, start: int = 1) -> dict[str, Any]:
    """The fewest replicas meeting the SLOs over the whole horizon (``replicas`` None if none
    within ``max_replicas``), with its attainment, goodput and output tokens/s."""
    from slobench.engine.simulator import simulate
    from slobench.slo.capacity import min_replicas

    window = (0.0, horizon_s)
    seen: dict[int, Any] = {}

    def evaluate(n: int) -> Any:
        res = simulate(table, maker, replicas=n, router=router, horizon_s=horizon_s)
        t = _judge(res.records, slos, window, float(n))
        seen[n] = (t, res.stats.get("generation_tokens", 0))
        return t

    best, trials = min_replicas(evaluate, max_replicas=max_replicas, start=start)
    out: dict[str, Any] = {"replicas": best, "trials": len(trials)}
    if best is None and trials:
        last = max(trials, key=lambda t: t.load)
        out["note"] = (f"{last.attainment:.1%} attainment at {int(last.load)} replicas"
                       + (", and more replicas do not raise it: the SLOs are out of reach for "
                          "this engine (see the per-class summary of one run)"
                          if last.load < max_replicas else ""))
    if best is not None:
        t, gen_tokens = seen[best]
        out.update(attainment=t.attainment, goodput_rps=t.goodput_rps,
                   output_tokens_per_s=gen_tokens / horizon_s)
    return out


def plan_one(job: dict[str, Any]) -> dict[str, Any]:
    """One grid point: the fewest replicas meeting the SLOs over the whole horizon."""
    table, _, slos, maker = _setup(job)
    return {**job["label"], **fewest_replicas(
        table, maker, slos, router=job["router"], horizon_s=job["horizon_s"],
        max_replicas=job["max_replicas"], start=int(job.get("start", 1)))}


def window_edges(horizon_s: float, window_s: float) -> list[tuple[float, float]]:
    """``[0, w), [w, 2w), ...`` up to the horizon (the last window may be shorter)."""
    if window_s <= 0 or horizon_s <= 0:
        raise ValueError("window and horizon must be positive")
    k = max(1, math.ceil(horizon_s / window_s - 1e-9))
    return [(i * window_s, min((i + 1) * window_s, horizon_s)) for i in range(k)]


def _slice(table: pa.Table, a: float, b: float) -> pa.Table:
    arr = table["arrival_s"].to_numpy()
    return table.filter(pa.array((arr >= a) & (arr < b)))


def plan_schedule(job: dict[str, Any]) -> dict[str, Any]:
    """One grid point, planned per window (``job["window_s"]``): see ``replica_schedule``."""
    table, _, slos, maker = _setup(job)
    return {**job["label"], "window_s": job["window_s"], **replica_schedule(
        table, maker, slos, router=job["router"], horizon_s=job["horizon_s"],
        window_s=job["window_s"], max_replicas=job["max_replicas"])}


def replica_schedule(table: pa.Table, maker: Any, slos: Any, *, router: str, horizon_s: float,
                     window_s: float, max_replicas: int) -> dict[str, Any]:
    """A time-varying plan. Window by window, the fewest replicas that meet the SLOs for the
    requests scheduled in that window (simulated after a lead-in of the traffic before it, on
    the replicas already planned for that time); then the whole horizon simulated on that
    schedule (replicas drain when taken out, start cold when added), and any window that misses
    its SLOs there is given one more replica, until all pass. Also the static plan (one count
    for the whole horizon, judged over the whole horizon) and how each of its windows fares,
    so the two compare in replica-hours."""
    from slobench.engine.simulator import simulate
    from slobench.slo.capacity import min_replicas

    horizon, cap = horizon_s, max_replicas
    edges = window_edges(horizon, window_s)

    counts: list[int] = []
    searches = 0
    for i, (a, b) in enumerate(edges):
        lead = max(0.0, a - LEAD_IN_S)
        part = _slice(table, lead, b)
        if not (part["arrival_s"].to_numpy() >= a).any():
            counts.append(counts[-1] if counts else 1)  # nothing new: keep what is up
            continue
        before = [(max(lead, edges[j][0]), counts[j]) for j in range(i)
                  if edges[j][1] > lead]

        def evaluate(n: int, part: pa.Table = part, a: float = a, b: float = b,
                     before: list[tuple[float, int]] = before) -> Any:
            peak = max([n] + [k for _, k in before])
            res = simulate(part, maker, replicas=peak, router=router, horizon_s=b,
                           replica_schedule=[*before, (a, n)])
            return _judge(res.records, slos, (a, b), float(n))

        best, trials = min_replicas(evaluate, max_replicas=cap,
                                    start=counts[-1] if counts else 1)
        searches += len(trials)
        if best is None:
            return {"replicas": None, "trials": searches,
                    "note": f"window {i} ({a:.0f}–{b:.0f} s) needs more than {cap} replicas"}
        counts.append(best)

    sched = list(counts)
    rounds = 0
    while True:
        peak = max(sched)
        res = simulate(table, maker, replicas=peak, router=router, horizon_s=horizon,
                       replica_schedule=[(a, k) for (a, _), k in zip(edges, sched, strict=True)])
        per_window = [_judge(res.records, slos, w, float(k))
                      for w, k in zip(edges, sched, strict=True)]
        failing = [i for i, t in enumerate(per_window)
                   if not t.passed and t.offered_rps > 0 and sched[i] < cap]
        if not failing or rounds >= VALIDATION_ROUNDS:
            break
        rounds += 1
        for i in failing:
            sched[i] += 1
    whole = _judge(res.records, slos, (0.0, horizon), float(peak))
    hours = [(b - a) / 3600.0 for a, b in edges]
    out: dict[str, Any] = {
        "replicas": peak, "trials": searches,
        "schedule": [{"from_s": a, "to_s": b, "replicas": k, "attainment": t.attainment,
                      "offered_rps": t.offered_rps, "passed": t.passed or t.offered_rps == 0}
                     for (a, b), k, t in zip(edges, sched, per_window, strict=True)],
        "replica_hours": float(np.dot(sched, hours)),
        "attainment": whole.attainment, "goodput_rps": whole.goodput_rps,
        "output_tokens_per_s": res.stats.get("generation_tokens", 0) / horizon,
        "windows_failed": sum(not w.passed and w.offered_rps > 0 for w in per_window),
        "validation_rounds": rounds,
    }

    # The static alternative, searched from the schedule's peak downwards.
    static = fewest_replicas(table, maker, slos, router=router, horizon_s=horizon,
                             max_replicas=cap, start=peak)
    out["static_replicas"] = static["replicas"]
    if static["replicas"] is not None:
        k = static["replicas"]
        res = simulate(table, maker, replicas=k, router=router, horizon_s=horizon)
        live = [t for t in (_judge(res.records, slos, w, float(k)) for w in edges)
                if t.offered_rps > 0]
        out.update(
            static_attainment=static["attainment"],
            static_replica_hours=k * sum(hours),
            static_windows_failed=sum(not t.passed for t in live),
            static_worst_window_attainment=min((t.attainment for t in live), default=None),
        )
    return out


def run_jobs(fn: Callable[[dict[str, Any]], dict[str, Any]], jobs: list[dict[str, Any]], *,
             workers: int = 1, ray_address: str | None = None,
             on_done: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """``[fn(job) for job in jobs]``, in order, computed in this process (``workers`` 1), in
    ``workers`` local processes, or as Ray tasks on the cluster at ``ray_address`` (``auto``,
    ``HOST:PORT`` or ``ray://HOST:PORT``; one CPU each). For Ray, a job's ``workload`` path is
    replaced by the file's bytes, put in the object store once, so workers need no shared
    disk. ``on_done`` is called with each result as it arrives (progress)."""
    if ray_address:
        return _run_ray(fn, jobs, ray_address, on_done)
    if workers <= 1 or len(jobs) <= 1:
        out = []
        for job in jobs:
            out.append(fn(job))
            if on_done is not None:
                on_done(out[-1])
        return out
    with ProcessPoolExecutor(min(workers, len(jobs))) as pool:
        futures = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
        results: list[Any] = [None] * len(jobs)
        for fut in as_completed(futures):
            results[futures[fut]] = fut.result()
            if on_done is not None:
                on_done(results[futures[fut]])
    return results


def _with_workload(fn: Callable[[dict[str, Any]], dict[str, Any]], job: dict[str, Any],
                   workload: bytes) -> dict[str, Any]:
    return fn({**job, "workload": workload})


def _run_ray(fn: Callable[[dict[str, Any]], dict[str, Any]], jobs: list[dict[str, Any]],
             address: str, on_done: Callable[[dict[str, Any]], None] | None
             ) -> list[dict[str, Any]]:
    from pathlib import Path

    from slobench.client.ray_shards import check_reachable
    from slobench.errors import UserError

    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray: pip install 'slobench[ray]' (here and on the "
                        "cluster's nodes)") from None
    check_reachable(address)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level="warning", ignore_reinit_error=True)
    except Exception as exc:  # ray raises ConnectionError, RuntimeError, ValueError...
        raise UserError(f"--ray {address}: cannot connect ({str(exc).splitlines()[0]}); start "
                        "a cluster with `ray start --head` and give its address, e.g. "
                        "127.0.0.1:6379") from None
    try:
        task = ray.remote(num_cpus=1)(_with_workload)
        blobs: dict[str, Any] = {}
        refs = []
        for job in jobs:
            path = str(job["workload"])
            if path not in blobs:
                blobs[path] = ray.put(Path(path).read_bytes())
            # an ObjectRef given as an argument reaches the task as its value (the bytes)
            refs.append(task.remote(fn, {k: v for k, v in job.items() if k != "workload"},
                                    blobs[path]))
        index = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(jobs)
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                results[index[ref]] = ray.get(ref)
                if on_done is not None:
                    on_done(results[index[ref]])
        return results
    finally:
        ray.shutdown()
