"""The two core tables: Workload (what to send) and Records (what happened).

Column names are the contract.

Both are Arrow tables stored as Parquet. This module is the lowest layer: every other layer imports
it, it imports nothing of slobench except errors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from slobench.errors import UserError

# One row per request. arrival_s is the offset from the start of the run; for a follow-up turn of a
# session it is the earliest send time (the turn also waits think_s after the previous turn ends).
WORKLOAD_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("arrival_s", pa.float64(), nullable=False),
        pa.field("client_id", pa.string(), nullable=False),
        pa.field("app", pa.string(), nullable=False),
        pa.field("session_id", pa.string(), nullable=False),
        pa.field("turn", pa.int32(), nullable=False),
        pa.field("think_s", pa.float64(), nullable=False),
        pa.field("input_tokens", pa.int64(), nullable=False),
        pa.field("output_tokens", pa.int64(), nullable=False),
        pa.field("reasoning_tokens", pa.int64(), nullable=False),
        pa.field("prefix_blocks", pa.list_(pa.int64()), nullable=False),
        pa.field("image_tokens", pa.list_(pa.int64()), nullable=False),
        pa.field("prompt", pa.string(), nullable=True),
    ]
)

# Request outcome classes. "connect_error" (the TCP/TLS connection could not be made) is kept apart
# from "disconnect" (the server dropped an established connection) because the fixes differ.
STATUSES = (
    "ok",
    "http_error",
    "timeout",
    "disconnect",
    "connect_error",
    "protocol_error",
    "cancelled",
)

# How output tokens were counted per request (see client.backends.openai for the rules).
TOKEN_COUNT_SOURCES = ("usage_deltas", "final_usage_spread", "chunks", "non_streaming", "none")

# One row per request. All times are seconds since the run start (one perf_counter_ns clock);
# a time is null when the event never happened (e.g. no first token for a failed request).
RECORDS_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("client_id", pa.string(), nullable=False),
        pa.field("app", pa.string(), nullable=False),
        pa.field("scheduled_s", pa.float64(), nullable=False),
        pa.field("sent_s", pa.float64()),
        pa.field("first_token_s", pa.float64()),
        pa.field("first_answer_s", pa.float64()),
        pa.field("done_s", pa.float64()),
        pa.field("input_tokens", pa.int64(), nullable=False),
        pa.field("output_tokens", pa.int64(), nullable=False),
        pa.field("reasoning_tokens", pa.int64(), nullable=False),
        pa.field("token_times", pa.list_(pa.float64()), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("http_status", pa.int32()),
        pa.field("error", pa.string()),
        # Extensions to the design's column list:
        # queue_s: time spent waiting for a slot under --max-concurrency (deliberate queueing; it
        #   counts in TTFT and E2E, but not in send lag, which measures the client's own delay).
        pa.field("queue_s", pa.float64(), nullable=False),
        # token_count_source: one of TOKEN_COUNT_SOURCES.
        pa.field("token_count_source", pa.string(), nullable=False),
        # cached_tokens: prompt tokens the server took from its prefix cache, from its
        #   usage.prompt_tokens_details.cached_tokens; null when it does not say (older runs too).
        pa.field("cached_tokens", pa.int64()),
        # worker: the client worker process that sent the request (0..N-1) in a run sharded
        #   with --workers N; null for a run in one process (and for older runs).
        pa.field("worker", pa.int32()),
        # retries: times the request was sent again because a pooled keep-alive connection was
        #   closed by the server before any response (client.backends.openai); 0 in older runs.
        pa.field("retries", pa.int32(), nullable=False),
    ]
)

RECORD_DEFAULTS: dict[str, object] = {
    "sent_s": None,
    "first_token_s": None,
    "first_answer_s": None,
    "done_s": None,
    "output_tokens": 0,
    "reasoning_tokens": 0,
    "token_times": [],
    "http_status": None,
    "error": None,
    "queue_s": 0.0,
    "token_count_source": "none",
    "cached_tokens": None,
    "worker": None,
    "retries": 0,
}

WORKLOAD_DEFAULTS: dict[str, object] = {
    "client_id": "default",
    "app": "chatbot",
    "session_id": "",
    "turn": 0,
    "think_s": 0.0,
    "reasoning_tokens": 0,
    "prefix_blocks": [],
    "image_tokens": [],
    "prompt": None,
}


def _conform(table: pa.Table, schema: pa.Schema, defaults: dict[str, object], what: str,
             source: str) -> pa.Table:
    """Reorder, fill optional columns with defaults and cast; UserError says what is wrong."""
    columns = []
    n = table.num_rows
    for field in schema:
        if field.name in table.column_names:
            col = table.column(field.name)
            try:
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise UserError(
                    f"{source}: column '{field.name}' of the {what} table has type {col.type}, "
                    f"expected {field.type} ({exc}); fix the column type"
                ) from None
            if not field.nullable and col.null_count:
                raise UserError(
                    f"{source}: column '{field.name}' of the {what} table has {col.null_count} "
                    f"empty value(s); every row needs one"
                )
        elif field.name in defaults:
            col = pa.array([defaults[field.name]] * n, type=field.type)
        else:
            raise UserError(
                f"{source}: the {what} table has no column '{field.name}'; "
                f"required columns are {[f.name for f in schema if f.name not in defaults]}"
            )
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=schema)


def conform_workload(table: pa.Table, source: str = "workload") -> pa.Table:
    table = _conform(table, WORKLOAD_SCHEMA, WORKLOAD_DEFAULTS, "Workload", source)
    import pyarrow.compute as pc

    if n_bad := pc.sum(pc.less(table["arrival_s"], 0.0)).as_py():
        raise UserError(f"{source}: {n_bad} row(s) have a negative arrival_s; arrivals are "
                        "offsets >= 0 from the start")
    if pc.sum(pc.less(table["input_tokens"], 0)).as_py() or pc.sum(
        pc.less(table["output_tokens"], 0)
    ).as_py():
        raise UserError(f"{source}: input_tokens and output_tokens must be >= 0")
    return table


def string_codes(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, list[str]]:
    """Integer codes (0..k-1, in order of first appearance) and the distinct values of a
    column, as strings."""
    import pyarrow.compute as pc

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if not pa.types.is_string(col.type):
        col = pc.cast(col, pa.string())
    enc = pc.dictionary_encode(col)
    return (enc.indices.to_numpy(zero_copy_only=False).astype(np.int64),
            [str(v) for v in enc.dictionary.to_pylist()])


def session_links(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """The turn order of sessions: ``(prev, next)``, for each row the row index of the turn
    before and after it in its session, or -1.

    A session is the rows sharing a non-empty ``session_id``, ordered by ``turn`` (ties by
    ``arrival_s``, then row order). A follow-up turn is sent ``think_s`` after the turn before it
    finished, and never before its own ``arrival_s``; a row with an empty ``session_id`` stands
    alone.
    """
    import pyarrow.compute as pc

    n = table.num_rows
    prev = np.full(n, -1, dtype=np.int64)
    nxt = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return prev, nxt
    sid = table["session_id"]
    if isinstance(sid, pa.ChunkedArray):
        sid = sid.combine_chunks()
    encoded = pc.dictionary_encode(sid)
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    empty = pc.equal(sid, "").to_numpy(zero_copy_only=False)
    if empty.all():
        return prev, nxt
    turn = table["turn"].to_numpy()
    arrival = table["arrival_s"].to_numpy()
    order = np.lexsort((np.arange(n), arrival, turn, codes))
    same = (codes[order[1:]] == codes[order[:-1]]) & ~empty[order[1:]]
    a, b = order[:-1][same], order[1:][same]
    nxt[a] = b
    prev[b] = a
    return prev, nxt


def conform_records(table: pa.Table, source: str = "records") -> pa.Table:
    return _conform(table, RECORDS_SCHEMA, RECORD_DEFAULTS, "Records", source)


def read_parquet(path: Path, what: str) -> pa.Table:
    try:
        return pq.read_table(path)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; give the path of a {what} Parquet file") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{path}: not a readable Parquet file ({exc}); regenerate it") from None


def read_workload(path: Path) -> pa.Table:
    return conform_workload(read_parquet(Path(path), "Workload"), str(path))


def write_table(table: pa.Table, path: Path) -> None:
    """Write atomically (temp file + rename) so a crash never leaves a half-written Parquet file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(path)
