"""Import public LLM-serving traces as a Workload table, and replay them scaled and windowed.

Formats (see docs/traces.md for sources and column meanings):

``azure``     Azure LLM inference traces 2023 and 2024: ``TIMESTAMP,ContextTokens,GeneratedTokens``
              with ISO timestamps (7 fractional digits in 2023, a ``+00:00`` offset in 2024).
``burstgpt``  BurstGPT v1-v3: ``Timestamp,Model,Request tokens,Response tokens,Total tokens,
              Log Type`` (+ a session / conversation id column where present).
``mooncake``  Mooncake JSONL: ``{"timestamp": ms, "input_length": n, "output_length": m,
              "hash_ids": [...]}``; ``hash_ids`` become ``prefix_blocks``.
``vidur``     Vidur-style CSV: ``arrived_at,num_prefill_tokens,num_decode_tokens`` (seconds).
``parquet``   our own Workload Parquet file.
``jsonl``     our own Workload as JSON lines, one Workload row (an object) per line.

The fast path parses with pyarrow (vectorized). Only when something is wrong does a second,
row-by-row pass over the file find the first offending line, so that every error names
``file:line`` (1-based, the header counts as line 1). Nothing read from a file is ever evaluated.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json

from slobench.errors import UserError
from slobench.schema import conform_workload, read_workload
from slobench.workload.synthetic import _request_ids


def csv_rows(lines: Iterable[str]) -> Any:
    """``csv.reader`` over ``lines``, with NUL characters shown as U+FFFD: Python 3.10's csv
    module stops at a NUL with an error of its own (3.11 reads it as a character), and a file
    of binary noise must still give slobench's one-line error, on either version."""
    return csv.reader(line.replace("\0", "\ufffd") for line in lines)

FORMATS = ("azure", "burstgpt", "mooncake", "vidur", "parquet", "jsonl")

# BurstGPT "Log Type" -> Workload app (SLO class). Anything else (or no column) -> chatbot.
BURSTGPT_APPS: dict[str, str] = {"conversation log": "chatbot", "api log": "tool"}

# Column kinds: "time" ISO date-time, "seconds" a finite number, "count" a whole number >= 0,
# "text" any string (may be empty).
_Spec = Mapping[str, str]

# Canonical (normalized) column name -> kind, and the spellings shown in messages.
_AZURE_REQUIRED = {"timestamp": "time", "contexttokens": "count", "generatedtokens": "count"}
_AZURE_NAMES = "TIMESTAMP,ContextTokens,GeneratedTokens"
_BURST_REQUIRED = {"timestamp": "seconds", "requesttokens": "count", "responsetokens": "count"}
_BURST_OPTIONAL = {
    "model": "text",
    "logtype": "text",
    "sessionid": "text",
    "conversationid": "text",
    "chatid": "text",
    "userid": "text",
}
_BURST_NAMES = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type"
_VIDUR_REQUIRED = {"arrivedat": "seconds", "numprefilltokens": "count", "numdecodetokens": "count"}
_VIDUR_NAMES = "arrived_at,num_prefill_tokens,num_decode_tokens"

# JSON field kinds: "number", "count", "count_list", "text", "text_or_null".
_MOONCAKE_FIELDS = {
    "timestamp": ("number", True),
    "input_length": ("count", True),
    "output_length": ("count", True),
    "hash_ids": ("count_list", False),
}
_OWN_FIELDS = {
    "request_id": ("text", False),
    "arrival_s": ("number", True),
    "client_id": ("text", False),
    "app": ("text", False),
    "session_id": ("text", False),
    "turn": ("count", False),
    "think_s": ("number", False),
    "input_tokens": ("count", True),
    "output_tokens": ("count", True),
    "reasoning_tokens": ("count", False),
    "prefix_blocks": ("count_list", False),
    "image_tokens": ("count_list", False),
    "prompt": ("text_or_null", False),
}

_ISO = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:?\d{2})?$"
)
_COUNT = re.compile(r"^\+?\d+$")
_OFFSET = re.compile(r"(Z|[+-]\d{2}:?\d{2})$")


# ----------------------------------------------------------------------------- public API


