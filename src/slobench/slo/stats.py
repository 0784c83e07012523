"""The one percentile function of the project: exact, NaN-ignoring, numpy linear interpolation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_QS: tuple[float, ...] = (50, 90, 95, 99)


def _key(q: float) -> str:
    return f"p{q:g}"


def percentiles(values: np.ndarray | Sequence[float], qs: Sequence[float] = DEFAULT_QS) -> dict:
    """Percentiles of ``values`` computed exactly on all data, ignoring NaN.

    Returns ``{"p50": .., "p90": .., "p95": .., "p99": .., "max": .., "mean": .., "count": n}``
    (one ``p<q>`` key per entry of ``qs``, e.g. ``p99.9``). Values are plain Python floats; with no
    (non-NaN) data every value is NaN and ``count`` is 0. Percentiles use numpy's default linear
    interpolation between the two nearest ranks.
    """
    arr = np.asarray(values, dtype=np.float64).ravel()
    nan = np.isnan(arr)
    if nan.any():  # copy only when there is something to drop: arrays can be huge
        arr = arr[~nan]
    del nan
    out: dict[str, float | int] = {}
    if arr.size == 0:
        for q in qs:
            out[_key(q)] = float("nan")
        out["max"] = float("nan")
        out["mean"] = float("nan")
        out["count"] = 0
        return out
    pcts = np.percentile(arr, list(qs)) if len(qs) else []
    for q, v in zip(qs, pcts, strict=True):
        out[_key(q)] = float(v)
    out["max"] = float(arr.max())
    out["mean"] = float(arr.mean())
    out["count"] = int(arr.size)
    return out


def describe(values: np.ndarray | Sequence[float], qs: Sequence[float] = DEFAULT_QS) -> dict:
    """``percentiles()`` plus ``min`` and ``std`` (population standard deviation)."""
    arr = np.asarray(values, dtype=np.float64).ravel()
    arr = arr[~np.isnan(arr)]
    out = percentiles(arr, qs)
    out["min"] = float(arr.min()) if arr.size else float("nan")
    out["std"] = float(arr.std()) if arr.size else float("nan")
    return out
