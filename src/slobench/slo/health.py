"""Client health: is the load generator itself the bottleneck? Then the run measures the client.

A run is not valid when the p99 send lag (sent − scheduled, minus deliberate queueing for a
concurrency slot) passes a threshold (default 5 ms), or when the client's CPU was saturated
(mean utilisation of its one event-loop core at or above a threshold, default 90%, or one in five
samples at 98% or more).

A run sharded over worker processes (``--workers N``; records carry a ``worker`` column and the
CPU samples come per worker) is judged per worker: it is not valid when any worker lagged, was
CPU-saturated, or died; the reasons name the worker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from slobench.slo.metrics import send_lags
from slobench.slo.stats import percentiles

DEFAULT_LAG_THRESHOLD_S = 0.005
DEFAULT_CPU_THRESHOLD = 0.90
SATURATED_SAMPLE = 0.98

CpuSamples = Sequence[float] | Mapping[str, Sequence[float]]


def _lag_reason(lag: dict[str, Any], threshold_s: float, who: str = "") -> list[str]:
    if lag["count"] and lag["p99"] > threshold_s:
        return [f"{who}p99 send lag {lag['p99'] * 1e3:.1f} ms exceeds {threshold_s * 1e3:g} ms: "
                "the client could not keep the schedule (lower the rate, or shard the client "
                "over more --workers)"]
    return []


def _cpu(samples: Sequence[float] | None, threshold: float, who: str = ""
         ) -> tuple[dict[str, Any], list[str]]:
    if not samples:
        return {"samples": 0}, []
    arr = np.asarray(samples, dtype=np.float64)
    saturated = float(np.mean(arr >= SATURATED_SAMPLE))
    cpu = {"samples": int(arr.size), "mean": float(arr.mean()), "max": float(arr.max()),
           "saturated_fraction": saturated}
    reasons = []
    if arr.mean() >= threshold or saturated >= 0.2:
        reasons.append(
            f"{who}client CPU saturated (mean {arr.mean():.0%} of a core, {saturated:.0%} of "
            "samples at the limit): latencies include client overhead")
    return cpu, reasons


def _worker_column(records: pa.Table) -> np.ndarray | None:
    """The records' worker index (-1 where null), or None for a one-process run."""
    if "worker" not in records.column_names or records.num_rows == 0:
        return None
    col = records["worker"]
    if col.null_count == len(col):
        return None
    return col.fill_null(-1).to_numpy().astype(np.int64)


def assess(records: pa.Table, cpu_samples: CpuSamples | None, *,
           lag_threshold_s: float = DEFAULT_LAG_THRESHOLD_S,
           cpu_threshold: float = DEFAULT_CPU_THRESHOLD,
           failed_workers: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The verdict. ``cpu_samples``: a list (one process) or, for a sharded run, a mapping of
    worker index (as a string) to that worker's samples. ``failed_workers``: worker -> what
    happened to it, for workers that died or failed."""
    lags = send_lags(records)
    lag = percentiles(lags, (50, 90, 99))
    per_worker = cpu_samples if isinstance(cpu_samples, Mapping) else None
    worker_of_row = _worker_column(records)
    failed = dict(failed_workers or {})
    reasons: list[str] = []
    workers: list[dict[str, Any]] | None = None
    if per_worker is not None or worker_of_row is not None or failed:
        ids = {int(k) for k in (per_worker or {})} | {int(k) for k in failed}
        if worker_of_row is not None:
            ids |= {int(k) for k in np.unique(worker_of_row) if k >= 0}
        workers = []
        lag_flagged = False
        for k in sorted(ids):
            who = f"worker {k}: "
            mask = (worker_of_row == k) if worker_of_row is not None else np.zeros(0, bool)
            wlag = percentiles(lags[mask] if mask.size else np.zeros(0), (50, 99))
            wcpu, cpu_reasons = _cpu((per_worker or {}).get(str(k)), cpu_threshold, who)
            lag_reasons = _lag_reason(wlag, lag_threshold_s, who)
            lag_flagged = lag_flagged or bool(lag_reasons)
            wreasons = lag_reasons + cpu_reasons
            if str(k) in failed:
                wreasons.append(f"worker {k} {failed[str(k)]}")
            workers.append({"worker": k, "requests": int(mask.sum()), "send_lag_s": wlag,
                            "cpu": wcpu, "valid": not wreasons, "reasons": wreasons,
                            "failed": failed.get(str(k))})
            reasons += wreasons
        if not lag_flagged:
            reasons += _lag_reason(lag, lag_threshold_s)  # the pooled tail, as a backstop
        pooled = [s for w in (per_worker or {}).values() for s in w]
        cpu, _ = _cpu(pooled, cpu_threshold)  # per worker, on average: the verdict is above
        if cpu.get("samples"):
            cpu["workers"] = len(per_worker or {})
    else:
        reasons += _lag_reason(lag, lag_threshold_s)
        cpu, cpu_reasons = _cpu(cpu_samples, cpu_threshold)  # type: ignore[arg-type]
        reasons += cpu_reasons
    out = {
        "valid": not reasons,
        "reasons": reasons,
        "send_lag_s": lag,
        "cpu": cpu,
        "thresholds": {"send_lag_p99_s": lag_threshold_s, "cpu": cpu_threshold},
    }
    if workers is not None:
        out["workers"] = workers
    return out