def load_trace(
    path: str | Path,
    format: str = "auto",
    *,
    time_scale: float = 1.0,
    rate_scale: float | None = None,
    start_s: float | None = None,
    duration_s: float | None = None,
    max_requests: int | None = None,
    drop_failed: bool = False,
    app: str | None = None,
) -> pa.Table:
    """Read a trace file as a Workload table (``schema.WORKLOAD_SCHEMA``), sorted by arrival.

    Imported traces have ``arrival_s`` relative to their first request; our own Parquet/JSONL keep
    their offsets. Then, in this order: ``drop_failed`` drops rows with 0 output tokens (BurstGPT
    marks failed requests that way); ``start_s``/``duration_s`` keep the window
    ``[start_s, start_s + duration_s)`` of the trace's own time and shift it to start at 0;
    ``max_requests`` keeps the first N; ``time_scale`` multiplies every arrival offset (and
    ``think_s``): 2 replays twice as slowly, 0.5 twice as fast; or ``rate_scale`` (a target mean
    rate in requests/s) picks the factor that makes ``(n - 1) / (last - first arrival)`` equal it.
    ``app`` overrides the app (SLO class) of every request.
    """
    path = Path(path)
    fmt = detect_format(path) if format == "auto" else format
    if fmt not in FORMATS:
        raise UserError(
            f"{path}: unknown trace format {format!r}; use auto or one of {', '.join(FORMATS)}"
        )
    _check_file(path)
    reader = _READERS[fmt]
    table = reader(path)
    if drop_failed:
        table = table.filter(pc.greater(table["output_tokens"], 0))
    if app is not None:
        if not app or not re.match(r"^[A-Za-z0-9_.-]+$", app):
            raise UserError(f"app {app!r} must be letters, digits, '_', '-' or '.'")
        apps = pa.repeat(pa.scalar(app, pa.string()), table.num_rows)
        table = table.set_column(table.schema.get_field_index("app"), "app", apps)
    table = window(table, start_s=start_s, duration_s=duration_s, max_requests=max_requests,
                   source=str(path))
    return scale_times(table, time_scale=time_scale, rate_scale=rate_scale, source=str(path))


def detect_format(path: str | Path) -> str:
    """The format of a trace file from its extension and its header (first line / first record)."""
    path = Path(path)
    _check_file(path)
    suffix = path.suffix.lower()
    with open(path, "rb") as fh:
        head = fh.read(4)
    if suffix == ".parquet" or head == b"PAR1":
        return "parquet"
    first, line_no = _first_line(path)
    if first is None:
        raise UserError(f"{path}: the file is empty; give a trace with a header and requests")
    if first.lstrip().startswith("{"):
        try:
            obj = orjson.loads(first)
        except orjson.JSONDecodeError as exc:
            raise UserError(f"{path}:{line_no}: not valid JSON ({exc}); fix that line") from None
        keys = set(obj) if isinstance(obj, dict) else set()
        if {"input_length", "output_length"} & keys or "hash_ids" in keys:
            return "mooncake"
        if {"arrival_s", "input_tokens", "output_tokens"} & keys:
            return "jsonl"
        raise UserError(
            f"{path}:{line_no}: JSON lines with keys {sorted(keys)} are neither Mooncake "
            "(timestamp, input_length, output_length, hash_ids) nor a Workload (arrival_s, "
            "input_tokens, output_tokens); convert the trace or pass format="
        )
    names = {_norm(n) for n in next(csv_rows([first]))}
    if set(_AZURE_REQUIRED) <= names:
        return "azure"
    if {"requesttokens", "responsetokens"} <= names:
        return "burstgpt"
    if set(_VIDUR_REQUIRED) <= names:
        return "vidur"
    raise UserError(
        f"{path}:{line_no}: cannot tell the trace format from the header {first.strip()[:120]!r}; "
        f"expected Azure ({_AZURE_NAMES}), BurstGPT ({_BURST_NAMES}), Vidur ({_VIDUR_NAMES}), "
        "Mooncake or Workload JSON lines, or Parquet; fix the header or pass the format"
    )


