"""A raw-socket OpenAI-style server for protocol-level faults an HTTP framework cannot produce.

Each POST picks its fault from the request body: the text ``fault=<mode>`` anywhere in it (put it
in the workload's ``prompt`` column), else ``default_mode``. GET /v1/models lists one model; any
other GET is a 404. The server runs in its own process (``python tests/faultserver.py``), so the
bytes it buffers never count in the client's memory::

    with FaultServer() as url:
        ...  # run a benchmark against url

Modes (``MODES``, each function's docstring says what it sends): ``ok`` (a correct chunked SSE
stream, keep-alive; a JSON answer to ``"stream": false``), ``truncated_chunk``, ``bad_chunk_size``,
``garbage_status``, ``empty_reply``, ``garbage_data``, ``junk_lines``, ``error_binary_body``,
``half_close``, ``half_close_before_response``, ``huge_line``, ``huge_event``, ``huge_body``
(non-streaming), ``huge_header``, ``endless_headers``, ``slow_headers``, ``never_ends``,
``short_content_length``, ``close_delimited``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

MODEL = "fault-model"
HUGE_LINE_BYTES = 50 * 2**20  # what the huge_* modes send (--huge-mb)
HUGE_HEADER_BYTES = 1024 * 1024  # one header line
DRIBBLE_S = 0.05  # slow_headers: one byte this often
HOLD_S = 30.0  # how long a hanging mode keeps its socket open at most

_FAULT = re.compile(rb"fault=([a-z_]+)")


def chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def token_event(i: int) -> bytes:
    obj = {"id": "c", "object": "chat.completion.chunk", "model": MODEL,
           "choices": [{"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}]}
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def tail_events(tokens: int) -> bytes:
    """The finish chunk, the usage chunk and [DONE]."""
    finish = {"id": "c", "object": "chat.completion.chunk", "model": MODEL,
              "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
    usage = {"id": "c", "object": "chat.completion.chunk", "model": MODEL, "choices": [],
             "usage": {"prompt_tokens": 8, "completion_tokens": tokens,
                       "total_tokens": 8 + tokens}}
    return b"".join(b"data: " + json.dumps(o).encode() + b"\n\n" for o in (finish, usage)) \
        + b"data: [DONE]\n\n"


def sse_body(tokens: int) -> bytes:
    return b"".join(token_event(i) for i in range(tokens)) + tail_events(tokens)


SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")


async def _hold(reader: asyncio.StreamReader) -> None:
    """Keep the socket open (reading and dropping anything sent) until the peer closes it."""
    async def drain_input() -> None:
        while await reader.read(65536):
            pass

    with contextlib.suppress(TimeoutError, asyncio.TimeoutError, ConnectionError):
        await asyncio.wait_for(drain_input(), HOLD_S)


async def _put(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Write and wait for the socket buffer; ConnectionResetError once the client has gone (a
    bare write to a closed transport only logs a warning, and would go on without end)."""
    if writer.is_closing():
        raise ConnectionResetError("the client closed the connection")
    writer.write(data)
    await writer.drain()


Writer = asyncio.StreamWriter
Reader = asyncio.StreamReader
# a mode writes its answer; True: the connection may serve another request (keep-alive)
Mode = Callable[[Reader, Writer, int], Awaitable[bool]]


async def ok(reader: Reader, writer: Writer, tokens: int) -> bool:
    if tokens < 0:  # a non-streaming request
        text = "".join(f"t{i} " for i in range(-tokens))
        body = json.dumps({"id": "c", "object": "chat.completion", "model": MODEL, "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text},
             "finish_reason": "length"}], "usage": {"prompt_tokens": 8,
                                                    "completion_tokens": -tokens,
                                                    "total_tokens": 8 - tokens}}).encode()
        writer.write(_plain("200 OK", body))
        await writer.drain()
        return True
    writer.write(SSE_HEAD)
    for i in range(tokens):
        await _put(writer, chunk(token_event(i)))
    writer.write(chunk(tail_events(tokens)) + b"0\r\n\r\n")
    await writer.drain()
    return True


async def truncated_chunk(reader: Reader, writer: Writer, tokens: int) -> bool:
    """Two tokens, then a chunk-size line promising 1 KiB, 20 bytes of it, and close."""
    writer.write(SSE_HEAD + chunk(token_event(0)) + chunk(token_event(1)))
    writer.write(b"400\r\n" + token_event(2)[:20])
    await writer.drain()
    return False


