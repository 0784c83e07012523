"""Run summary: latency percentiles, throughput, SLO attainment and goodput, overall and per class.

Pure function of a Records table and an SLO set; the result is JSON-serializable (plain Python
numbers, NaN written as None). See docs/slo.md for the definitions.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from slobench.errors import UserError
from slobench.schema import conform_records
from slobench.slo.metrics import Derived, SLOCheck, check_slos, derive
from slobench.slo.spec import ClassSLO, SLOSet
from slobench.slo.stats import percentiles

LATENCY_METRICS = ("ttft", "tpot", "itl", "e2e", "ttfa", "send_lag", "queue")


def _clean(obj):
    """Plain JSON types: numpy scalars to Python, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


def _rate(count: float, duration: float) -> float:
    return count / duration if duration > 0 else math.nan


def _frac(mask: np.ndarray, rows: np.ndarray) -> float:
    k = int(rows.sum())
    return float(mask[rows].sum()) / k if k else math.nan


def _block(d: Derived, chk: SLOCheck, status: np.ndarray, rows: np.ndarray, duration: float,
           cls: ClassSLO | None, passed_override: bool | None = None) -> dict:
    n = int(rows.sum())
    ok_rows = rows & d.ok
    n_ok = int(ok_rows.sum())
    bad, counts = np.unique(status[rows & ~d.ok], return_counts=True) if n else ((), ())
    errors = {str(s): int(c) for s, c in sorted(zip(bad, counts, strict=True),
                                                key=lambda sc: (-sc[1], str(sc[0])))}
    latency = {}
    for name in LATENCY_METRICS:
        if name == "itl":
            values = d.itl_values if rows.all() else d.itl_values[rows[d.itl_index]]
        elif name == "send_lag":
            values = d.send_lag[rows]
        else:
            values = getattr(d, name)[rows]
        latency[name] = percentiles(values)
    throughput = {
        "requests_per_s": _rate(n_ok, duration),
        "input_tokens_per_s": _rate(float(d.input_tokens[ok_rows].sum()), duration),
        "output_tokens_per_s": _rate(float(d.output_tokens[ok_rows].sum()), duration),
    }
    n_met = int(chk.met[rows].sum())
    attainment = n_met / n if n else math.nan
    slo: dict = {}
    if cls is not None:
        slo["class"] = cls.name
        slo["spec"] = cls.text
        slo["attainment"] = attainment
        slo["per_constraint"] = {c.text: _frac(chk.passed[c.metric], rows)
                                 for c in cls.constraints}
        slo["target"] = cls.attain
        slo["passed"] = bool(n) and attainment >= cls.attain - 1e-12
    else:
        slo["attainment"] = attainment
        slo["per_constraint"] = {k: _frac(chk.passed[k], rows & chk.applies[k])
                                 for k in chk.passed}
        slo["target"] = math.nan
        slo["passed"] = bool(passed_override)
    return {
        "requests": n,
        "ok": n_ok,
        "errors": errors,
        "latency": latency,
        "throughput": throughput,
        "slo": slo,
        "goodput_rps": _rate(n_met, duration),
    }


def summarize(records: pa.Table, slos: SLOSet, *,
              window: tuple[float, float] | None = None) -> dict:
    """Summary of a run (see docs/slo.md). Only requests with ``window[0] <= scheduled_s <
    window[1]`` count, and the window length is the denominator of every rate. Without a window:
    all requests, over min(scheduled_s) .. max(done_s, scheduled_s)."""
    records = conform_records(records)
    total = records.num_rows
    sched_all = np.asarray(records.column("scheduled_s").to_numpy(), dtype=np.float64)
    if window is None:
        if total:
            done_all = np.asarray(
                records.column("done_s").cast(pa.float64()).fill_null(np.nan).to_numpy(),
                dtype=np.float64,
            )
            a = float(sched_all.min())
            b = float(np.nanmax(np.r_[sched_all, done_all]))
        else:
            a = b = 0.0
        keep = np.ones(total, dtype=bool)
    else:
        a, b = float(window[0]), float(window[1])
        if not (math.isfinite(a) and math.isfinite(b)) or b <= a:
            raise UserError(
                f"summary window [{a}, {b}) is empty; give a start before the end (seconds)"
            )
        keep = (sched_all >= a) & (sched_all < b)
    if not keep.all():
        records = records.filter(pa.array(keep))
    duration = b - a

    d = derive(records)
    chk = check_slos(d, records, slos)
    status = np.asarray(records.column("status").to_numpy(), dtype=object)
    apps = np.asarray(records.column("app").to_numpy(), dtype=object)

    classes: dict[str, dict] = {}
    for app in sorted({str(x) for x in apps}):
        classes[app] = _block(d, chk, status, apps == app, duration, slos.for_app(app))
    all_passed = bool(classes) and all(c["slo"]["passed"] for c in classes.values())
    overall = _block(d, chk, status, np.ones(d.n, dtype=bool), duration, None, all_passed)
    targets = {slos.for_app(app).attain for app in classes}
    if len(targets) == 1:
        overall["slo"]["target"] = targets.pop()

    return _clean({
        "window": [a, b],
        "duration_s": duration,
        "total_requests": total,
        "excluded_by_window": int(total - d.n),
        "slo_spec": slos.to_text(),
        "overall": overall,
        "classes": classes,
    })