def window(
    table: pa.Table,
    *,
    start_s: float | None = None,
    duration_s: float | None = None,
    max_requests: int | None = None,
    source: str = "trace",
) -> pa.Table:
    """Keep arrivals in ``[start_s, start_s + duration_s)``, shifted by ``-start_s``; then the
    first ``max_requests``. Raises UserError when nothing is left."""
    start = _number_option("start_s", start_s, minimum=0.0) if start_s is not None else None
    dur = None
    if duration_s is not None:
        dur = _number_option("duration_s", duration_s, positive=True)
    if max_requests is not None and (
        isinstance(max_requests, bool) or not isinstance(max_requests, (int, np.integer))
        or max_requests < 1
    ):
        raise UserError(f"max_requests {max_requests!r} must be a whole number >= 1")
    n_before = table.num_rows
    arrival = table["arrival_s"]
    if start is not None or dur is not None:
        lo = start or 0.0
        mask = pc.greater_equal(arrival, lo)
        if dur is not None:
            mask = pc.and_(mask, pc.less(arrival, lo + dur))
        table = table.filter(mask)
        if lo:
            idx = table.schema.get_field_index("arrival_s")
            table = table.set_column(idx, "arrival_s", pc.subtract(table["arrival_s"], lo))
    if max_requests is not None:
        table = table.slice(0, int(max_requests))
    if table.num_rows == 0:
        if n_before == 0:
            raise UserError(f"{source}: the trace has no requests; give a trace with at least one")
        first, last = pc.min(arrival).as_py(), pc.max(arrival).as_py()
        raise UserError(
            f"{source}: no requests in the window start_s={start_s}, duration_s={duration_s} "
            f"(the trace spans {first:g}..{last:g} s); choose a window inside the trace"
        )
    return table


def scale_times(
    table: pa.Table,
    *,
    time_scale: float = 1.0,
    rate_scale: float | None = None,
    source: str = "trace",
) -> pa.Table:
    """Stretch (``time_scale`` > 1) or compress arrival offsets and think times, or rescale them
    so the mean arrival rate ``(n - 1) / (last - first)`` equals ``rate_scale`` requests/s."""
    ts = _number_option("time_scale", time_scale, positive=True)
    if rate_scale is not None:
        if ts != 1.0:
            raise UserError("give time_scale or rate_scale, not both")
        target = _number_option("rate_scale", rate_scale, positive=True)
        n = table.num_rows
        span = (pc.max(table["arrival_s"]).as_py() - pc.min(table["arrival_s"]).as_py()) if n else 0
        if n < 2 or span <= 0:
            raise UserError(
                f"{source}: rate_scale needs at least two requests at different times "
                f"(found {n}); use time_scale, or a longer window"
            )
        ts = ((n - 1) / span) / target
    if ts == 1.0:
        return table
    for name in ("arrival_s", "think_s"):
        idx = table.schema.get_field_index(name)
        table = table.set_column(idx, name, pc.multiply(table[name], ts))
    return table


def read_azure(path: str | Path) -> pa.Table:
    """Azure LLM inference trace (2023 or 2024; code or conversation) as a Workload table.

    The variant comes from the file name: ``code`` -> client ``azure-code``, app ``coding``;
    ``conv`` -> client ``azure-conv``, app ``chatbot``; otherwise ``azure`` / ``chatbot``.
    """
    path = Path(path)
    cols = _read_csv(path, "Azure", _AZURE_REQUIRED, {}, _AZURE_NAMES)
    name = path.name.lower()
    if "code" in name:
        client, app = "azure-code", "coding"
    elif "conv" in name:
        client, app = "azure-conv", "chatbot"
    else:
        client, app = "azure", "chatbot"
    ns = cols["timestamp"].cast(pa.int64()).to_numpy(zero_copy_only=False)
    arrival = (ns - ns.min()).astype(np.float64) / 1e9
    return _build(arrival, cols["contexttokens"], cols["generatedtokens"], client, app)


def read_burstgpt(path: str | Path) -> pa.Table:
    """BurstGPT CSV (v1-v3) as a Workload table.

    client_id = the Model column (ChatGPT, GPT-4, ...) or a user id column where present; app from
    Log Type (``BURSTGPT_APPS``); sessions from a Session ID / Conversation ID column where present.
    """
    path = Path(path)
    cols = _read_csv(path, "BurstGPT", _BURST_REQUIRED, _BURST_OPTIONAL, _BURST_NAMES)
    n = len(cols["timestamp"])
    arrival = cols["timestamp"].to_numpy(zero_copy_only=False).astype(np.float64)
    if "userid" in cols:
        client: pa.Array | str = cols["userid"]
    elif "model" in cols:
        client = cols["model"]
    else:
        client = "burstgpt"
    if isinstance(client, pa.Array):
        client = pc.if_else(pc.equal(pc.utf8_length(client), 0), "burstgpt", client)
    if "logtype" in cols:
        kind = pc.utf8_lower(pc.utf8_trim_whitespace(cols["logtype"]))
        app: pa.Array | str = pa.array(["chatbot"] * n, pa.string())
        for label, target in BURSTGPT_APPS.items():
            app = pc.if_else(pc.equal(kind, label), target, app)
    else:
        app = "chatbot"
    session = next(
        (cols[k] for k in ("sessionid", "conversationid", "chatid") if k in cols), None
    )
    return _build(arrival, cols["requesttokens"], cols["responsetokens"], client, app,
                  session=session)


