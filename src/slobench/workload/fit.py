"""Fit a client pool from a request log (``slobench fit``; see docs/fit.md).

A log is a table with one row per request: an arrival time, optionally a client id, input and
output token counts, optionally reasoning tokens, a session id and an application class. It is
read from CSV, JSON lines or Parquet with a column map (:class:`LogColumns`), or through the
trace readers of :mod:`slobench.workload.traces` (Azure, BurstGPT, Mooncake, Vidur, our own
Workload files).

The model is ServeGen's (arXiv 2505.09999): per client and window (600 s by default) a request
rate, the inter-arrival CV, and a gap distribution; per client and block (an hour by default:
lengths need more samples than rates) sparse empirical length distributions. For every window
with enough gaps, four families are fitted by maximum likelihood with loc fixed at 0:
exponential, Gamma, Weibull and lognormal; the one with the lowest AIC is chosen, and the KS
statistic, log-likelihood and AIC of every candidate are kept.

Fitting is vectorized over all windows at once (no per-window optimizer call): exponential and
lognormal MLEs are closed-form, Gamma's shape is Minka's approximation refined by Newton steps,
Weibull's shape a safeguarded Newton iteration on the profile score. These are the same
estimates as ``scipy.stats.<family>.fit(x, floc=0)`` (the tests compare them). Each window's fit
uses at most ``max_gaps`` gaps (a random subsample); rates and CVs use all of them.

Pool conventions: windows fitted as exponential, Gamma or lognormal become ``Gamma`` windows of
the pool (the generator draws Gamma gaps with the window's CV, so rate and CV are kept; a
lognormal window is approximated by the Gamma of the same mean and CV), Weibull windows stay
Weibull. The exact family of every window is kept in :class:`WindowFits` and saved with the pool.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq
from scipy import special

from slobench.errors import UserError, did_you_mean
from slobench.schema import string_codes as _codes
from slobench.workload.pool import (
    PATTERN_GAMMA,
    PATTERN_WEIBULL,
    WINDOW_S,
    ClientPool,
    LengthTable,
    SparseDist,
    _row_cumsum,
    mix_rows,
)
from slobench.workload.traces import csv_rows

FAMILIES = ("exponential", "gamma", "weibull", "lognormal")
# Codes of WindowFits.family: 0 idle, 1..4 FAMILIES, 5 active but too few gaps to fit.
FAMILY_IDLE, FAMILY_FEW = 0, 5
FAMILY_LABELS = ("idle", *FAMILIES, "too_few_gaps")
_N_PARAMS = np.array([1, 2, 2, 2])
LOG_FORMATS = ("auto", "azure", "burstgpt", "mooncake", "vidur", "parquet", "jsonl", "table")
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
RATIO_GRID = 0.002  # ServeGen's reason_ratio grid (501 points on 0..0.998; we keep 1.0)
SERVEGEN_BLOCK_S = 21600.0
OTHER = "other"

# Column names tried, in order, when a column is not mapped (our Workload's first).
_DEFAULTS: dict[str, tuple[str, ...]] = {
    "time": ("arrival_s", "timestamp", "time", "ts", "arrived_at"),
    "client": ("client_id", "client", "user", "user_id", "tenant"),
    "input": ("input_tokens", "prompt_tokens", "input_length", "context_tokens"),
    "output": ("output_tokens", "completion_tokens", "output_length", "generated_tokens"),
    "reasoning": ("reasoning_tokens",),
    "session": ("session_id", "session", "conversation_id"),
    "app": ("app", "application"),
    "think": ("think_s",),
}
_REQUIRED = ("time", "input", "output")
_FLAG = {k: f"--{k}-col" for k in _DEFAULTS}
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:?\d{2})?$")
_OFFSET = re.compile(r"(Z|[+-]\d{2}:?\d{2})$")

Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class LogColumns:
    """Which column of a log holds what (None: try the usual names, see ``_DEFAULTS``)."""

    time: str | None = None
    client: str | None = None
    input: str | None = None
    output: str | None = None
    reasoning: str | None = None
    session: str | None = None
    app: str | None = None
    think: str | None = None
    time_unit: str = "s"  # numeric times: s, ms, us or ns; text times are ISO date-times

    def given(self) -> dict[str, str]:
        return {k: v for k in _DEFAULTS if (v := getattr(self, k)) is not None}


@dataclass(frozen=True)
class WindowFits:
    """Per (client, window): the chosen family code (see ``FAMILY_LABELS``), the number of gaps
    fitted, and per candidate (last axis in ``FAMILIES`` order) KS statistic, log-likelihood,
    AIC and parameters (shape, scale; lognormal: sigma, scale = exp(mu)). NaN where not fitted."""

    family: np.ndarray  # int8 (C, W)
    n_gaps: np.ndarray  # int64 (C, W), gaps in the window (all, not the subsample)
    ks: np.ndarray  # float32 (C, W, 4)
    loglik: np.ndarray  # float64 (C, W, 4)
    aic: np.ndarray  # float64 (C, W, 4)
    params: np.ndarray  # float64 (C, W, 4, 2)

    def chosen_ks(self) -> np.ndarray:
        """The KS statistic of the chosen family per fitted window (1-D)."""
        fitted = (self.family >= 1) & (self.family <= 4)
        idx = np.flatnonzero(fitted.ravel())
        k = self.ks.reshape(-1, 4)
        return k[idx, self.family.ravel()[idx].astype(np.int64) - 1].astype(np.float64)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"fit.family": self.family, "fit.n_gaps": self.n_gaps, "fit.ks": self.ks,
                "fit.loglik": self.loglik, "fit.aic": self.aic, "fit.params": self.params}


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit_pool` returns; unpacks as ``pool, report = fit_pool(...)``."""

    pool: ClientPool
    report: dict[str, object]
    windows: WindowFits = field(repr=False)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter((self.pool, self.report))


