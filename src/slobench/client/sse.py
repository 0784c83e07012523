"""Incremental Server-Sent Events parsing over raw byte reads.

Every event parsed out of one network read gets that read's arrival time: events that arrived
together are timestamped together, and nothing is delayed by per-line awaits.
"""

from __future__ import annotations


class SSEParser:
    """Feed bytes, get complete event payloads (the ``data`` field, lines joined by newlines).

    Comments (``:``), ``event:``, ``id:`` and ``retry:`` lines are skipped; both LF and CRLF end a
    line. A trailing partial line is kept until the next feed.
    """

    __slots__ = ("_buf", "_data")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf + chunk if self._buf else chunk
        events: list[bytes] = []
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            line = buf[start:nl]
            start = nl + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data = []
                continue
            if line.startswith(b"data:"):
                value = line[5:]
                if value.startswith(b" "):
                    value = value[1:]
                self._data.append(value)
            # other fields (event:, id:, retry:) and comments are irrelevant to OpenAI streams
        self._buf = buf[start:]
        return events

    def close(self) -> list[bytes]:
        """End of stream: a final event not followed by a blank line still counts."""
        events = self.feed(b"\n\n") if (self._buf or self._data) else []
        self._buf = b""
        return events