def read_vidur(path: str | Path) -> pa.Table:
    """Vidur-style request trace CSV (``arrived_at`` in seconds) as a Workload table."""
    path = Path(path)
    cols = _read_csv(path, "Vidur", _VIDUR_REQUIRED, {}, _VIDUR_NAMES)
    arrival = cols["arrivedat"].to_numpy(zero_copy_only=False).astype(np.float64)
    return _build(arrival, cols["numprefilltokens"], cols["numdecodetokens"], "vidur", "chatbot")


def read_mooncake(path: str | Path) -> pa.Table:
    """Mooncake JSONL trace (timestamps in ms; ``hash_ids`` -> ``prefix_blocks``).

    The file name picks the app: ``toolagent`` -> tool, ``conversation``/other -> chatbot.
    """
    path = Path(path)
    table = _read_json_lines(path, "Mooncake", _MOONCAKE_FIELDS)
    arrival = table["timestamp"].to_numpy(zero_copy_only=False).astype(np.float64) / 1000.0
    blocks = table["hash_ids"] if "hash_ids" in table.column_names else None
    if blocks is not None:
        blocks = _int_lists(blocks)
    app = "tool" if "toolagent" in path.name.lower() else "chatbot"
    return _build(arrival, table["input_length"], table["output_length"], "mooncake", app,
                  prefix_blocks=blocks)


def read_jsonl(path: str | Path) -> pa.Table:
    """Our own Workload as JSON lines (one object per line; missing optional keys take the
    schema defaults; a missing request_id is generated). Sorted by arrival, offsets kept."""
    path = Path(path)
    table = _read_json_lines(path, "Workload", _OWN_FIELDS)
    if "request_id" not in table.column_names:
        table = table.append_column("request_id", _request_ids(table.num_rows))
    for name in ("prefix_blocks", "image_tokens"):
        if name in table.column_names:
            col = _int_lists(table[name])
            table = table.set_column(table.schema.get_field_index(name), name, col)
    if "session_id" in table.column_names and table["session_id"].null_count:
        table = table.set_column(
            table.schema.get_field_index("session_id"), "session_id",
            pc.coalesce(table["session_id"], table["request_id"]),
        )
    return _sort(conform_workload(table, str(path)))


def read_parquet_workload(path: str | Path) -> pa.Table:
    """Our own Workload Parquet file (``schema.read_workload``), sorted by arrival."""
    return _sort(read_workload(Path(path)))


_READERS = {
    "azure": read_azure,
    "burstgpt": read_burstgpt,
    "mooncake": read_mooncake,
    "vidur": read_vidur,
    "parquet": read_parquet_workload,
    "jsonl": read_jsonl,
}


# ----------------------------------------------------------------------------- building


def _build(
    arrival: np.ndarray,
    input_tokens: pa.Array,
    output_tokens: pa.Array,
    client: pa.Array | str,
    app: pa.Array | str,
    *,
    session: pa.Array | None = None,
    prefix_blocks: pa.Array | None = None,
) -> pa.Table:
    """A Workload table from trace columns: stably sorted by arrival, offsets from the first."""
    n = len(arrival)
    order = np.argsort(arrival, kind="stable")
    arr = arrival[order]
    arr = arr - arr[0] if n else arr
    take = pa.array(order)

    def col(value: pa.Array | str) -> pa.Array:
        if isinstance(value, str):
            return pa.repeat(pa.scalar(value, pa.string()), n)
        return pc.take(value, take).cast(pa.string())

    ids = _request_ids(n)
    if session is not None:
        sess = col(session)
        sess = pc.if_else(pc.equal(pc.utf8_length(pc.fill_null(sess, "")), 0), ids, sess)
        turn = _turns(sess)
    else:
        sess, turn = ids, np.zeros(n, dtype=np.int32)
    if prefix_blocks is not None:
        blocks = pc.take(prefix_blocks, take)
    else:
        blocks = pa.array([[]] * n, pa.list_(pa.int64()))
    table = pa.table(
        {
            "request_id": ids,
            "arrival_s": pa.array(arr, pa.float64()),
            "client_id": col(client),
            "app": col(app),
            "session_id": sess,
            "turn": pa.array(turn, pa.int32()),
            "input_tokens": pc.take(input_tokens, take),
            "output_tokens": pc.take(output_tokens, take),
            "prefix_blocks": blocks,
        }
    )
    return conform_workload(table, "trace")