# ---------------------------------------------------------------------------------------------
# Reading a log


@dataclass
class _Log:
    t: np.ndarray  # float64 seconds
    client: np.ndarray  # int64 codes into client_names
    client_names: list[str]
    input: np.ndarray
    output: np.ndarray
    reasoning: np.ndarray | None
    session: np.ndarray | None  # int64 codes
    app: np.ndarray | None  # int64 codes into app_names
    app_names: list[str]
    think: np.ndarray | None
    source: str
    fmt: str


def _log_from_table(table: pa.Table, cols: dict[str, str], source: str, fmt: str,
                    where: Callable[[int], str], time_unit: str = "s") -> _Log:
    """Validate and convert the mapped columns (``where(row)`` names a bad row's place)."""
    n = table.num_rows
    if n == 0:
        raise UserError(f"{source}: the log has no requests; give a log with at least one row")

    def col(key: str) -> pa.ChunkedArray:
        return table.column(cols[key])

    t = _times(col("time"), cols["time"], where, time_unit)

    def counts(key: str) -> np.ndarray:
        c = col(key)
        name = cols[key]
        ty = c.type
        bad: np.ndarray | None = None
        if pa.types.is_integer(ty) or pa.types.is_floating(ty) or pa.types.is_null(ty):
            v = c.to_numpy(zero_copy_only=False).astype(np.float64)
            bad = ~np.isfinite(v) | (v < 0) | (v != np.floor(v))
        else:
            try:
                v = pc.cast(c, pa.float64()).to_numpy(zero_copy_only=False)
                bad = ~np.isfinite(v) | (v < 0) | (v != np.floor(v))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                s = c.to_pylist()
                for i, x in enumerate(s):
                    if x is None or not re.match(r"^\s*\+?\d+\s*$", str(x)):
                        raise UserError(f"{where(i)}: column '{name}' is {str(x)[:40]!r}, not "
                                        "a whole number of tokens >= 0; fix or delete that "
                                        "row") from None
                v = np.array([float(x) for x in s])
        if bad is not None and bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise UserError(f"{where(i)}: column '{name}' is {c[i].as_py()!r}, not a whole "
                            "number of tokens >= 0; fix or delete that row")
        return v.astype(np.int64)

    inp, out = counts("input"), counts("output")
    reasoning = counts("reasoning") if "reasoning" in cols else None
    if reasoning is not None and np.any(reasoning > out):
        i = int(np.flatnonzero(reasoning > out)[0])
        raise UserError(f"{where(i)}: column '{cols['reasoning']}' ({reasoning[i]}) exceeds the "
                        f"output tokens ({out[i]}); slobench counts reasoning as part of the "
                        "output (as OpenAI's usage does); fix the log or the column map")
    if "client" in cols:
        client, names = _codes(pc.fill_null(pc.cast(col("client"), pa.string()), ""))
    else:
        client, names = np.zeros(n, dtype=np.int64), ["default"]
    session = None
    if "session" in cols:
        s = pc.cast(col("session"), pa.string())
        if s.null_count:  # a row without a session is a session of its own
            s = pc.coalesce(s, pa.array([f"\x00{i}" for i in range(n)]))
        session, _ = _codes(s)
    app, app_names = None, []
    if "app" in cols:
        app, app_names = _codes(pc.fill_null(pc.cast(col("app"), pa.string()), ""))
    think = None
    if "think" in cols:
        think = np.nan_to_num(col("think").to_numpy(zero_copy_only=False).astype(np.float64))
    return _Log(t, client, names, inp, out, reasoning, session, app, app_names, think, source,
                fmt)