async def bad_chunk_size(reader: Reader, writer: Writer, tokens: int) -> bool:
    """Two tokens, then a chunk-size line that is not hexadecimal; the socket stays open."""
    await _put(writer, SSE_HEAD + chunk(token_event(0)) + chunk(token_event(1)))
    await asyncio.sleep(0.05)
    writer.write(b"zz\xff\r\n" + token_event(2) + b"\r\n")
    await writer.drain()
    await _hold(reader)
    return False


async def garbage_status(reader: Reader, writer: Writer, tokens: int) -> bool:
    writer.write(b"\x00\xff\xfe\x13\x37 NOT-HTTP \x80\x81\r\n\r\n" + bytes(range(256)))
    await writer.drain()
    return False


async def empty_reply(reader: Reader, writer: Writer, tokens: int) -> bool:
    return False  # close without a byte


async def garbage_data(reader: Reader, writer: Writer, tokens: int) -> bool:
    """Binary junk and invalid UTF-8 as an event's data, between good tokens."""
    writer.write(SSE_HEAD + chunk(token_event(0)))
    writer.write(chunk(b"data: \xff\xfe\x00\x80\xc3\x28 junk \x9f\n\n"))
    for i in range(1, tokens):
        writer.write(chunk(token_event(i)))
    writer.write(chunk(tail_events(tokens)) + b"0\r\n\r\n")
    await writer.drain()
    return True


async def junk_lines(reader: Reader, writer: Writer, tokens: int) -> bool:
    """Binary junk lines that are not ``data:`` fields (an SSE reader ignores them) in an
    otherwise correct stream."""
    writer.write(SSE_HEAD)
    for i in range(tokens):
        writer.write(chunk(b"\xff\xfe\x00junk\x80\n: comment \xc3\x28\n" + token_event(i)))
    writer.write(chunk(b"event: \x81\x82\nid: \xff\n" + tail_events(tokens)) + b"0\r\n\r\n")
    await writer.drain()
    return True


async def half_close(reader: Reader, writer: Writer, tokens: int) -> bool:
    """Two tokens, then shut the write side (FIN) and keep the socket open, reading."""
    writer.write(SSE_HEAD + chunk(token_event(0)) + chunk(token_event(1)))
    await writer.drain()
    writer.write_eof()
    await _hold(reader)
    return False


async def half_close_before_response(reader: Reader, writer: Writer, tokens: int) -> bool:
    writer.write_eof()
    await _hold(reader)
    return False


async def error_binary_body(reader: Reader, writer: Writer, tokens: int) -> bool:
    """HTTP 500 whose body is binary junk, 100 of the 5000 bytes announced, never finished."""
    writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 5000\r\n\r\n" + bytes(range(128, 228)))
    await writer.drain()
    await _hold(reader)
    return False


async def huge_line(reader: Reader, writer: Writer, tokens: int) -> bool:
    """A token, then one 50 MB ``data:`` line without a newline; then the socket stays open."""
    writer.write(SSE_HEAD + chunk(token_event(0)) + chunk(b"data: "))
    piece = chunk(b"a" * (1 << 20))
    for _ in range(HUGE_LINE_BYTES >> 20):
        await _put(writer, piece)  # paced by the client's reading
    await _hold(reader)
    return False


async def huge_event(reader: Reader, writer: Writer, tokens: int) -> bool:
    """A token, then 50 MB of short ``data:`` lines with no blank line to end the event."""
    writer.write(SSE_HEAD + chunk(token_event(0)))
    piece = chunk(b"data: " + b"b" * 1018 + b"\n") * 1024  # 1 MiB of 1 KiB lines
    for _ in range(HUGE_LINE_BYTES >> 20):
        await _put(writer, piece)
    await _hold(reader)
    return False


async def huge_body(reader: Reader, writer: Writer, tokens: int) -> bool:
    """A non-streaming answer whose JSON body is 50 MB (Content-Length says so)."""
    start = b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "'
    end = b'"}}]}'
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                 b"\r\n" % (len(start) + HUGE_LINE_BYTES + len(end)) + start)
    piece = b"a" * (1 << 20)
    for _ in range(HUGE_LINE_BYTES >> 20):
        await _put(writer, piece)
    writer.write(end)
    await writer.drain()
    return True


async def endless_headers(reader: Reader, writer: Writer, tokens: int) -> bool:
    """A status line, then short header lines without end."""
    writer.write(b"HTTP/1.1 200 OK\r\n")
    for i in range(0, HUGE_LINE_BYTES >> 10, 64):
        await _put(writer, b"".join(b"X-H%d: %s\r\n" % (i + k, b"h" * 1000) for k in range(64)))
    await _hold(reader)
    return False