def _turns(session: pa.Array) -> np.ndarray:
    """0-based turn number of each row within its session (rows already sorted by arrival)."""
    n = len(session)
    if n == 0:
        return np.zeros(0, dtype=np.int32)
    codes = pc.dictionary_encode(session).indices.to_numpy(zero_copy_only=False)
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_codes)) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    turn = np.empty(n, dtype=np.int32)
    turn[order] = np.arange(n) - group_start
    return turn


def _sort(table: pa.Table) -> pa.Table:
    order = np.argsort(table["arrival_s"].to_numpy(), kind="stable")
    if np.all(order[1:] > order[:-1]):
        return table
    return table.take(pa.array(order))


# ----------------------------------------------------------------------------- CSV


def _read_csv(path: Path, fmt: str, required: _Spec, optional: _Spec, names_hint: str
              ) -> dict[str, pa.Array]:
    """The required (and present optional) columns, keyed by normalized name, validated."""
    first, line_no = _first_line(path)
    if first is None:
        raise UserError(
            f"{path}: the file is empty; {fmt} traces start with the header {names_hint}"
        )
    if line_no != 1:
        raise UserError(f"{path}:1: the header line is empty; put the header {names_hint} first")
    header = next(csv_rows([first]))
    by_norm: dict[str, str] = {}
    for name in header:
        by_norm.setdefault(_norm(name), name)
    missing = [k for k in required if k not in by_norm]
    if missing:
        raise UserError(
            f"{path}:1: the header has no {_spell(missing, names_hint)} column (found "
            f"{', '.join(header)}); {fmt} traces need {names_hint}; fix the header"
        )
    spec = {k: v for k, v in {**required, **optional}.items() if k in by_norm}
    types = {"time": pa.string(), "seconds": pa.float64(), "count": pa.int64(), "text": pa.string()}
    convert = pa_csv.ConvertOptions(
        column_types={by_norm[k]: types[kind] for k, kind in spec.items()},
        include_columns=[by_norm[k] for k in spec],
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    try:
        table = pa_csv.read_csv(path, convert_options=convert)
    # KeyError: a header that is not UTF-8; UnicodeDecodeError: Arrow's message quoting bad bytes
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowKeyError,
            UnicodeDecodeError) as exc:
        _locate_csv(path, header, by_norm, spec)
        raise UserError(f"{path}: not a readable {fmt} CSV ({exc}); fix the file") from None
    if table.num_rows == 0:
        raise UserError(f"{path}: the {fmt} trace has a header but no requests; add rows")
    cols: dict[str, pa.Array] = {}
    bad = False
    for key, kind in spec.items():
        col = table[by_norm[key]].combine_chunks()
        if kind == "count":
            bad |= bool(col.null_count) or bool(pc.any(pc.less(col, 0)).as_py())
        elif kind == "seconds":
            bad |= bool(col.null_count) or not bool(pc.all(pc.is_finite(col)).as_py())
        elif kind == "time":
            first_value = col[0].as_py()
            unit = pa.timestamp("ns", tz="UTC") if _OFFSET.search(first_value.strip()) else (
                pa.timestamp("ns"))
            try:
                col = pc.utf8_trim_whitespace(col).cast(unit)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                bad = True
        cols[key] = col
    if bad:
        _locate_csv(path, header, by_norm, spec)
        raise UserError(f"{path}: invalid values in the {fmt} trace; fix the file")
    return cols