def _times(c: pa.ChunkedArray, name: str, where: Callable[[int], str], unit: str) -> np.ndarray:
    ty = c.type
    if pa.types.is_timestamp(ty):
        ns = pc.cast(c, pa.timestamp("ns", tz=ty.tz)).cast(pa.int64())
        v = ns.to_numpy(zero_copy_only=False)
        if c.null_count:
            i = int(np.flatnonzero(c.is_null().to_numpy(zero_copy_only=False))[0])
            raise UserError(f"{where(i)}: column '{name}' is empty; give a time or delete the row")
        return (v - v.min()).astype(np.float64) / 1e9 + 0.0
    if pa.types.is_string(ty) or pa.types.is_large_string(ty):
        s = pc.utf8_trim_whitespace(c)
        first = s[0].as_py() or ""
        try:
            float(first)
            numeric = True
        except ValueError:
            numeric = False
        if not numeric:
            tz = bool(_OFFSET.search(first))
            try:
                ts = s.cast(pa.timestamp("ns", tz="UTC") if tz else pa.timestamp("ns"))
                if ts.null_count:
                    raise pa.ArrowInvalid("empty")
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                for i, x in enumerate(s.to_pylist()):
                    if x is None or not _ISO.match(x) or bool(_OFFSET.search(x)) != tz:
                        raise UserError(f"{where(i)}: column '{name}' is {str(x)[:40]!r}, not a "
                                        "time (seconds, or an ISO date-time like 2024-05-10 "
                                        "00:00:00.0099; one form throughout); fix that row"
                                        ) from None
                raise UserError(f"{where(0)}: column '{name}' has unreadable times") from None
            return _times(ts, name, where, unit)
        try:
            c = s.cast(pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            for i, x in enumerate(s.to_pylist()):
                try:
                    float(x)
                except (TypeError, ValueError):
                    raise UserError(f"{where(i)}: column '{name}' is {str(x)[:40]!r}, not a "
                                    "number of seconds; fix that row") from None
            raise
    if not (pa.types.is_integer(c.type) or pa.types.is_floating(c.type)
            or pa.types.is_null(c.type)):
        raise UserError(f"{where(0)}: column '{name}' has type {c.type}, not a time; map "
                        "--time-col to a column of seconds or ISO date-times")
    v = c.to_numpy(zero_copy_only=False).astype(np.float64)
    bad = ~np.isfinite(v)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise UserError(f"{where(i)}: column '{name}' is {c[i].as_py()!r}, not a finite time; "
                        "fix or delete that row")
    return v * TIME_UNITS[unit]


def _sniff(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head[:4] == b"PAR1" or path.suffix.lower() == ".parquet":
        return "parquet"
    if head.lstrip()[:1] == b"{":
        return "jsonl"
    return "csv"


def _row_locator(path: Path, kind: str) -> Callable[[int], str]:
    """``row index -> "file:line"`` (CSV and JSON lines skip blank lines as Arrow does; a CSV
    header is line 1); Parquet rows are named by number."""
    if kind == "parquet":
        return lambda i: f"{path} (row {i + 1})"

    def where(i: int) -> str:
        with open(path, newline="", encoding="utf-8", errors="replace") as fh:
            if kind == "csv":
                reader = csv_rows(fh)
                next(reader, None)
                k = 0
                for row in reader:
                    if not row or (len(row) == 1 and not row[0].strip()):
                        continue
                    if k == i:
                        return f"{path}:{reader.line_num}"
                    k += 1
            else:
                k = 0
                for line_no, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    if k == i:
                        return f"{path}:{line_no}"
                    k += 1
        return str(path)

    return where


def _read_generic(path: Path, columns: LogColumns) -> _Log:
    kind = _sniff(path)
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the file is empty; give a log with a header and requests")
    try:
        if kind == "parquet":
            table = pq.read_table(path)
        elif kind == "jsonl":
            table = pa_json.read_json(path)
        else:
            table = pa_csv.read_csv(path, convert_options=pa_csv.ConvertOptions(
                strings_can_be_null=False, quoted_strings_can_be_null=False))
    # UnicodeDecodeError: Arrow's message quoting bytes that are not UTF-8
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, UnicodeDecodeError) as exc:
        raise UserError(_locate_unreadable(path, kind) or
                        f"{path}: not a readable {kind.upper()} log "
                        f"({str(exc).splitlines()[0][:120]}); fix the file") from None
    if kind != "parquet":
        from slobench.workload.traces import _locate_non_utf8, is_utf8_table

        if not is_utf8_table(table):
            _locate_non_utf8(path)
    head = f"{path}:1" if kind == "csv" else str(path)
    names = table.column_names
    norm = {_norm(n): n for n in reversed(names)}
    given = columns.given()
    cols: dict[str, str] = {}
    for key in _DEFAULTS:
        if key in given:
            want = given[key]
            found = want if want in names else norm.get(_norm(want))
            if found is None:
                raise UserError(f"{head}: {_FLAG[key]} {want!r}: no such column "
                                f"({did_you_mean(want, names)}found {', '.join(names)[:200]}); "
                                "fix the column map")
            cols[key] = found
        else:
            for cand in _DEFAULTS[key]:
                if (found := norm.get(_norm(cand))) is not None:
                    cols[key] = found
                    break
    missing = [k for k in _REQUIRED if k not in cols]
    if missing:
        raise UserError(f"{head}: no {' / '.join(missing)} column among {', '.join(names)[:200]};"
                        f" map them with {', '.join(_FLAG[k] for k in missing)} (or pick "
                        f"--format {'/'.join(LOG_FORMATS[1:6])})")
    if columns.time_unit not in TIME_UNITS:
        raise UserError(f"--time-unit {columns.time_unit!r}: use one of {', '.join(TIME_UNITS)}")
    return _log_from_table(table, cols, str(path), kind, _row_locator(path, kind),
                           columns.time_unit)


def _locate_unreadable(path: Path, kind: str) -> str | None:
    """The first line Arrow could not read, found the slow way (only on the error path)."""
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as fh:
            if kind == "csv":
                reader = csv_rows(fh)
                header = next(reader, [])
                for row in reader:
                    if row and len(row) != len(header) and any(x.strip() for x in row):
                        return (f"{path}:{reader.line_num}: {len(row)} field(s), the header has "
                                f"{len(header)}; fix or delete that line")
            elif kind == "jsonl":
                for line_no, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = orjson.loads(line)
                    except orjson.JSONDecodeError as exc:
                        return f"{path}:{line_no}: not valid JSON ({exc}); fix that line"
                    if not isinstance(obj, dict):
                        return f"{path}:{line_no}: expected a JSON object; fix that line"
    except OSError:
        return None
    return None


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.strip().lstrip("\ufeff").lower())


def read_log(path: str | Path, *, format: str = "auto",
             columns: LogColumns | None = None) -> _Log:
    """Read a request log (see the module doc); UserError naming file (and line) when bad."""
    from slobench.workload.traces import _READERS, detect_format

    path = Path(path)
    columns = columns or LogColumns()
    if format not in LOG_FORMATS:
        raise UserError(f"--format {format!r}: use one of {', '.join(LOG_FORMATS)}")
    if not path.exists():
        raise UserError(f"{path}: no such file; give the path of a request log")
    if not path.is_file():
        raise UserError(f"{path}: not a file; give the path of a request log")
    given = columns.given()
    trace_fmts = ("azure", "burstgpt", "mooncake", "vidur")
    if format in trace_fmts and given:
        raise UserError(f"{', '.join(_FLAG[k] for k in given)}: --format {format} has fixed "
                        "columns; drop the column flags or use --format table")
    fmt = format
    if format == "auto" and not given:
        try:
            fmt = detect_format(path)
        except UserError:
            fmt = "table"  # an unknown header: the generic reader says what it misses
    if fmt in trace_fmts:
        table = _READERS[fmt](path)
        cols = {"time": "arrival_s", "client": "client_id", "input": "input_tokens",
                "output": "output_tokens", "session": "session_id", "app": "app"}
        return _log_from_table(table, cols, str(path), fmt, lambda i: str(path))
    return _read_generic(path, columns)


