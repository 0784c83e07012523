"""Client health: is the load generator itself the bottleneck? Then the run measures the client.

A run is not valid when the p99 send lag (sent − scheduled, minus deliberate queueing for a
concurrency slot) passes a threshold (default 5 ms), or when the client's CPU was saturated
(mean utilisation of its one event-loop core at or above a threshold, default 90%, or one in five
samples at 98% or more).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from slobench.slo.metrics import send_lags
from slobench.slo.stats import percentiles

DEFAULT_LAG_THRESHOLD_S = 0.005
DEFAULT_CPU_THRESHOLD = 0.90
SATURATED_SAMPLE = 0.98


def assess(records: pa.Table, cpu_samples: list[float] | None, *,
           lag_threshold_s: float = DEFAULT_LAG_THRESHOLD_S,
           cpu_threshold: float = DEFAULT_CPU_THRESHOLD) -> dict[str, Any]:
    lag = percentiles(send_lags(records), (50, 90, 99))
    reasons: list[str] = []
    if lag["count"] and lag["p99"] > lag_threshold_s:
        reasons.append(
            f"p99 send lag {lag['p99'] * 1e3:.1f} ms exceeds {lag_threshold_s * 1e3:g} ms: the "
            "client could not keep the schedule (lower the rate, or shard the client)")
    cpu: dict[str, Any] = {"samples": 0}
    if cpu_samples:
        arr = np.asarray(cpu_samples, dtype=np.float64)
        saturated = float(np.mean(arr >= SATURATED_SAMPLE))
        cpu = {"samples": int(arr.size), "mean": float(arr.mean()), "max": float(arr.max()),
               "saturated_fraction": saturated}
        if arr.mean() >= cpu_threshold or saturated >= 0.2:
            reasons.append(
                f"client CPU saturated (mean {arr.mean():.0%} of a core, {saturated:.0%} of "
                "samples at the limit): latencies include client overhead")
    return {
        "valid": not reasons,
        "reasons": reasons,
        "send_lag_s": lag,
        "cpu": cpu,
        "thresholds": {"send_lag_p99_s": lag_threshold_s, "cpu": cpu_threshold},
    }