def _locate_csv(path: Path, header: list[str], by_norm: dict[str, str], spec: _Spec) -> None:
    """Slow pass over a CSV known to be bad: raise UserError naming the first bad line."""
    index = {k: header.index(by_norm[k]) for k in spec}
    tz: bool | None = None
    _locate_non_utf8(path)
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        next(reader, None)
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                raise UserError(
                    f"{path}:{line}: {len(row)} field(s), the header has {len(header)}; "
                    "fix or delete that line"
                )
            for key, kind in spec.items():
                name = by_norm[key]
                value = row[index[key]].strip()
                where = f"{path}:{line}: column '{name}'"
                if kind == "text":
                    continue
                if not value:
                    raise UserError(f"{where} is empty; give a value or delete that line")
                if kind == "count":
                    if _COUNT.match(value):
                        continue
                    if value.startswith("-") and _COUNT.match(value[1:]):
                        raise UserError(f"{where} is {value}, a negative token count; "
                                        "token counts must be >= 0")
                    raise UserError(f"{where} is {value[:40]!r}, not a whole number of tokens; "
                                    "fix or delete that line")
                if kind == "seconds":
                    try:
                        ok = math.isfinite(float(value))
                    except ValueError:
                        ok = False
                    if not ok:
                        raise UserError(f"{where} is {value[:40]!r}, not a finite number of "
                                        "seconds; fix or delete that line")
                if kind == "time":
                    has_tz = _check_timestamp(value, where)
                    if tz is None:
                        tz = has_tz
                    elif tz != has_tz:
                        raise UserError(f"{where} is {value!r}: some timestamps have a UTC offset "
                                        "and some do not; use one form throughout")


def is_utf8_table(table: pa.Table) -> bool:
    """Whether a table read from a text file (CSV, JSON lines) holds only UTF-8 text: Arrow
    reads bytes that are not UTF-8 as binary columns, or as column names Python cannot decode."""
    try:
        table.schema.names  # noqa: B018 (decoding the names is the check)
    except UnicodeDecodeError:
        return False
    return not any(pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)
                   for f in table.schema)


def _locate_non_utf8(path: Path) -> None:
    """Raise UserError naming the first line that is not UTF-8 text, if any."""
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                raise UserError(f"{path}:{line_no}: not UTF-8 text; fix or delete that line"
                                ) from None


def _check_timestamp(value: str, where: str) -> bool:
    m = _ISO.match(value)
    ok = m is not None
    if m is not None:
        try:
            datetime(*(int(m.group(i)) for i in range(1, 7)))
        except ValueError:
            ok = False
    if not ok:
        raise UserError(f"{where} is {value[:40]!r}, not a timestamp like "
                        "'2023-11-16 18:15:46.6805900'; fix or delete that line")
    assert m is not None
    return m.group(8) is not None


# ----------------------------------------------------------------------------- JSON lines


def _read_json_lines(path: Path, fmt: str, fields: Mapping[str, tuple[str, bool]]) -> pa.Table:
    first, _ = _first_line(path)
    if first is None:
        raise UserError(f"{path}: the file is empty; {fmt} traces have one JSON object per line")
    try:
        table = pa_json.read_json(path)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError) as exc:
        _locate_json(path, fmt, fields)
        raise UserError(f"{path}: not readable {fmt} JSON lines ({exc}); fix the file") from None
    if not is_utf8_table(table):
        _locate_non_utf8(path)
    if table.num_rows == 0:
        raise UserError(f"{path}: no requests; {fmt} traces have one JSON object per line")
    keep = [name for name in table.column_names if name in fields]
    table = table.select(keep)
    bad = any(req and name not in keep for name, (_, req) in fields.items())
    for name in keep:
        kind, req = fields[name]
        col = table[name]
        t = col.type
        if req and col.null_count:
            bad = True
        elif kind == "number":
            bad |= not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t))
            if not bad and pa.types.is_floating(t):
                bad |= not bool(pc.all(pc.is_finite(col)).as_py() in (True, None))
        elif kind == "count":
            bad |= not (pa.types.is_integer(t) or pa.types.is_null(t))
            if not bad and pa.types.is_integer(t):
                bad |= bool(pc.any(pc.less(col, 0)).as_py())
        elif kind == "count_list":
            ok = pa.types.is_null(t) or (
                pa.types.is_list(t) and (pa.types.is_integer(t.value_type)
                                         or pa.types.is_null(t.value_type)))
            bad |= not ok
            if ok and pa.types.is_list(t) and pa.types.is_integer(t.value_type):
                bad |= bool(pc.any(pc.less(pc.list_flatten(col), 0)).as_py())
        elif kind in ("text", "text_or_null"):
            bad |= not (pa.types.is_string(t) or pa.types.is_large_string(t)
                        or pa.types.is_null(t))
            if kind == "text" and col.null_count:
                bad = True
        if bad:
            break
    if bad:
        _locate_json(path, fmt, fields)
        raise UserError(f"{path}: invalid values in the {fmt} JSON lines; fix the file")
    return table