def _log_from_workload(table: pa.Table, source: str = "table") -> _Log:
    names = set(table.column_names)
    cols = {k: c for k, cands in _DEFAULTS.items() for c in cands[:1] if c in names}
    for k in _REQUIRED:
        if k not in cols:
            raise UserError(f"{source}: the table has no {_DEFAULTS[k][0]} column")
    return _log_from_table(table, cols, source, "table", lambda i: f"{source} (row {i + 1})")


# ---------------------------------------------------------------------------------------------
# Arrivals


def _maybe_jitter(rel: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float | None]:
    """Timestamps on a coarse grid (BurstGPT: whole seconds; Mooncake: ms) give ties, which no
    continuous gap family can fit: spread each one uniformly within its tick."""
    if len(rel) < 2:
        return rel, None
    probe = rel[:: max(1, len(rel) // 100_000)]
    for res in (1.0, 0.1, 0.01, 1e-3, 1e-4, 1e-5, 1e-6):
        q = probe / res
        if np.all(np.abs(q - np.rint(q)) < 1e-6 * np.maximum(1.0, np.abs(q)) + 1e-9):
            srt = np.sort(rel) if not np.all(rel[1:] >= rel[:-1]) else rel
            if np.any(np.diff(srt) == 0):
                return rel + rng.random(len(rel)) * res, res
            return rel, res
    return rel, None


def _segment_sums(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    return np.add.reduceat(values, starts) if len(values) else np.zeros(0)


def _gamma_shape(s: np.ndarray) -> np.ndarray:
    """MLE Gamma shape from s = log(mean) - mean(log x) (Minka's start, Newton steps)."""
    s = np.maximum(s, 1e-10)
    k = (3 - s + np.sqrt((s - 3) ** 2 + 24 * s)) / (12 * s)
    for _ in range(6):
        f = np.log(k) - special.digamma(k) - s
        df = 1 / k - special.polygamma(1, k)
        k = np.maximum(k - f / df, k / 10)
    return np.clip(k, 1e-4, 1e6)


def _weibull_shape(z: np.ndarray, sid: np.ndarray, starts: np.ndarray, n: np.ndarray,
                   zbar: np.ndarray, k0: np.ndarray) -> np.ndarray:
    """MLE Weibull shape per segment: the root of A(k) - 1/k - mean(z) (A the x^k-weighted mean
    of z = log x - max log x), increasing in k; Newton steps kept inside a bracket."""
    k = np.clip(k0, 0.02, 50.0)
    lo, hi = np.full_like(k, 0.01), np.full_like(k, 100.0)
    for _ in range(40):
        e = np.exp(k[sid] * z)
        s0, s1, s2 = (_segment_sums(e, starts), _segment_sums(e * z, starts),
                      _segment_sums(e * z * z, starts))
        a = s1 / s0
        f = a - 1 / k - zbar
        df = s2 / s0 - a * a + 1 / k ** 2
        lo = np.where(f < 0, k, lo)
        hi = np.where(f > 0, k, hi)
        new = k - f / np.maximum(df, 1e-300)
        out = ~(new > lo) | ~(new < hi)
        new = np.where(out, np.sqrt(lo * hi), new)
        done = np.abs(new - k) <= 1e-9 * k
        k = new
        if done.all():
            break
    return k


def _fit_segments(x: np.ndarray, starts: np.ndarray) -> dict[str, np.ndarray]:
    """MLE of the four families (loc 0) on segments of mean-normalized gaps ``x`` (segment i is
    ``x[starts[i]:starts[i+1]]``) → params, loglik, aic, ks per segment (arrays (m, 4...))."""
    m = len(starts)
    sizes = np.diff(np.append(starts, len(x)))
    sid = np.repeat(np.arange(m), sizes)
    n = sizes.astype(np.float64)
    lx = np.log(x)
    s1, sl, sl2 = _segment_sums(x, starts), _segment_sums(lx, starts), _segment_sums(lx * lx,
                                                                                    starts)
    mean, mlog = s1 / n, sl / n
    params = np.full((m, 4, 2), np.nan)
    ll = np.full((m, 4), np.nan)
    # exponential
    params[:, 0] = np.column_stack([np.ones(m), mean])
    ll[:, 0] = -n * np.log(mean) - n
    # gamma
    kg = _gamma_shape(np.log(mean) - mlog)
    th = mean / kg
    params[:, 1] = np.column_stack([kg, th])
    ll[:, 1] = (kg - 1) * sl - s1 / th - n * kg * np.log(th) - n * special.gammaln(kg)
    # weibull
    zmax = np.maximum.reduceat(lx, starts)
    z = lx - zmax[sid]
    var_l = np.maximum(sl2 / n - mlog ** 2, 1e-12)
    kw = _weibull_shape(z, sid, starts, n, mlog - zmax, 1.2825 / np.sqrt(var_l))
    lam = np.exp(zmax + np.log(_segment_sums(np.exp(kw[sid] * z), starts) / n) / kw)
    params[:, 2] = np.column_stack([kw, lam])
    ll[:, 2] = n * np.log(kw) - n * kw * np.log(lam) + (kw - 1) * sl - n
    # lognormal
    sig = np.sqrt(var_l)
    params[:, 3] = np.column_stack([sig, np.exp(mlog)])
    ll[:, 3] = -sl - n * np.log(sig * math.sqrt(2 * math.pi)) - n / 2
    aic = 2 * _N_PARAMS[None, :] - 2 * ll
    # KS: sort within segments (segment id + a monotone map of x into [0, 1) as one key)
    order = np.argsort(sid + x / (1.0 + x) * (1 - 1e-12), kind="stable")
    xs, lxs = x[order], lx[order]
    i = np.arange(len(x)) - np.repeat(starts, sizes)
    hi, lo = (i + 1) / n[sid], i / n[sid]
    ks = np.empty((m, 4))
    cdfs = (
        -np.expm1(-xs / mean[sid]),
        special.gammainc(kg[sid], xs / th[sid]),
        -np.expm1(-np.exp(kw[sid] * (lxs - np.log(lam)[sid]))),
        special.ndtr((lxs - mlog[sid]) / sig[sid]),
    )
    for j, cdf in enumerate(cdfs):
        ks[:, j] = np.maximum.reduceat(np.maximum(hi - cdf, cdf - lo), starts)
    return {"params": params, "loglik": ll, "aic": aic, "ks": ks}


# ---------------------------------------------------------------------------------------------
# Lengths


def _bin_of(values: np.ndarray, rel: float) -> np.ndarray:
    """Token counts exact up to 128, then on a geometric grid of relative width ``rel`` (0:
    exact)."""
    if rel <= 0:
        return values.astype(np.int64)
    v = np.maximum(values, 0).astype(np.float64)
    return np.where(v <= 128, v, 129 + np.floor(np.log(np.maximum(v, 1) / 128)
                                                / math.log1p(rel))).astype(np.int64)


def _sparse_rows(rows: np.ndarray, values: np.ndarray, bins: np.ndarray, n_rows: int,
                 ratio: bool) -> SparseDist:
    """Empirical distribution per row: values grouped by (row, bin), each group at its mean."""
    key = rows.astype(np.int64) * (int(bins.max(initial=0)) + 1) + bins
    uk, inv, cnt = np.unique(key, return_inverse=True, return_counts=True)
    sums = np.bincount(inv.ravel(), weights=values, minlength=len(uk))
    mean = sums / cnt
    v = np.round(mean, 4) if ratio else np.rint(mean)
    urow = uk // (int(bins.max(initial=0)) + 1)
    offsets = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(urow, minlength=n_rows), out=offsets[1:])
    probs = cnt.astype(np.float64)
    return SparseDist(offsets, v.astype(np.float64), _row_cumsum(probs, offsets))


# ---------------------------------------------------------------------------------------------
# Sessions


def _dist_summary(x: np.ndarray) -> dict[str, float]:
    if len(x) == 0:
        return {}
    q = np.percentile(x, [10, 50, 90, 99])
    return {"mean": float(x.mean()), "p10": float(q[0]), "p50": float(q[1]),
            "p90": float(q[2]), "p99": float(q[3]), "max": float(x.max())}


def _sessions(log: _Log, t: np.ndarray) -> dict[str, object] | None:
    if log.session is None:
        return None
    turns = np.bincount(log.session)
    turns = turns[turns > 0]
    if len(turns) == 0 or turns.max() <= 1:
        return None
    order = np.lexsort((t, log.session))
    s, ts = log.session[order], t[order]
    follow = np.flatnonzero(s[1:] == s[:-1]) + 1
    since_arrival = ts[follow] - ts[follow - 1]
    tv, tc = np.unique(turns, return_counts=True)
    out: dict[str, object] = {
        "sessions": len(turns),
        "multi_turn_share": float((turns > 1).mean()),
        "requests_in_multi_turn": float(turns[turns > 1].sum() / turns.sum()),
        "turns": {"values": tv.tolist(), "probs": (tc / tc.sum()).tolist(),
                  **_dist_summary(turns.astype(np.float64))},
        "think_basis": "arrival",
        "think_s": _dist_summary(since_arrival),
        "think_hist": _geo_hist(since_arrival),
    }
    if log.think is not None and np.any(log.think[order][follow] > 0):
        th = log.think[order][follow]
        out["think_basis"] = "end"  # the log's own think_s: after the previous turn's end
        out["think_s"] = _dist_summary(th)
        out["think_hist"] = _geo_hist(th)
        out["gap_since_arrival_s"] = _dist_summary(since_arrival)
    return out


def _geo_hist(x: np.ndarray) -> dict[str, list[float]]:
    """A histogram on a geometric grid (10 bins per decade), for re-use as a distribution."""
    x = x[x > 0]
    if len(x) == 0:
        return {"edges": [], "probs": []}
    lo, hi = math.floor(math.log10(x.min()) * 10), math.ceil(math.log10(x.max()) * 10) + 1
    edges = 10.0 ** (np.arange(lo, hi + 1) / 10)
    c, _ = np.histogram(x, edges)
    return {"edges": edges.tolist(), "probs": (c / c.sum()).tolist()}


# ---------------------------------------------------------------------------------------------
# The fit


def fit_pool(source: str | Path | pa.Table, *, format: str = "auto",
             columns: LogColumns | None = None, window_s: float = WINDOW_S,
             block_s: float = 3600.0, min_share: float = 0.01, max_gaps: int = 5000,
             min_gaps: int = 8, length_bin: float = 0.01, name: str | None = None,
             seed: int = 0, progress: Progress | None = None) -> FitResult:
    """Fit a :class:`ClientPool` from a request log (a path, or a table with Workload column
    names) → :class:`FitResult` (``pool, report = fit_pool(...)`` also works).

    ``window_s``: rate/CV/family window; ``block_s``: length block (a multiple of the window);
    ``min_share``: clients with a smaller share of requests are merged into ``other``;
    ``max_gaps``: most gaps per window the family fit uses (a random subsample); ``min_gaps``:
    fewer gaps than this and the window takes its client's typical CV instead of a fit;
    ``length_bin``: relative bin width of token counts above 128 (0: exact)."""
    t_start = time.perf_counter()
    step = progress or (lambda stage, frac: None)
    window_s, block_s = float(window_s), float(block_s)
    if not (math.isfinite(window_s) and window_s > 0):
        raise UserError(f"--window {window_s:g}: must be a duration > 0")
    if not (math.isfinite(block_s) and block_s > 0):
        raise UserError(f"--block {block_s:g}: must be a duration > 0")
    ratio_wb = block_s / window_s
    if abs(ratio_wb - round(ratio_wb)) > 1e-9 or round(ratio_wb) < 1:
        raise UserError(f"--block {block_s:g}s must be a whole multiple of --window {window_s:g}s"
                        " (lengths are pooled over whole windows)")
    if not (0 <= min_share < 1):
        raise UserError(f"--min-share {min_share:g}: must be in [0, 1)")
    if max_gaps < 10 or min_gaps < 2:
        raise UserError("max_gaps must be >= 10 and min_gaps >= 2")
    step("reading", 0.0)
    if isinstance(source, pa.Table):
        log = _log_from_workload(source)
    else:
        log = read_log(source, format=format, columns=columns)
    step("reading", 1.0)
    rng = np.random.default_rng(seed)
    n_rows = len(log.t)
    tmin = float(log.t.min())
    origin = 0.0 if 0.0 <= tmin < window_s else tmin
    rel, res = _maybe_jitter(log.t - origin, rng)
    if res is not None and np.any(rel < 0):
        rel = np.maximum(rel, 0.0)

    # Clients: the ones under the traffic floor become one "other" client; order by volume.
    vol = np.bincount(log.client, minlength=len(log.client_names))
    share = vol / n_rows
    big = np.flatnonzero(share >= min_share) if min_share > 0 else np.flatnonzero(vol > 0)
    big = big[np.argsort(-vol[big], kind="stable")]
    small = np.setdiff1d(np.flatnonzero(vol > 0), big)
    new_code = np.full(len(log.client_names), len(big), dtype=np.int64)
    new_code[big] = np.arange(len(big))
    ids = [log.client_names[i] or "(empty)" for i in big]
    if len(small):
        other = OTHER
        while other in ids:
            other += "_"
        ids.append(other)
    code = new_code[log.client]
    n_c = len(ids)

    # Windows
    n_w = math.floor(float(rel.max()) / window_s) + 1
    w = np.minimum((rel // window_s).astype(np.int64), n_w - 1)
    dur = np.full(n_w, window_s)
    last = w == n_w - 1
    n_last = int(last.sum())
    span_last = float(rel.max()) - (n_w - 1) * window_s
    est = span_last * (n_last + 1) / n_last  # the last window's length, from its last arrival
    if 0 < est < window_s:
        dur[-1] = est
    counts = np.bincount(code * n_w + w, minlength=n_c * n_w).reshape(n_c, n_w)
    rates = counts / dur[None, :]
    step("sorting", 0.0)
    if np.all(rel[1:] >= rel[:-1]):
        order = np.argsort(code, kind="stable")
    else:
        order = np.lexsort((rel, code))
    ts, cs, ws = rel[order], code[order], w[order]
    segs = cs * n_w + ws
    same = segs[1:] == segs[:-1]
    gaps = np.diff(ts)[same]
    gseg = segs[1:][same]
    del ts, cs, ws, same
    pos = gaps > 0
    if not pos.all():
        floor = float(gaps[pos].min()) / 2 if pos.any() else 1e-9
        gaps = np.maximum(gaps, min(floor, 1e-6))
    step("sorting", 1.0)
    ng = np.bincount(gseg, minlength=n_c * n_w)
    g1 = np.bincount(gseg, weights=gaps, minlength=n_c * n_w)
    g2 = np.bincount(gseg, weights=gaps * gaps, minlength=n_c * n_w)
    with np.errstate(invalid="ignore", divide="ignore"):
        gmean = g1 / ng
        gvar = (g2 - g1 * gmean) / np.maximum(ng - 1, 1)
        cv_emp = np.sqrt(np.maximum(gvar, 0.0)) / gmean
    fitted = ng >= min_gaps
    # Subsample the gaps of big windows; normalize each window's gaps to mean 1 (scale-free).
    keep = fitted[gseg]
    big_w = ng > max_gaps
    if big_w.any():
        keep &= ~big_w[gseg] | (rng.random(len(gseg)) < max_gaps / np.maximum(ng[gseg], 1))
    xs, xseg = gaps[keep], gseg[keep]
    del gaps, gseg, keep
    fseg = np.flatnonzero(np.bincount(xseg, minlength=n_c * n_w) >= 2)
    fitted &= False
    fitted[fseg] = True
    local = np.full(n_c * n_w, -1, dtype=np.int64)
    local[fseg] = np.arange(len(fseg))
    xloc = local[xseg]
    ok = xloc >= 0
    xs, xloc = xs[ok], xloc[ok]
    starts = np.searchsorted(xloc, np.arange(len(fseg)))
    n_sub = np.diff(np.append(starts, len(xs))).astype(np.float64)
    step("fitting arrivals", 0.0)
    if len(fseg):
        norm = np.add.reduceat(xs, starts) / n_sub
        fit = _fit_segments(xs / norm[xloc], starts)
    else:
        norm = np.zeros(0)
        fit = {"params": np.zeros((0, 4, 2)), "loglik": np.zeros((0, 4)),
               "aic": np.zeros((0, 4)), "ks": np.zeros((0, 4))}
    del xs, xloc
    step("fitting arrivals", 1.0)
    cw = n_c * n_w
    fam = np.zeros(cw, dtype=np.int8)
    active = counts.ravel() > 0
    fam[active] = FAMILY_FEW
    choice = np.argmin(np.where(np.isfinite(fit["aic"]), fit["aic"], np.inf), axis=1)
    fam[fseg] = choice + 1
    params = np.full((cw, 4, 2), np.nan)
    p = fit["params"].copy()
    p[:, :, 1] *= norm[:, None]  # scales back to seconds
    params[fseg] = p
    # Log-likelihoods in seconds (the fit ran on mean-1 gaps: a Jacobian term per gap).
    jac = (n_sub * np.log(norm))[:, None] if len(fseg) else np.zeros((0, 1))
    loglik = np.full((cw, 4), np.nan)
    loglik[fseg] = fit["loglik"] - jac
    aic = np.full((cw, 4), np.nan)
    aic[fseg] = fit["aic"] + 2 * jac
    ks = np.full((cw, 4), np.nan, dtype=np.float32)
    ks[fseg] = fit["ks"]

    # Pool matrices
    client_cv = np.ones(n_c)
    wcv = np.where(fitted, cv_emp, 0.0).reshape(n_c, n_w)
    wgt = np.where(fitted, counts.ravel(), 0).reshape(n_c, n_w).astype(np.float64)
    has = wgt.sum(axis=1) > 0
    client_cv[has] = (wcv * wgt).sum(axis=1)[has] / wgt.sum(axis=1)[has]
    cvs = np.where(fitted, cv_emp, np.repeat(client_cv, n_w))
    cvs = np.where(active, np.maximum(np.nan_to_num(cvs, nan=1.0), 1e-3), 0.0)
    mean_gap = np.where(active, 1.0 / np.maximum(rates.ravel(), 1e-300), 0.0)
    shape = np.where(active, 1.0 / cvs.clip(1e-3) ** 2, 0.0)
    scale = np.where(active, mean_gap / np.maximum(shape, 1e-300), 0.0)
    pattern = np.where(active, PATTERN_GAMMA, 0).astype(np.int8)
    chosen = fam[fseg] - 1
    pc_ = params[fseg, chosen]  # (m, 2)
    is_gw = (chosen == 1) | (chosen == 2)  # Gamma and Weibull keep their own parameters
    shape[fseg[is_gw]] = pc_[is_gw, 0]
    scale[fseg[is_gw]] = pc_[is_gw, 1]
    is_exp = chosen == 0
    shape[fseg[is_exp]] = 1.0
    scale[fseg[is_exp]] = pc_[is_exp, 1]
    pattern[fseg[chosen == 2]] = PATTERN_WEIBULL
    windows = WindowFits(
        family=fam.reshape(n_c, n_w), n_gaps=ng.reshape(n_c, n_w),
        ks=ks.reshape(n_c, n_w, 4), loglik=loglik.reshape(n_c, n_w, 4),
        aic=aic.reshape(n_c, n_w, 4), params=params.reshape(n_c, n_w, 4, 2))

    # Lengths per (client, block)
    step("lengths", 0.0)
    per_block = round(ratio_wb)
    n_b = (n_w - 1) // per_block + 1
    block_of_w = np.arange(n_w) // per_block
    rows = code * n_b + block_of_w[w]
    reason = log.reasoning is not None and bool(np.any(log.reasoning > 0))
    kind = "reason" if reason else "language"
    fields = {
        "input_tokens": _sparse_rows(rows, log.input.astype(np.float64),
                                     _bin_of(log.input, length_bin), n_c * n_b, False),
        "output_tokens": _sparse_rows(rows, log.output.astype(np.float64),
                                      _bin_of(log.output, length_bin), n_c * n_b, False),
    }
    step("lengths", 0.7)
    if reason:
        assert log.reasoning is not None
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(log.output > 0, log.reasoning / np.maximum(log.output, 1), 0.0)
        fields["reason_ratio"] = _sparse_rows(rows, ratio, np.rint(ratio / RATIO_GRID).astype(
            np.int64), n_c * n_b, True)
    step("lengths", 1.0)
    sessions = _sessions(log, log.t)
    pool_name = name or (Path(str(source)).stem if not isinstance(source, pa.Table) else "fitted")

    report = _report(log, ids, counts, dur, windows, fitted.reshape(n_c, n_w), cv_emp,
                     len(small), n_rows, origin, res, window_s, block_s, min_share, kind,
                     sessions, code, time.perf_counter() - t_start)
    pool = ClientPool(
        name=pool_name, kind=kind, client_ids=np.array(ids, dtype=str),
        window_start=np.arange(n_w) * window_s, window_dur=dur, rates=rates,
        cvs=cvs.reshape(n_c, n_w), pattern=pattern.reshape(n_c, n_w),
        shape=shape.reshape(n_c, n_w), scale=scale.reshape(n_c, n_w),
        lengths=LengthTable(fields, n_c, n_b, block_s), len_row=np.arange(n_c),
        block=block_of_w, report=report)
    return FitResult(pool, report, windows)


def _median_ks(win: WindowFits, c: int) -> float | None:
    f = win.family[c].astype(np.int64)
    sel = np.flatnonzero((f >= 1) & (f <= 4))
    return float(np.median(win.ks[c][sel, f[sel] - 1])) if len(sel) else None


def _report(log: _Log, ids: list[str], counts: np.ndarray, dur: np.ndarray, win: WindowFits,
            fitted: np.ndarray, cv_emp: np.ndarray, n_merged: int, n_rows: int, origin: float,
            res: float | None, window_s: float, block_s: float, min_share: float, kind: str,
            sessions: dict[str, object] | None, code: np.ndarray,
            elapsed: float) -> dict[str, object]:
    """The JSON-serializable facts of a fit (also stored with the pool)."""
    n_c, n_w = counts.shape
    fam = win.family
    fam_counts = {FAMILY_LABELS[i]: int((fam == i).sum()) for i in range(1, 6)}
    ks = win.chosen_ks()
    cv = cv_emp.reshape(n_c, n_w)
    per_client = []
    for c in range(n_c):
        f = fam[c]
        fk = fitted[c]
        w = counts[c] * fk
        per_client.append({
            "client": ids[c],
            "requests": int(counts[c].sum()),
            "share": float(counts[c].sum() / n_rows),
            "mean_rate_rps": float(counts[c].sum() / dur.sum()),
            "cv": float((cv[c] * w).sum() / w.sum()) if w.sum() > 0 else None,
            "families": {FAMILY_LABELS[i]: int((f == i).sum()) for i in range(1, 6)
                         if (f == i).any()},
            "median_ks": _median_ks(win, c),
        })
    apps: dict[str, object] = {}
    if log.app is not None:
        m = np.bincount(code * len(log.app_names) + log.app,
                        minlength=n_c * len(log.app_names)).reshape(n_c, -1)
        apps = {ids[c]: {log.app_names[a]: float(m[c, a] / m[c].sum())
                         for a in np.argsort(-m[c]) if m[c, a] > 0} for c in range(n_c)}
    out: dict[str, object] = {
        "source": log.source,
        "format": log.fmt,
        "rows": n_rows,
        "span_s": float(dur.sum()),
        "origin_s": origin,
        "timestamp_resolution_s": res,
        "window_s": window_s,
        "block_s": block_s,
        "min_share": min_share,
        "kind": kind,
        "clients": n_c,
        "clients_merged_into_other": n_merged,
        "windows": n_w,
        "client_windows_active": int((fam > 0).sum()),
        "client_windows_fitted": int(((fam >= 1) & (fam <= 4)).sum()),
        "families": fam_counts,
        "median_ks": float(np.median(ks)) if len(ks) else None,
        "p90_ks": float(np.percentile(ks, 90)) if len(ks) else None,
        "per_client": per_client,
        "apps": apps,
        "sessions": sessions,
        "fit_s": elapsed,
        "rows_per_s": n_rows / elapsed if elapsed > 0 else None,
    }
    return out


# ---------------------------------------------------------------------------------------------
# Saving: our pool format (the built-in profiles' .npz), and the ServeGen format


def save_fit(result: FitResult, path: str | Path) -> int:
    """Write the fitted pool in our pool format (as the built-in profiles: ``--pool FILE``
    loads it) with the per-window fit arrays; returns the file size."""
    from slobench.workload.profiles import save_profile

    pool = result.pool
    meta = {"source": f"fitted from {result.report['source']}", "fit": result.report,
            "block_s": pool.lengths.block_s}
    if result.report.get("sessions"):
        meta["sessions"] = result.report["sessions"]
    w = result.windows
    extra = {**w.arrays(), "fit.ks": w.ks.astype(np.float32)}
    return save_profile(pool, path, meta, extra=extra)


def _fmt(x: float) -> str:
    return repr(float(x))


def export_servegen(pool: ClientPool, out_dir: str | Path) -> list[Path]:
    """Write ``pool`` as a ServeGen pool directory (``chunk-N-trace.csv`` and
    ``chunk-N-dataset.json`` per client, N in pool order; ``clients.json`` maps N to the client
    id). Needs 600 s windows from 0; lengths are re-pooled into 6-hour blocks (request-weighted)."""
    out = Path(out_dir)
    ws = pool.window_start - pool.window_start[0]
    if not np.allclose(ws, WINDOW_S * np.arange(pool.n_windows)) or not np.all(
            pool.window_dur[:-1] == WINDOW_S):
        raise UserError(f"--export-servegen {out}: the ServeGen format has 600 s windows; fit "
                        "with --window 600s")
    if out.exists() and not out.is_dir():
        raise UserError(f"--export-servegen {out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--export-servegen {out}: cannot create it ({exc.strerror})") from None
    sg_block = (WINDOW_S * np.arange(pool.n_windows) // SERVEGEN_BLOCK_S).astype(np.int64)
    n_sg = int(sg_block.max()) + 1
    req = pool.requests()
    nb = pool.lengths.n_blocks
    written: list[Path] = []
    names = {"Gamma": PATTERN_GAMMA, "Weibull": PATTERN_WEIBULL}
    inv = {v: k for k, v in names.items()}
    for c in range(pool.n_clients):
        lines = []
        for w in range(pool.n_windows):
            r = float(pool.rates[c, w])
            start = round(WINDOW_S * w)
            if r > 0:
                lines.append(f"{start},{_fmt(r)},{_fmt(pool.cvs[c, w])},"
                             f"{inv[int(pool.pattern[c, w])]},"
                             f"{_fmt(max(pool.shape[c, w], 1e-300))},"
                             f"{_fmt(max(pool.scale[c, w], 1e-300))}")
            else:
                lines.append(f"{start},0,0,,0,0")
        trace = out / f"chunk-{c}-trace.csv"
        trace.write_text("\n".join(lines) + "\n")
        blocks: dict[str, dict[str, str]] = {}
        for b in range(n_sg):
            wsel = np.flatnonzero(sg_block == b)
            rows = pool.len_row[c] * nb + pool.block[wsel]
            entry = {}
            for f, d in pool.lengths.fields.items():
                v, p = mix_rows(d, rows, req[c, wsel] + 1e-300)
                entry[f] = "{" + ", ".join(f"{_fmt(a)}: {_fmt(q)}" for a, q in zip(
                    v.tolist(), p.tolist(), strict=True)) + "}"
            blocks[str(int(b * SERVEGEN_BLOCK_S))] = entry
        ds = out / f"chunk-{c}-dataset.json"
        ds.write_bytes(orjson.dumps(blocks))
        written += [trace, ds]
    (out / "clients.json").write_bytes(orjson.dumps(
        {str(c): str(x) for c, x in enumerate(pool.client_ids)}, option=orjson.OPT_INDENT_2))
    return written
