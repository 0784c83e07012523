"""A synthetic Workload table: one arrival process, independent length distributions, an app mix.

Every field is drawn from its own random stream, derived from the seed by name (see ``STREAMS``),
so adding a field later never changes the values of the others for the same seed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from slobench.errors import UserError
from slobench.schema import WORKLOAD_SCHEMA, conform_workload
from slobench.workload.arrivals import RateFunction, arrival_times, as_rate_function
from slobench.workload.lengths import LengthDist, as_length_dist

DEFAULT_INPUT_TOKENS = "lognormal:mean=512,cv=1,max=8192"
DEFAULT_OUTPUT_TOKENS = "lognormal:mean=256,cv=1,max=4096"

# One random stream per field, in this order forever: append new fields, never reorder.
STREAMS = ("arrivals", "input_tokens", "output_tokens", "app")

APP_MIX_FORM = "app:weight,... e.g. chatbot:0.7,coding:0.3 (a bare name means weight 1)"
_APP_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def rng_streams(seed: int) -> dict[str, np.random.Generator]:
    """One independent generator per name in ``STREAMS``, derived from ``seed``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"--seed {seed!r} must be a whole number >= 0")
    children = np.random.SeedSequence(int(seed)).spawn(len(STREAMS))
    return {
        name: np.random.default_rng(child) for name, child in zip(STREAMS, children, strict=True)
    }


def _normalize_mix(mix: Mapping[str, float], source: str) -> dict[str, float]:
    if not mix:
        raise UserError(f"--apps {source!r}: no application given; use {APP_MIX_FORM}")
    out: dict[str, float] = {}
    for name, weight in mix.items():
        if not isinstance(name, str) or not _APP_NAME.match(name):
            raise UserError(
                f"--apps {source!r}: app name {name!r} must be letters, digits, '_', '-' or '.'"
            )
        try:
            w = float(weight)
        except (TypeError, ValueError):
            raise UserError(f"--apps {source!r}: weight of {name!r} is not a number") from None
        if not math.isfinite(w) or w < 0:
            raise UserError(f"--apps {source!r}: weight of {name!r} must be a finite number >= 0")
        out[name] = w
    total = sum(out.values())
    if total <= 0:
        raise UserError(f"--apps {source!r}: the weights sum to 0; give at least one weight > 0")
    return {name: w / total for name, w in out.items()}


def parse_app_mix(text: str) -> dict[str, float]:
    """Parse ``chatbot:0.7,coding:0.3`` into weights that sum to 1 (``chatbot`` alone means 1)."""
    mix: dict[str, float] = {}
    for item in str(text).split(","):
        item = item.strip()
        name, sep, weight = item.partition(":")
        name = name.strip()
        if not name or (sep and not weight.strip()):
            raise UserError(f"--apps {text!r}: empty item {item!r}; use {APP_MIX_FORM}")
        if not _APP_NAME.match(name):
            raise UserError(
                f"--apps {text!r}: app name {name!r} must be letters, digits, '_', '-' or '.'; "
                f"use {APP_MIX_FORM}"
            )
        if name in mix:
            raise UserError(f"--apps {text!r}: app {name!r} is given twice; give each app once")
        try:
            mix[name] = float(weight) if sep else 1.0
        except ValueError:
            raise UserError(
                f"--apps {text!r}: weight {weight.strip()!r} of {name!r} is not a number; "
                f"use {APP_MIX_FORM}"
            ) from None
    return _normalize_mix(mix, text)


def _request_ids(n: int) -> pa.Array:
    """``r000000``, ``r000001``, ... zero padded to at least 6 digits (wider for huge tables)."""
    width = max(6, len(str(max(n - 1, 0))))
    digits = pc.utf8_lpad(pa.array(np.arange(n, dtype=np.int64)).cast(pa.string()), width, "0")
    return pc.binary_join_element_wise("r", digits, "")


def _repeat_string(value: str, n: int) -> pa.Array:
    return pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(n, dtype=np.int32)), pa.array([value], pa.string())
    ).cast(pa.string())


def _empty_lists(n: int) -> pa.Array:
    return pa.ListArray.from_arrays(
        pa.array(np.zeros(n + 1, dtype=np.int32)), pa.array([], pa.int64())
    )