def _locate_json(path: Path, fmt: str, fields: Mapping[str, tuple[str, bool]]) -> None:
    """Slow pass over JSON lines known to be bad: raise UserError naming the first bad line."""
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise UserError(
                    f"{path}:{line_no}: not valid JSON ({exc}); fix that line"
                ) from None
            if not isinstance(obj, dict):
                raise UserError(f"{path}:{line_no}: expected a JSON object per line, found "
                                f"{type(obj).__name__}; fix that line")
            for name, (kind, req) in fields.items():
                where = f"{path}:{line_no}: '{name}'"
                if name not in obj or (obj[name] is None and kind != "text_or_null"):
                    if req or (name in obj and kind == "text"):
                        raise UserError(
                            f"{where} is missing; every {fmt} line needs "
                            f"{', '.join(k for k, (_, r) in fields.items() if r)}"
                        )
                    continue
                _check_json_value(obj[name], kind, where)


def _check_json_value(v: object, kind: str, where: str) -> None:
    def is_int(x: object) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    if kind == "number":
        if not (is_int(v) or isinstance(v, float)) or not math.isfinite(float(v)):  # type: ignore[arg-type]
            raise UserError(f"{where} is {v!r}, not a finite number; fix that line")
    elif kind == "count":
        if not is_int(v):
            raise UserError(f"{where} is {v!r}, not a whole number; fix that line")
        if v < 0:  # type: ignore[operator]
            raise UserError(f"{where} is {v}, negative; token counts must be >= 0")
    elif kind == "count_list":
        if not isinstance(v, list) or not all(is_int(x) and x >= 0 for x in v):
            raise UserError(f"{where} must be a list of whole numbers >= 0; fix that line")
    elif kind in ("text", "text_or_null") and not isinstance(v, str):
        raise UserError(f"{where} is {v!r}, not a string; fix that line")


# ----------------------------------------------------------------------------- helpers


def _int_lists(col: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """A list column as list<int64>, null lists as empty lists."""
    list_type = pa.list_(pa.int64())
    return pc.fill_null(col.cast(list_type), pa.scalar([], list_type))


def _norm(name: str) -> str:
    """Header spelling -> canonical key: 'Request tokens', 'request_tokens' -> 'requesttokens'."""
    return re.sub(r"[^a-z0-9]", "", name.strip().lstrip("\ufeff").lower())


def _spell(keys: list[str], names_hint: str) -> str:
    spelled = {_norm(n): n for n in names_hint.split(",")}
    return ", ".join(f"'{spelled.get(k, k)}'" for k in keys)


def _first_line(path: Path) -> tuple[str | None, int]:
    """The first non-blank line of a text file (BOM stripped) and its 1-based number."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line_no, line in enumerate(fh, start=1):
            if line.strip():
                return line.lstrip("\ufeff").rstrip("\r\n"), line_no
    return None, 0


def _check_file(path: Path) -> None:
    if not path.exists():
        raise UserError(f"{path}: no such file; give the path of a trace file")
    if not path.is_file():
        raise UserError(f"{path}: not a file; give the path of a trace file")


def _number_option(name: str, value: object, *, positive: bool = False,
                   minimum: float | None = None) -> float:
    try:
        if isinstance(value, bool):
            raise TypeError
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UserError(f"{name} {value!r} is not a number") from None
    if not math.isfinite(x) or (positive and x <= 0) or (minimum is not None and x < minimum):
        need = "> 0" if positive else f">= {minimum:g}"
        raise UserError(f"{name} {value!r} must be a finite number {need}")
    return x


__all__ = [
    "BURSTGPT_APPS",
    "FORMATS",
    "detect_format",
    "load_trace",
    "read_azure",
    "read_burstgpt",
    "read_jsonl",
    "read_mooncake",
    "read_parquet_workload",
    "read_vidur",
    "scale_times",
    "window",
]
