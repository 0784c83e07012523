"""Capacity: the highest load at which a target still meets its SLOs.

The search is a pure function of an ``evaluate(load) -> Trial`` callback, so the same code drives
the simulator (virtual time, deterministic: one trial per load) and a live target (real time,
noisy: several trials per load, averaged). ``load`` is a multiplier of a base workload's rate.

1. **Bracket**: from ``start``, double while the SLOs are met (stop early when a trial is
   *saturated*: latency grows without bound over the trial, so higher loads cannot pass), or
   halve while they are not, until one load passes and a higher one fails.
2. **Bisect** between them (geometric midpoint) until the bracket is within ``rel_tol``.

Every trial is kept: the report is the whole curve (attainment and goodput against load), not
only the point.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from slobench.errors import UserError


@dataclass
class Trial:
    """One measurement at one load. ``passed``: every class met its attainment target."""

    load: float
    offered_rps: float
    attainment: float
    goodput_rps: float
    passed: bool
    saturated: bool = False
    ttft_p99_s: float | None = None
    repeats: int = 1
    run_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CapacityResult:
    capacity_load: float | None  # the highest load that passed (None: none did)
    capacity_rps: float | None
    bracket: tuple[float | None, float | None]  # (highest passed, lowest failed)
    trials: list[Trial]
    stopped: str  # why the search ended

    def curve(self) -> list[Trial]:
        return sorted(self.trials, key=lambda t: t.load)

    def as_dict(self) -> dict[str, Any]:
        return {"capacity_load": self.capacity_load, "capacity_rps": self.capacity_rps,
                "bracket": list(self.bracket), "stopped": self.stopped,
                "curve": [t.as_dict() for t in self.curve()]}


def is_saturated(records: pa.Table, window: tuple[float, float], *, ratio: float = 2.0,
                 floor_s: float = 0.25) -> bool:
    """Latency growing without bound: the median TTFT of the requests scheduled in the last
    third of the window exceeds ``ratio`` times (and ``floor_s`` more than) that of the first
    third, or requests of the last third never got a first token while the first third did."""
    sched = records["scheduled_s"].to_numpy()
    first = records["first_token_s"].to_numpy(zero_copy_only=False)
    first = np.where(pa.compute.is_null(records["first_token_s"]).to_numpy(
        zero_copy_only=False), np.nan, first.astype(np.float64))
    a, b = window
    third = (b - a) / 3
    early = (sched >= a) & (sched < a + third)
    late = (sched >= b - third) & (sched < b)
    if not early.any() or not late.any():
        return False
    ttft = first - sched
    e, lt = ttft[early], ttft[late]
    if np.isnan(lt).mean() > 0.5 > np.isnan(e).mean():
        return True
    e_med = float(np.nanmedian(e)) if np.isfinite(e).any() else math.nan
    l_med = float(np.nanmedian(lt)) if np.isfinite(lt).any() else math.nan
    if not (math.isfinite(e_med) and math.isfinite(l_med)):
        return False
    return l_med > ratio * e_med and l_med > e_med + floor_s


def find_capacity(evaluate: Callable[[float], Trial], *, start: float = 1.0,
                  rel_tol: float = 0.05, min_load: float = 1e-3, max_load: float = 1e4,
                  max_trials: int = 30,
                  on_trial: Callable[[Trial], None] | None = None) -> CapacityResult:
    """The highest load (a rate multiplier) whose trial passes; see the module docstring."""
    if not (math.isfinite(start) and start > 0):
        raise UserError(f"capacity: the starting load {start!r} must be > 0")
    if not 0 < rel_tol < 1:
        raise UserError(f"capacity: the tolerance {rel_tol!r} must be between 0 and 1 "
                        "(e.g. 0.05 for 5%)")
    trials: list[Trial] = []

    def run(load: float) -> Trial:
        t = evaluate(load)
        trials.append(t)
        if on_trial is not None:
            on_trial(t)
        return t

    lo: Trial | None = None  # highest passing
    hi: Trial | None = None  # lowest failing
    t = run(start)
    if t.passed:
        lo = t
        while hi is None:
            if lo.load * 2 > max_load or len(trials) >= max_trials:
                return _result(lo, hi, trials, "reached the maximum load without failing")
            t = run(lo.load * 2)
            if t.passed and not t.saturated:
                lo = t
            else:
                hi = t
    else:
        hi = t
        while lo is None:
            if hi.load / 2 < min_load or len(trials) >= max_trials:
                return _result(lo, hi, trials, "no load passed down to the minimum")
            t = run(hi.load / 2)
            if t.passed:
                lo = t
            else:
                hi = t
    while hi.load / lo.load - 1 > rel_tol:
        if len(trials) >= max_trials:
            return _result(lo, hi, trials, f"stopped after {max_trials} trials")
        t = run(math.sqrt(lo.load * hi.load))
        if t.passed and not t.saturated:
            lo = t
        else:
            hi = t
    return _result(lo, hi, trials, f"bracket within {rel_tol:.0%}")


def _result(lo: Trial | None, hi: Trial | None, trials: list[Trial],
            stopped: str) -> CapacityResult:
    return CapacityResult(
        capacity_load=lo.load if lo else None, capacity_rps=lo.offered_rps if lo else None,
        bracket=(lo.load if lo else None, hi.load if hi else None), trials=trials,
        stopped=stopped)


def trial_from_summary(load: float, summary: dict[str, Any], *, saturated: bool,
                       run_id: str = "") -> Trial:
    """A Trial from a run summary (``slobench.slo.summary.summarize``)."""
    overall = summary.get("overall") or {}
    slo = overall.get("slo") or {}
    offered = (summary.get("total_requests", 0) - summary.get("excluded_by_window", 0)) / max(
        summary.get("duration_s") or 0.0, 1e-9)
    ttft = ((overall.get("latency") or {}).get("ttft") or {}).get("p99")
    return Trial(load=load, offered_rps=offered, attainment=slo.get("attainment") or 0.0,
                 goodput_rps=overall.get("goodput_rps") or 0.0,
                 passed=bool(slo.get("passed")) and not saturated, saturated=saturated,
                 ttft_p99_s=ttft, run_ids=[run_id] if run_id else [])


def average_trials(trials: list[Trial]) -> Trial:
    """Repeated trials at one load: mean attainment and goodput; passed by the mean."""
    first = trials[0]
    att = float(np.mean([t.attainment for t in trials]))
    return Trial(load=first.load, offered_rps=float(np.mean([t.offered_rps for t in trials])),
                 attainment=att, goodput_rps=float(np.mean([t.goodput_rps for t in trials])),
                 passed=sum(t.passed for t in trials) * 2 > len(trials),
                 saturated=any(t.saturated for t in trials),
                 ttft_p99_s=max((t.ttft_p99_s for t in trials if t.ttft_p99_s is not None),
                                default=None),
                 repeats=len(trials), run_ids=[r for t in trials for r in t.run_ids])


def min_replicas(evaluate: Callable[[int], Trial], *, max_replicas: int = 64,
                 on_trial: Callable[[Trial], None] | None = None, start: int = 1,
                 ) -> tuple[int | None, list[Trial]]:
    """The fewest replicas whose trial passes (``Trial.load`` holds the replica count),
    assuming more replicas never hurt: from ``start`` (a guess, e.g. a neighbouring window's
    answer), double until one passes or halve until one fails, then bisect. Gives up (None)
    when doubling neither helps attainment nor leaves a trial overloaded."""
    trials: list[Trial] = []

    def run(n: int) -> Trial:
        t = evaluate(n)
        trials.append(t)
        if on_trial is not None:
            on_trial(t)
        return t

    lo_fail, hi_pass = 0, None
    n = min(max(1, start), max_replicas)
    if n > 1 and run(n).passed:
        hi_pass = n
        m = n // 2
        while m >= 1:  # halve while it still passes
            if run(m).passed:
                hi_pass, m = m, m // 2
            else:
                lo_fail = m
                break
    else:
        if n > 1:
            lo_fail, n = n, min(n * 2, max_replicas) if n < max_replicas else n + 1
        prev: Trial | None = trials[-1] if trials else None
        while n <= max_replicas:
            t = run(n)
            if t.passed:
                hi_pass = n
                break
            if prev is not None and t.attainment <= prev.attainment + 1e-3 and not t.saturated:
                # twice the replicas, no better and not overloaded: scaling out cannot meet the
                # SLOs (e.g. prompts whose prefill alone exceeds the TTFT target)
                return None, trials
            prev = t
            lo_fail, n = n, n * 2
        if hi_pass is None:
            if lo_fail < max_replicas and run(max_replicas).passed:
                hi_pass = max_replicas
            else:
                return None, trials
    while hi_pass - lo_fail > 1:
        mid = (lo_fail + hi_pass) // 2
        if run(mid).passed:
            hi_pass = mid
        else:
            lo_fail = mid
    return hi_pass, trials