async def huge_header(reader: Reader, writer: Writer, tokens: int) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nX-Huge: " + b"a" * HUGE_HEADER_BYTES + b"\r\n"
                 + SSE_HEAD.split(b"\r\n", 1)[1])
    await writer.drain()
    await _hold(reader)
    return False


async def slow_headers(reader: Reader, writer: Writer, tokens: int) -> bool:
    """The status line and headers, one byte every ``DRIBBLE_S`` (slow loris), then a body."""
    head = SSE_HEAD[:-2] + b"X-Padding: " + b"p" * 200 + b"\r\n\r\n"
    for i in range(len(head)):
        await _put(writer, head[i:i + 1])
        await asyncio.sleep(DRIBBLE_S)
    writer.write(chunk(sse_body(tokens)) + b"0\r\n\r\n")
    await writer.drain()
    return True


async def never_ends(reader: Reader, writer: Writer, tokens: int) -> bool:
    """Headers, then not one body byte."""
    writer.write(SSE_HEAD)
    await writer.drain()
    await _hold(reader)
    return False


async def short_content_length(reader: Reader, writer: Writer, tokens: int) -> bool:
    """Announces the whole stream's length, sends half of it, closes."""
    body = sse_body(tokens)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body[: len(body) // 2])
    await writer.drain()
    return False


async def close_delimited(reader: Reader, writer: Writer, tokens: int) -> bool:
    """HTTP/1.0: no length, no chunking; the body ends when the server closes. Correct."""
    writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + sse_body(tokens))
    await writer.drain()
    return False


MODES: dict[str, Mode] = {f.__name__: f for f in (
    ok, truncated_chunk, bad_chunk_size, garbage_status, empty_reply, garbage_data, junk_lines,
    error_binary_body, half_close, half_close_before_response, huge_line, huge_event, huge_body,
    huge_header, endless_headers, slow_headers, never_ends, short_content_length,
    close_delimited)}


def _max_tokens(body: bytes) -> int:
    """The tokens asked for; negative for a non-streaming request."""
    try:
        obj = json.loads(body)
        n = obj.get("max_tokens") or obj.get("max_completion_tokens")
        n = int(n) if n else 8
        return n if obj.get("stream", True) else -n
    except (ValueError, AttributeError, TypeError):
        return 8


def _plain(status: str, body: bytes) -> bytes:
    return (b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (status.encode(), len(body)) + body)


async def serve_connection(reader: Reader, writer: Writer, default_mode: str) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            method, path = [*lines[0].split(" "), "", ""][:2]
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            body = await reader.readexactly(length) if length else b""
            if method == "GET" and path.rstrip("/") == "/v1/models":
                models = {"object": "list", "data": [{"id": MODEL, "object": "model"}]}
                writer.write(_plain("200 OK", json.dumps(models).encode()))
                await writer.drain()
                continue
            if method != "POST":
                writer.write(_plain("404 Not Found", b'{"error": "not found"}'))
                await writer.drain()
                continue
            found = _FAULT.search(body)
            mode = found.group(1).decode() if found else default_mode
            if not await MODES.get(mode, ok)(reader, writer, _max_tokens(body)):
                return
    except (ConnectionError, asyncio.IncompleteReadError):
        pass  # the client gave up on a faulty answer: expected
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def serve(port: int, default_mode: str) -> None:
    server = await asyncio.start_server(
        lambda r, w: serve_connection(r, w, default_mode), "127.0.0.1", port,
        limit=1 << 20)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


class FaultServer:
    """The fault server in a subprocess; ``with FaultServer() as url`` gives its base URL.

    ``huge_mb``: the size of what the ``huge_*`` modes send (at most; they stop once the client
    has gone)."""

    def __init__(self, default_mode: str = "ok", *, huge_mb: int = 50) -> None:
        if default_mode not in MODES:
            raise ValueError(f"unknown fault mode {default_mode!r}; one of {sorted(MODES)}")
        self.default_mode = default_mode
        self.huge_mb = huge_mb
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> str:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--mode", self.default_mode,
             "--huge-mb", str(self.huge_mb)],
            stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.__exit__()
            raise RuntimeError("fault server did not start")
        self.url = f"http://127.0.0.1:{int(line)}"  # printed once it listens
        return self.url

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--mode", default="ok", choices=sorted(MODES))
    parser.add_argument("--huge-mb", type=int, default=50)
    args = parser.parse_args()
    HUGE_LINE_BYTES = args.huge_mb << 20
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.mode))