def synthetic_workload(
    *,
    process: str = "poisson",
    rate: RateFunction | str | float = "10",
    cv: float = 1.0,
    n_requests: int | None = None,
    duration_s: float | None = None,
    input_tokens: LengthDist | str | int = DEFAULT_INPUT_TOKENS,
    output_tokens: LengthDist | str | int = DEFAULT_OUTPUT_TOKENS,
    apps: Mapping[str, float] | str = "chatbot",
    reasoning_fraction: float = 0.0,
    seed: int = 0,
    client_id: str = "synthetic",
) -> pa.Table:
    """A Workload table (``slobench.schema.WORKLOAD_SCHEMA``) of single-turn requests.

    Arrivals follow ``process`` ("poisson", "gamma" with ``cv``, "constant") at ``rate`` (a number
    of req/s, a rate function, or a ``--rate`` string) until ``n_requests`` or ``duration_s``.
    Lengths are drawn independently from ``input_tokens`` and ``output_tokens``; each request gets
    an app from the ``apps`` mix. For app "reasoning", ``reasoning_tokens`` is
    ``round(reasoning_fraction * output_tokens)`` (the reasoning part of the output).
    """
    rate_fn = as_rate_function(rate)
    in_dist = as_length_dist(input_tokens, what="--input-tokens")
    out_dist = as_length_dist(output_tokens, what="--output-tokens")
    mix = (
        parse_app_mix(apps) if isinstance(apps, str) else _normalize_mix(apps, str(dict(apps)))
    )
    fraction = float(reasoning_fraction)
    if not math.isfinite(fraction) or not 0.0 <= fraction <= 1.0:
        raise UserError(f"--reasoning-fraction {reasoning_fraction!r} must be between 0 and 1")
    if fraction > 0 and mix.get("reasoning", 0.0) <= 0:
        raise UserError(
            "--reasoning-fraction applies only to the app 'reasoning', which is not in --apps; "
            "add it, e.g. --apps chatbot:0.8,reasoning:0.2"
        )
    if not client_id:
        raise UserError("client id must not be empty")
    streams = rng_streams(seed)

    arrivals = arrival_times(
        process, rate_fn, cv=cv, n=n_requests, duration_s=duration_s, rng=streams["arrivals"]
    )
    n = len(arrivals)
    if n == 0:
        raise UserError(
            f"no request arrives within {duration_s:g} s at {rate_fn.describe()}; "
            "raise the rate or the duration"
        )
    n_in = in_dist.sample(n, streams["input_tokens"])
    n_out = out_dist.sample(n, streams["output_tokens"])

    names = list(mix)
    if len(names) == 1:
        app_idx = np.zeros(n, dtype=np.int32)
    else:
        weights = np.array([mix[a] for a in names])
        app_idx = streams["app"].choice(len(names), size=n, p=weights).astype(np.int32)
    app = pa.DictionaryArray.from_arrays(pa.array(app_idx), pa.array(names, pa.string()))

    reasoning = np.zeros(n, dtype=np.int64)
    if fraction > 0:
        is_reasoning = app_idx == names.index("reasoning")
        reasoning[is_reasoning] = np.rint(fraction * n_out[is_reasoning]).astype(np.int64)

    request_ids = _request_ids(n)
    columns = {
        "request_id": request_ids,
        "arrival_s": pa.array(arrivals, pa.float64()),
        "client_id": _repeat_string(client_id, n),
        "app": app.cast(pa.string()),
        "session_id": request_ids,
        "turn": pa.array(np.zeros(n, dtype=np.int32)),
        "think_s": pa.array(np.zeros(n, dtype=np.float64)),
        "input_tokens": pa.array(n_in, pa.int64()),
        "output_tokens": pa.array(n_out, pa.int64()),
        "reasoning_tokens": pa.array(reasoning, pa.int64()),
        "prefix_blocks": _empty_lists(n),
        "image_tokens": _empty_lists(n),
        "prompt": pa.nulls(n, pa.string()),
    }
    table = pa.Table.from_arrays(list(columns.values()), schema=WORKLOAD_SCHEMA)
    return conform_workload(table, "synthetic workload")


def _dist_summary(values: np.ndarray) -> dict[str, float | None]:
    if len(values) == 0:
        return {"mean": None, "p50": None, "p99": None}
    p50, p99 = np.percentile(values, [50, 99])
    return {"mean": float(values.mean()), "p50": float(p50), "p99": float(p99)}


def _shares(column: pa.ChunkedArray) -> dict[str, float]:
    n = len(column)
    if n == 0:
        return {}
    counts = pc.value_counts(column)
    pairs = sorted(
        zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True),
        key=lambda p: (-p[1], p[0]),
    )
    return {value: count / n for value, count in pairs}


def workload_summary(table: pa.Table) -> dict[str, object]:
    """Plain-Python facts about a Workload table, for printing or JSON.

    ``rate_rps`` is (requests − 1) / span; ``interarrival_cv`` is std/mean of the gaps between
    sorted arrivals (1 for Poisson, 0 for constant pacing).
    """
    n = table.num_rows
    arrivals = np.sort(table["arrival_s"].to_numpy())
    span = float(arrivals[-1] - arrivals[0]) if n else 0.0
    gaps = np.diff(arrivals)
    cv = float(gaps.std() / gaps.mean()) if len(gaps) and gaps.mean() > 0 else None
    return {
        "requests": n,
        "span_s": span,
        "rate_rps": (n - 1) / span if n > 1 and span > 0 else None,
        "interarrival_cv": cv,
        "input_tokens": _dist_summary(table["input_tokens"].to_numpy()),
        "output_tokens": _dist_summary(table["output_tokens"].to_numpy()),
        "reasoning_tokens_mean": float(table["reasoning_tokens"].to_numpy().mean()) if n else None,
        "apps": _shares(table["app"]),
        "clients": _shares(table["client_id"]),
    }
