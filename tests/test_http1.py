"""The hot path's HTTP/1.1 client (slobench.client.http1) against real sockets: a raw asyncio
server in the test answers each request with bytes the test chooses, so framing, keep-alive,
early closes and interim responses are exact; TLS against aiohttp's server with a certificate made
by openssl."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web

from slobench.client.http1 import (
    MAX_HEADER_BYTES,
    BadResponse,
    ConnectFailed,
    ConnectionLost,
    ConnectionPool,
)

Answer = Callable[[int], list[bytes | float]]  # request number -> bytes to send, pauses (s)

REQUEST = b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}"


class Sink:
    """Collects what the connection hands over; ``done_after``: finish early after that many
    body reads."""

    def __init__(self, done_after: int | None = None) -> None:
        self.status: int | None = None
        self.body: list[bytes] = []
        self.times: list[float] = []
        self.ended = False
        self.done_after = done_after

    def on_headers(self, status: int, now: float) -> None:
        self.status = status

    def on_body(self, data: bytes, now: float) -> bool:
        self.body.append(data)
        self.times.append(now)
        return self.done_after is not None and len(self.body) >= self.done_after

    def on_end(self, now: float) -> None:
        self.ended = True


class RawServer:
    """Reads each request to its end (Content-Length), then writes ``answer(n)``: bytes, and
    floats as pauses. ``close_after``: close the socket after the answer."""

    def __init__(self, answer: Answer, close_after: bool = False) -> None:
        self.answer = answer
        self.close_after = close_after
        self.connections = 0
        self.requests = 0
        self.heads: list[bytes] = []

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                n = self.requests
                self.requests += 1
                for part in self.answer(n):
                    if isinstance(part, float):
                        await asyncio.sleep(part)
                    else:
                        writer.write(part)
                        await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def chunked(*parts: bytes) -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body + b"0\r\n\r\n"


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 20))


def make_pool(url: str, **kw: object) -> ConnectionPool:
    return ConnectionPool(url, time.perf_counter, **kw)  # type: ignore[arg-type]


def test_framings_and_keep_alive() -> None:
    answers = [
        [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", 0.02, b"lo"],
        [chunked(b"data: 1\n\n", b"data: 2\n\n")],
        [b"HTTP/1.1 100 Continue\r\n\r\n", chunked(b"after continue")],
    ]

    async def main() -> None:
        server = RawServer(lambda n: answers[n])
        async with server as url:
            pool = make_pool(url)
            sinks = []
            for _ in answers:
                conn = await pool.acquire()
                sink = Sink()
                await conn.exchange(REQUEST, sink)
                sinks.append(sink)
            assert [s.status for s in sinks] == [200, 200, 200]
            assert all(s.ended for s in sinks)
            assert b"".join(sinks[0].body) == b"hello" and len(sinks[0].body) == 2
            assert sinks[0].times[1] - sinks[0].times[0] >= 0.015  # stamped per read
            # HTTP chunks that came in one read are handed over together: one SSE parse
            assert b"".join(sinks[1].body) == b"data: 1\n\ndata: 2\n\n"
            assert len(sinks[1].body) == 1
            assert b"".join(sinks[2].body) == b"after continue"
            assert server.connections == 1 and conn.served == 3  # one connection throughout
            pool.close()

    run(main())


def test_close_delimited_body_and_connection_close() -> None:
    async def main() -> None:
        server = RawServer(lambda n: [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall ",
                                      b"until close"], close_after=True)
        async with server as url:
            pool = make_pool(url)
            for _ in range(2):
                sink = Sink()
                await (await pool.acquire()).exchange(REQUEST, sink)
                assert sink.ended and b"".join(sink.body) == b"all until close"
            assert server.connections == 2  # a closed connection is never reused
            assert pool.open_connections == 0
            pool.close()

    run(main())


def test_early_finish_drains_the_rest_and_reuses_the_connection() -> None:
    async def main() -> None:
        # [DONE]-style: the sink has all it needs before the final empty chunk arrives
        body = b"%x\r\n%s\r\n" % (6, b"done!\n")
        server = RawServer(lambda n: [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                                      body, 0.05, b"0\r\n\r\n"])
        async with server as url:
            pool = make_pool(url)
            conn = await pool.acquire()
            sink = Sink(done_after=1)
            await conn.exchange(REQUEST, sink)
            assert sink.body and not sink.ended  # returned before the message's end
            await asyncio.sleep(0.3)  # the terminator arrives; the connection goes back
            again = await pool.acquire()
            assert again is conn
            await again.exchange(REQUEST, Sink())
            assert server.connections == 1
            pool.close()

    run(main())


@pytest.mark.parametrize(("answer", "failure", "before"), [
    ([], ConnectionLost, True),  # closed without a byte: a stale keep-alive looks like this
    ([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"], ConnectionLost, False),
    ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"],
     ConnectionLost, False),
    ([b"HTTP/1.1 200 OK\r\nContent-"], ConnectionLost, False),
    ([b"\x00\x01garbage\r\n\r\n"], BadResponse, None),
    ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"], BadResponse, None),
    ([b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES + 10)], BadResponse, None),
])
def test_failures_are_typed(answer: list[bytes], failure: type[Exception],
                            before: bool | None) -> None:
    async def main() -> None:
        async with RawServer(lambda n: answer, close_after=True) as url:
            pool = make_pool(url)
            conn = await pool.acquire()
            sink = Sink()
            with pytest.raises(failure) as info:
                await conn.exchange(REQUEST, sink)
            if before is not None:
                assert info.value.before_response is before  # type: ignore[attr-defined]
            assert "\n" not in str(info.value)
            assert conn.closed and pool.open_connections == 0
            pool.close()

    run(main())


def test_cancelled_exchange_drops_its_connection() -> None:
    async def main() -> None:
        server = RawServer(lambda n: [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                                      5.0])
        async with server as url:
            pool = make_pool(url)
            conn = await pool.acquire()
            task = asyncio.ensure_future(conn.exchange(REQUEST, Sink()))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert conn.closed
            assert await pool.acquire() is not conn
            pool.close()

    run(main())


def test_connect_refused(free_port_refused: str) -> None:
    async def main() -> None:
        pool = make_pool(free_port_refused)
        with pytest.raises(ConnectFailed, match="cannot connect"):
            await pool.acquire()

    run(main())


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for i in range(3):
            await resp.write(b"data: %d\n\n" % i)
        await resp.write_eof()
        return resp

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/x", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
        await site.start()
        port = runner.addresses[0][1]
        try:
            trusting = ssl.create_default_context(cafile=str(cert))
            pool = make_pool(f"https://localhost:{port}", ssl_context=trusting)
            for _ in range(2):
                sink = Sink()
                await (await pool.acquire()).exchange(REQUEST, sink)
                assert sink.status == 200 and sink.ended
                assert b"".join(sink.body) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
            assert pool.open_connections == 1
            pool.close()
            # the default context does not trust a self-signed certificate: one clear failure
            strict = make_pool(f"https://localhost:{port}")
            with pytest.raises(ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"):
                await strict.acquire()
        finally:
            await runner.cleanup()

    run(main())


def test_backend_request_line_headers_and_query() -> None:
    """What the OpenAI backend writes: the target URL's path prefix and query on the request
    line, one Host (the user's wins), slobench's own Content-Length, then the JSON body."""
    from slobench.client.backends.openai import OpenAIBackend
    from slobench.client.backends.presets import get_preset
    from slobench.client.result import RequestResult
    from slobench.clock import RunClock
    from slobench.errors import UserError

    sse = chunked(b'data: {"choices":[{"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\n',
                  b"data: [DONE]\n\n")

    async def main() -> None:
        server = RawServer(lambda n: [sse])
        async with server as url:
            clock = RunClock()
            pool = ConnectionPool(url, clock.now)
            for target, headers in [(url + "/proxy/v1?api-version=2024-06-01", None),
                                    (url, {"Host": "gateway.example", "X-Team": "a b"})]:
                backend = OpenAIBackend(target, model="m", preset=get_preset("generic"),
                                        headers=headers)
                result = RequestResult("r", "c", "app", 0.0, 1)
                await backend.send(pool, backend.prepare("hello", 4), result, clock)
                assert result.status == "ok" and result.output_tokens == 1, result.error
            pool.close()
        first, second = (h.decode().split("\r\n") for h in server.heads)
        assert first[0] == "POST /proxy/v1/chat/completions?api-version=2024-06-01 HTTP/1.1"
        assert second[0] == "POST /v1/chat/completions HTTP/1.1"
        hosts = [line for line in second if line.lower().startswith("host:")]
        assert hosts == ["Host: gateway.example"] and "X-Team: a b" in second
        for head in (first, second):
            assert sum(line.lower().startswith("content-length:") for line in head) == 1
        with pytest.raises(UserError, match="--header"):
            OpenAIBackend(url, model="m", preset=get_preset("generic"),
                          headers={"X-Bad": "a\r\nInjected: 1"})
        with pytest.raises(UserError, match="--header"):
            OpenAIBackend(url, model="m", preset=get_preset("generic"),
                          headers={"Content-Length": "5"})
        with pytest.raises(UserError, match="percent-encode"):
            OpenAIBackend(url + "/v1?a=b c", model="m", preset=get_preset("generic"))

    run(main())


def test_idle_connection_closed_by_the_server_is_not_handed_out() -> None:
    # llama-server style: a keep-alive answer, then the server closes the idle connection
    async def main() -> None:
        server = RawServer(lambda n: [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
                           close_after=True)
        async with server as url:
            pool = make_pool(url)
            first = await pool.acquire()
            await first.exchange(REQUEST, Sink())
            await asyncio.sleep(0.2)  # the server's FIN arrives
            assert first.closed
            second = await pool.acquire()
            assert second is not first
            sink = Sink()
            await second.exchange(REQUEST, sink)
            assert sink.ended and server.connections == 2
            pool.close()

    run(main())
