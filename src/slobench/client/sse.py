"""Incremental Server-Sent Events parsing over raw byte reads.

Every event parsed out of one network read gets that read's arrival time: events that arrived
together are timestamped together, and nothing is delayed by per-line awaits.

Linear in the bytes fed, however they are split: a line that spans many reads is collected in a
``bytearray`` (amortized appends) and only the new bytes of each read are searched for its end,
so a 20 MB event arriving in 4 KB reads costs one pass, not one pass per read.
"""

from __future__ import annotations


class SSEParser:
    """Feed bytes, get complete event payloads (the ``data`` field, lines joined by newlines).

    Comments (``:``), ``event:``, ``id:`` and ``retry:`` lines are skipped; both LF and CRLF end a
    line. A trailing partial line is kept until the next feed.
    """

    __slots__ = ("_buf", "_data")

    def __init__(self) -> None:
        self._buf = bytearray()  # the partial line carried over from earlier reads
        self._data: list[bytes] = []  # data lines of the event being read

    def feed(self, chunk: bytes) -> list[bytes]:
        pending = self._buf
        if pending:
            if chunk.find(b"\n") < 0:  # the line goes on: search only the new bytes
                pending += chunk
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
        events: list[bytes] = []
        data = self._data
        for line in lines:
            if line and line[-1] == 13:  # CRLF
                line = line[:-1]
            if not line:  # a blank line ends the event
                if data:
                    events.append(b"\n".join(data))
                    data = []
                continue
            if line.startswith(b"data:"):
                data.append(line[6:] if line[5:6] == b" " else line[5:])
            # other fields (event:, id:, retry:) and comments are irrelevant to OpenAI streams
        self._data = data
        return events

    def close(self) -> list[bytes]:
        """End of stream: a final event not followed by a blank line still counts."""
        events = self.feed(b"\n\n") if (self._buf or self._data) else []
        self._buf.clear()
        self._data = []
        return events
