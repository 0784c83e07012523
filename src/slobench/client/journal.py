"""Crash-safe record journal: JSON lines appended while the run is in flight.

Rows are buffered in memory and written + flushed to the OS at least every ``flush_interval_s``
(default 0.25 s), so a SIGKILL loses at most that much of the completed requests. Readers skip a
torn last line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from slobench.schema import RECORDS_SCHEMA, conform_records


class Journal:
    def __init__(self, path: Path, flush_interval_s: float = 0.25) -> None:
        self.path = Path(path)
        self.flush_interval_s = flush_interval_s
        self._file = open(self.path, "ab")  # noqa: SIM115 - held open for the whole run
        self._pending: list[bytes] = []
        self._task: asyncio.Task[None] | None = None
        self.count = 0

    def append(self, row: dict[str, Any]) -> None:
        try:
            line = orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY)
        except orjson.JSONEncodeError:  # e.g. lone surrogates in an error text: keep the row
            line = orjson.dumps({k: _utf8(v) for k, v in row.items()},
                                option=orjson.OPT_SERIALIZE_NUMPY)
        self._pending.append(line)
        self.count += 1

    def flush(self) -> None:
        if self._pending and not self._file.closed:
            self._file.write(b"\n".join(self._pending) + b"\n")
            self._pending.clear()
            self._file.flush()

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            self.flush()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._flusher())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.close()

    def close(self) -> None:
        if self._file.closed:
            return
        self.flush()
        os.fsync(self._file.fileno())
        self._file.close()


def _utf8(value: Any) -> Any:
    """A string that UTF-8 can carry (undecodable bytes that aiohttp's pure-Python parser keeps
    as lone surrogates become backslash escapes); anything else as it is."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def read_journal(path: Path) -> tuple[pa.Table, int]:
    """Rows of a journal as a Records table, and how many torn/unreadable lines were skipped."""
    rows: list[dict[str, Any]] = []
    bad = 0
    with open(path, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                bad += 1
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                bad += 1
    if not rows:
        return RECORDS_SCHEMA.empty_table(), bad
    table = pa.Table.from_pylist(rows)
    return conform_records(table, str(path)), bad
