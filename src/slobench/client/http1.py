"""The request hot path's HTTP/1.1 client: one asyncio protocol per connection, responses parsed
by httptools (llhttp, in C) as bytes arrive, and the body handed to the caller's sink inside
``data_received``, stamped with that read's arrival time.

Why not aiohttp here (it still serves everything off the hot path: probing, metrics, tokenize):
aiohttp hands each network read to the reading task through a future, a task wake-up and several
coroutine frames, and a streamed token is one network read. Here a request's task sleeps from the
moment its bytes are written until its answer is complete; per read there is one Python call into
the sink. Measured side by side (benchmarks/measurement_accuracy.py, docs/performance.md).

What a load generator needs, and nothing else: keep-alive with a pool per client process (no
limit: a closed-loop user holds one connection), requests written in one ``write`` the moment they
are due, Content-Length, chunked and close-delimited bodies, TLS, bounded header size, and typed
failures (:class:`HTTPFailure`) that map onto the Records' statuses. Redirects are not followed
(a benchmark should name the final URL), no proxies, no compression (no Accept-Encoding is sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit

import httptools

__all__ = [
    "MAX_HEADER_BYTES",
    "BadResponse",
    "ConnectFailed",
    "ConnectTimeout",
    "Connection",
    "ConnectionLost",
    "ConnectionPool",
    "HTTPFailure",
    "ResponseSink",
]

# Longest response head (status line and headers) accepted; aiohttp's default limits are 8 KiB a
# line. A server sending headers without end is a protocol error, not a reason to buffer on.
MAX_HEADER_BYTES = 64 * 1024
# After a sink has what it needs (an SSE stream's [DONE]), the rest of the message (usually the
# final empty chunk) is still read so the connection can be used again; but only this long and
# this much, or the connection is dropped instead.
DRAIN_S = 1.0
DRAIN_BYTES = 64 * 1024
DNS_TTL_S = 300.0


class HTTPFailure(Exception):
    """A request that failed below the API layer. ``status`` is the Records status it maps to."""

    status = "disconnect"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConnectFailed(HTTPFailure):
    status = "connect_error"


class ConnectTimeout(HTTPFailure):
    status = "timeout"


class ConnectionLost(HTTPFailure):
    """The connection closed before the response was complete. ``before_response``: not one byte
    of a response had arrived, so the server never began to answer (a stale keep-alive
    connection, if the connection had served requests before)."""

    status = "disconnect"

    def __init__(self, message: str, *, before_response: bool) -> None:
        super().__init__(message)
        self.before_response = before_response


class BadResponse(HTTPFailure):
    status = "protocol_error"


class ResponseSink(Protocol):
    """Receives one response as it arrives. Called inside the connection's ``data_received``
    (``now``: the run-clock time of that read), so every method must be quick and must not raise.
    """

    def on_headers(self, status: int, now: float) -> None:
        """The status line and all headers are in (1xx interim responses are skipped)."""

    def on_body(self, data: bytes, now: float) -> bool:
        """Body bytes (transfer coding removed). True: the sink has all it needs; the request
        completes now and the rest of the message is drained in the background."""
        ...

    def on_end(self, now: float) -> None:
        """The body is complete: the message ended (or, without a length, the server closed)."""


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; serves one exchange at a time."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._now = pool.now
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.served = 0  # exchanges completed: a connection that served one is a pooled one
        self.closed = False
        self._sink: ResponseSink | None = None
        self._waiter: asyncio.Future[None] | None = None  # the request's task waits on it
        self._t = 0.0  # arrival time of the read being parsed
        self._got_bytes = False
        self._head_bytes = 0
        self._headers_done = False
        self._framed = False  # Content-Length or chunked: an early close is a truncation
        self._interim = False  # a 1xx response is being parsed
        self._draining = False
        self._drained = 0
        self._drain_timer: asyncio.TimerHandle | None = None
        # body pieces parsed from the read at hand (one per HTTP chunk), handed to the sink
        # together: one SSE parse per network read, however many chunks it carried
        self._pieces: list[bytes] = []

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:  # asyncio and uvloop set it already; cheap to be sure
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self._sink is None and not self._draining:  # bytes nobody asked for
            self.abort()
            return
        self._t = self._now()
        self._got_bytes = True
        if self._draining:
            self._drained += len(data)
            if self._drained > DRAIN_BYTES:
                self.abort()
                return
        in_head = not self._headers_done
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._finish(BadResponse("bad HTTP response: the server switched protocols"))
            return
        except httptools.HttpParserError as exc:
            self._pieces.clear()
            self._finish(BadResponse(f"bad HTTP response: {exc}"))
            return
        if self._pieces:
            self._deliver()
        if in_head and not self._headers_done:  # (a read that ends the head may carry body)
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEADER_BYTES:
                self._finish(BadResponse(f"bad HTTP response: headers longer than "
                                       f"{MAX_HEADER_BYTES >> 10} KiB"))

    def eof_received(self) -> bool | None:
        if self._sink is None:  # idle: never hand it out again (connection_lost follows)
            self.closed = True
            self._pool._forget(self)
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool._forget(self)
        self._stop_drain()
        if self._sink is None:
            return
        if self._headers_done and not self._framed and exc is None:  # the body ends at close
            self._sink.on_end(self._now())
            self._finish()
            return
        if not self._got_bytes:
            why = f": {exc}" if exc else ""
            self._finish(ConnectionLost(f"connection lost: the server closed the connection "
                                      f"before answering{why}", before_response=True))
        else:
            where = "body" if self._headers_done else "response headers"
            why = f" ({exc})" if exc else ""
            self._finish(ConnectionLost(f"connection lost: closed in the middle of the "
                                      f"{where}{why}", before_response=False))

    # -- httptools callbacks -----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._framed:
            lname = name.lower()
            if lname == b"content-length" or (lname == b"transfer-encoding"
                                              and b"chunked" in value.lower()):
                self._framed = True

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # 100 Continue and other interim responses: the real one follows
            self._interim = True
            self._framed = False
            return
        self._headers_done = True
        if self._sink is not None:
            self._sink.on_headers(status, self._t)

    def on_body(self, body: bytes) -> None:
        self._pieces.append(body)

    def _deliver(self) -> None:
        pieces = self._pieces
        body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        sink = self._sink
        if sink is not None and sink.on_body(body, self._t):
            self._finish()
            self._start_drain()

    def on_message_complete(self) -> None:
        if self._pieces:
            self._deliver()
        if self._interim:
            self._interim = False
            self._head_bytes = 0
            return
        keep_alive = self._parser.should_keep_alive()
        if self._sink is not None:
            self._sink.on_end(self._t)
            self._finish()
        self._stop_drain()
        self._draining = False
        self._headers_done = self._framed = False
        if keep_alive and not self.closed:
            self.served += 1
            self._pool._release(self)
        else:
            self.abort()

    # -- the exchange ------------------------------------------------------------------------

    async def exchange(self, request: bytes, sink: ResponseSink) -> None:
        """Write ``request`` (head and body) and wait until ``sink`` has the response. Raises
        :class:`HTTPFailure`; cancelled, it drops the connection (the response is unfinished)."""
        assert self._sink is None and self.transport is not None
        self._sink = sink
        self._got_bytes = False
        self._head_bytes = 0
        self._headers_done = self._framed = False
        waiter = self._waiter = self._pool.loop.create_future()
        try:
            if self.transport.is_closing():
                raise ConnectionResetError("the connection was closing")
            self.transport.write(request)
        except (OSError, RuntimeError) as exc:  # closed under us: as a stale keep-alive
            self._sink = self._waiter = None
            self.abort()
            raise ConnectionLost(f"connection lost: {exc}", before_response=True) from None
        try:
            await waiter
        except BaseException:
            if self._sink is not None:  # cancelled mid-response: nobody reads the rest
                self._sink = None
                self._waiter = None
                self.abort()
            raise

    def _finish(self, failure: HTTPFailure | None = None) -> None:
        """The exchange is over: wake its task, with ``failure`` (then the connection is
        dropped) or without."""
        self._sink = None
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            if failure is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(failure)
        if failure is not None:
            self.abort()

    def _start_drain(self) -> None:
        self._draining = True
        self._drained = 0
        self._drain_timer = self._pool.loop.call_later(DRAIN_S, self.abort)

    def _stop_drain(self) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None

    def abort(self) -> None:
        self._draining = False
        self._stop_drain()
        if not self.closed:
            self.closed = True
            self._pool._forget(self)
            if self.transport is not None:
                self.transport.abort()


class ConnectionPool:
    """Keep-alive connections to the origin (scheme, host, port) of ``url``, for one event loop.
    There is no limit on connections: concurrency is the caller's (a closed-loop user holds one)."""

    def __init__(self, url: str, now: Callable[[], float], *, connect_timeout_s: float = 10.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.host = parts.hostname
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        default_port = self.port == (443 if self.tls else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if default_port else f"{host}:{self.port}"
        self.now = now
        self.connect_timeout_s = connect_timeout_s
        self._ssl = (ssl_context or ssl.create_default_context()) if self.tls else None
        self.loop = asyncio.get_running_loop()
        self._idle: list[Connection] = []  # most recently used last: reused first
        self._open: set[Connection] = set()
        self._addresses: list[tuple[int, tuple[object, ...]]] = []
        self._resolved_at = -DNS_TTL_S

    async def acquire(self) -> Connection:
        """An idle connection (the most recently used), else a new one. Raises
        :class:`ConnectFailed` or :class:`ConnectTimeout`."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return await self._connect()

    async def _connect(self) -> Connection:
        where = f"{'https' if self.tls else 'http'}://{self.host_header}"
        try:
            conn = await asyncio.wait_for(self._open_connection(), self.connect_timeout_s)
        except (TimeoutError, asyncio.TimeoutError):  # distinct types before 3.11
            raise ConnectTimeout(f"timed out connecting to {where} after "
                                 f"{self.connect_timeout_s:g} s") from None
        except OSError as exc:
            self._resolved_at = -DNS_TTL_S  # try the name again next time
            raise ConnectFailed(f"cannot connect to {where}: {exc}") from None
        self._open.add(conn)
        return conn

    async def _open_connection(self) -> Connection:
        """A connection to the first of the name's addresses that answers."""
        error: OSError | None = None
        for family, address in await self._resolve():
            try:
                _, conn = await self.loop.create_connection(
                    lambda: Connection(self), host=str(address[0]), port=self.port,
                    family=family, ssl=self._ssl, server_hostname=self.host if self.tls else None)
                return conn
            except OSError as exc:
                error = exc
        raise error or OSError(f"no address for {self.host}")

    async def _resolve(self) -> list[tuple[int, tuple[object, ...]]]:
        if time.monotonic() - self._resolved_at > DNS_TTL_S or not self._addresses:
            infos = await self.loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
            self._addresses = [(family, addr) for family, _, _, _, addr in infos]
            self._resolved_at = time.monotonic()
        return self._addresses

    def _release(self, conn: Connection) -> None:
        if not conn.closed and conn in self._open:
            self._idle.append(conn)

    def _forget(self, conn: Connection) -> None:
        self._open.discard(conn)

    def close(self) -> None:
        """Drop every connection, idle or busy (a busy one's request fails as disconnected)."""
        self._idle.clear()
        for conn in list(self._open):
            conn.abort()
        self._open.clear()

    @property
    def open_connections(self) -> int:
        return len(self._open)
