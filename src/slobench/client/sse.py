"""Incremental Server-Sent Events parsing over raw byte reads.

Every event parsed out of one network read gets that read's arrival time: events that arrived
together are timestamped together, and nothing is delayed by per-line awaits.

Linear in the bytes fed, however they are split: a line that spans many reads is collected in a
``bytearray`` (amortized appends) and only the new bytes of each read are searched for its end,
so a 20 MB event arriving in 4 KB reads costs one pass, not one pass per read.

Bounded: a line or an event longer than ``MAX_EVENT_BYTES`` raises :class:`SSEError` instead of
being buffered on and on (a broken or hostile server can send one line without end).
"""

from __future__ import annotations

# Longest line or event (its data lines together) the parser holds. A streamed chunk of an
# OpenAI-style response is far smaller; the limit only keeps memory bounded.
MAX_EVENT_BYTES = 32 * 2**20


class SSEError(ValueError):
    """The stream broke a limit that keeps the parser's memory bounded."""


class SSEParser:
    """Feed bytes, get complete event payloads (the ``data`` field, lines joined by newlines).

    Comments (``:``), ``event:``, ``id:`` and ``retry:`` lines are skipped; both LF and CRLF end a
    line. A trailing partial line is kept until the next feed. Raises :class:`SSEError` on a
    line or event over ``MAX_EVENT_BYTES``.
    """

    __slots__ = ("_buf", "_data", "_data_bytes")

    def __init__(self) -> None:
        self._buf = bytearray()  # the partial line carried over from earlier reads
        self._data: list[bytes] = []  # data lines of the event being read
        self._data_bytes = 0  # their length together

    def feed(self, chunk: bytes) -> list[bytes]:
        pending = self._buf
        if pending:
            if chunk.find(b"\n") < 0:  # the line goes on: search only the new bytes
                pending += chunk
                if len(pending) > MAX_EVENT_BYTES:
                    self._overflow("line")
                return []
            pending += chunk
            buf = bytes(pending)
            pending.clear()
        else:
            buf = chunk
        lines = buf.split(b"\n")  # one C pass; the last item is the unfinished line
        tail = lines.pop()
        if tail:
            pending += tail
            if len(pending) > MAX_EVENT_BYTES:
                self._overflow("line")
        events: list[bytes] = []
        data = self._data
        size = self._data_bytes
        for line in lines:
            if line and line[-1] == 13:  # CRLF
                line = line[:-1]
            if not line:  # a blank line ends the event
                if data:
                    events.append(b"\n".join(data))
                    data = []
                    size = 0
                continue
            if line.startswith(b"data:"):
                value = line[6:] if line[5:6] == b" " else line[5:]
                data.append(value)
                size += len(value) + 1
                if size > MAX_EVENT_BYTES:  # data lines without the blank line that ends them
                    self._overflow("event")
            # other fields (event:, id:, retry:) and comments are irrelevant to OpenAI streams
        self._data = data
        self._data_bytes = size
        return events

    def _overflow(self, what: str) -> None:
        self._buf.clear()
        self._data = []
        self._data_bytes = 0
        raise SSEError(f"SSE {what} longer than {MAX_EVENT_BYTES >> 20} MiB (the parser's limit)")

    def close(self) -> list[bytes]:
        """End of stream: a final event not followed by a blank line still counts."""
        events = self.feed(b"\n\n") if (self._buf or self._data) else []
        self._buf.clear()
        self._data = []
        self._data_bytes = 0
        return events
