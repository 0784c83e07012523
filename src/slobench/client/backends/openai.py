"""OpenAI-compatible chat completions and completions, streaming (SSE) and not.

Token counting for streams (the Records' ``token_count_source``):
- ``usage_deltas``: every chunk carried cumulative usage (vLLM/SGLang continuous_usage_stats), so a
  chunk's token count is the difference of consecutive ``completion_tokens``; exact.
- ``final_usage_spread``: only a final usage block; its ``completion_tokens`` is spread over the
  chunks that carried text, in proportion to their text length, at least one token per chunk.
- ``chunks``: no usage at all; one token per chunk that carried text (an estimate).
A chunk carrying k tokens puts k entries, all at its arrival time, into ``token_times``.
"""

from __future__ import annotations

import asyncio
import base64
import math
import re
import weakref
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp
import orjson

from slobench.client.backends.presets import EnginePreset
from slobench.client.result import RequestResult
from slobench.client.sse import MAX_EVENT_BYTES, SSEError, SSEParser
from slobench.clock import RunClock
from slobench.errors import UserError

ENDPOINTS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
# a request that failed before any response on a connection from the pool is sent again, at most
# this often (a retry can take another pooled connection the server is closing at that moment)
STALE_RETRIES = 3


def normalize_base_url(url: str) -> str:
    """Accept ``http://h:8000``, ``http://h:8000/`` or ``http://h:8000/v1``; return the root,
    without any credentials (see ``request_headers``)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(
            f"--target: '{strip_credentials(url)}' is not an http(s) URL; give one like "
            "http://127.0.0.1:8000"
        )
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[:-3]
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, path, "", ""))


_SECRET_PARAM = re.compile(r"key|token|secret|pass|auth|sig|cred|session", re.IGNORECASE)


def strip_credentials(url: str) -> str:
    """``url`` fit to write down: no user:password@, and the values of query parameters whose
    names look secret (api_key, token, sig, ...) replaced by ``REDACTED``."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[1] if "@" in parts.netloc else parts.netloc
    query = parts.query
    if query:
        query = "&".join(
            f"{k}=REDACTED" if _SECRET_PARAM.search(k) else (f"{k}={v}" if sep else k)
            for k, sep, v in (item.partition("=") for item in query.split("&")))
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def request_headers(url: str, api_key: str | None, headers: dict[str, str] | None
                    ) -> dict[str, str]:
    """Headers for every request to the target: the API key as a Bearer token; without one,
    credentials written in the URL (user:password@host) as HTTP Basic auth."""
    out = {"Content-Type": "application/json", **(headers or {})}
    if api_key:
        out["Authorization"] = f"Bearer {api_key}"
    else:
        parts = urlsplit(url.strip())
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            out["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    return out


def spread(total: int, weights: list[int]) -> list[int]:
    """Split ``total`` tokens over chunks: at least one per chunk (while tokens last), the rest in
    proportion to ``weights`` by largest remainder. Sums to ``total`` exactly."""
    n = len(weights)
    if n == 0 or total <= 0:
        return [0] * n
    if total <= n:
        return [1] * total + [0] * (n - total)
    extra = total - n
    wsum = sum(weights)
    if wsum <= 0:
        weights, wsum = [1] * n, n
    shares = [extra * w / wsum for w in weights]
    counts = [1 + math.floor(s) for s in shares]
    left = total - sum(counts)
    order = sorted(range(n), key=lambda i: shares[i] - math.floor(shares[i]), reverse=True)
    for i in order[:left]:
        counts[i] += 1
    return counts


class OpenAIBackend:
    """Adapter for ``/v1/chat/completions`` (endpoint="chat") and ``/v1/completions``."""

    def __init__(self, base_url: str, *, model: str, preset: EnginePreset, endpoint: str = "chat",
                 stream: bool = True, api_key: str | None = None,
                 extra_body: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        if endpoint not in ENDPOINTS:
            raise UserError(f"--endpoint: unknown '{endpoint}'; choose chat or completions")
        self.name = f"openai-{endpoint}"
        self.endpoint = endpoint
        self.base_url = normalize_base_url(base_url)
        self.url = self.base_url + ENDPOINTS[endpoint]
        self.model = model
        self.preset = preset
        self.stream = stream
        self.extra_body = dict(extra_body or {})
        self.headers = request_headers(base_url, api_key, headers)
        if stream and preset.close_after_stream:
            self.headers.setdefault("Connection", "close")

    # -- request -----------------------------------------------------------------------------

    def build_body(self, prompt: str | list[dict[str, str]], output_tokens: int
                   ) -> dict[str, Any]:
        """``prompt``: the text, or (chat) the whole message list of a session's turn."""
        p = self.preset
        body: dict[str, Any] = {"model": self.model, "stream": self.stream}
        if self.endpoint == "chat":
            body["messages"] = (prompt if isinstance(prompt, list)
                                else [{"role": "user", "content": prompt}])
            body[p.max_tokens_field] = output_tokens
        else:
            body["prompt"] = prompt
            body["max_tokens"] = output_tokens
        if p.ignore_eos:
            body["ignore_eos"] = True
        if p.min_tokens:
            body["min_tokens"] = output_tokens
        if self.stream and p.include_usage:
            opts: dict[str, Any] = {"include_usage": True}
            if p.continuous_usage:
                opts["continuous_usage_stats"] = True
            body["stream_options"] = opts
        body.update(p.extra)
        body.update(self.extra_body)  # the user's fields win
        return body

    def prepare(self, prompt: str | list[dict[str, str]], output_tokens: int) -> bytes:
        return orjson.dumps(self.build_body(prompt, output_tokens))

    # -- response ----------------------------------------------------------------------------

    async def send(self, session: aiohttp.ClientSession, payload: bytes, result: RequestResult,
                   clock: RunClock) -> None:
        try:
            result.sent_s = clock.now()
            async with await self._post(session, payload, result) as resp:
                result.last_io_s = clock.now()  # the response's headers are in
                _watch_connection(resp)
                result.http_status = resp.status
                if resp.status >= 400:
                    body = await _read_error_body(resp)
                    result.fail("http_error", f"HTTP {resp.status}: {body}", clock.now())
                    return
                if self.stream:
                    await self._read_stream(resp, result, clock)
                else:
                    await self._read_whole(resp, result, clock)
        except asyncio.CancelledError:
            result.fail("cancelled", "cancelled before completion", clock.now())
            raise
        except aiohttp.ClientConnectorError as exc:
            result.fail("connect_error", f"cannot connect to {self.base_url}: {exc.os_error}",
                        clock.now())
        except (TimeoutError, asyncio.TimeoutError) as exc:  # distinct types before 3.11
            # aiohttp names the stall (sock_read) and connect timeouts; a bare one is the total
            what = str(exc) or "the whole request took longer than its time limit"
            result.fail("timeout", f"timed out: {what}", clock.now())
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError,
                aiohttp.ClientOSError, ConnectionError) as exc:
            result.fail("disconnect", f"connection lost: {type(exc).__name__}: {exc}",
                        clock.now())
        except (aiohttp.ClientResponseError, aiohttp.http_exceptions.HttpProcessingError) as exc:
            # the second: a framing error, as aiohttp's pure-Python parser raises it mid-body
            result.fail("protocol_error", f"bad HTTP response: {exc.message}", clock.now())
        except aiohttp.ClientError as exc:
            result.fail("disconnect", f"{type(exc).__name__}: {exc}", clock.now())
        finally:
            if result.error is not None:
                result.error = _one_line(result.error)

    async def _post(self, session: aiohttp.ClientSession, payload: bytes,
                    result: RequestResult) -> aiohttp.ClientResponse:
        """POST ``payload``; the response once its headers are in.

        A server may close an idle keep-alive connection just as the client sends on it (uvicorn
        after 5 s, nginx, llama-server after every stream): the request then fails before any
        response arrives, through no fault of the server's. Only then, when the connection had
        come from the pool, is the request sent again (``result.retries``); at most
        ``STALE_RETRIES`` times, and never after a failure on a new connection, so a server that
        really drops requests shows as errors. Its time still counts from the scheduled time."""
        while True:
            attempt = None
            reused = _idle_in_pool(session)
            if reused is None:  # an aiohttp that keeps its pool elsewhere: ask its tracing hook
                if _REUSE_TRACE not in session.trace_configs:
                    session.trace_configs.append(_REUSE_TRACE)
                attempt = _Attempt()
            try:
                return await session.post(self.url, data=payload, headers=self.headers,
                                          trace_request_ctx=attempt)
            except aiohttp.ClientConnectorError:  # could not connect: nothing to retry
                raise
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if attempt is not None:
                    reused = attempt.reused
                partial = (isinstance(exc, aiohttp.ServerDisconnectedError)
                           and not isinstance(exc.message, str))  # part of a response came
                if not reused or partial or result.retries >= STALE_RETRIES:
                    raise
                result.retries += 1

    async def _read_whole(self, resp: aiohttp.ClientResponse, result: RequestResult,
                          clock: RunClock) -> None:
        raw = await _read_capped(resp.content, MAX_EVENT_BYTES)
        now = clock.now()
        if raw is None:
            result.fail("protocol_error",
                        f"response body longer than {MAX_EVENT_BYTES >> 20} MiB (the limit)", now)
            return
        try:
            obj = orjson.loads(raw)
            choice = obj["choices"][0]
            if self.endpoint == "chat":
                msg = choice.get("message") or {}
                text = msg.get("content") or ""
            else:
                text = choice.get("text") or ""
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError) as exc:
            result.fail("protocol_error", f"unparseable response body: {exc}: {raw[:200]!r}", now)
            return
        result.done_s = now
        if result.answer is not None:
            result.answer.append(text)
        result.first_token_s = now  # TTFT equals E2E without streaming (an upper bound)
        result.first_answer_s = now if text else None
        usage = obj.get("usage") or {}
        if isinstance(usage.get("completion_tokens"), int):
            result.output_tokens = usage["completion_tokens"]
            result.token_count_source = "non_streaming"
        result.reasoning_tokens = _reasoning_from_usage(usage) or 0
        if isinstance(usage.get("prompt_tokens"), int):
            result.input_tokens = usage["prompt_tokens"]
        result.cached_tokens = _cached_from_usage(usage)
        result.status = "ok"

    async def _read_stream(self, resp: aiohttp.ClientResponse, result: RequestResult,
                           clock: RunClock) -> None:
        parser = SSEParser()
        chat = self.endpoint == "chat"
        # per chunk: arrival time, answer chars, reasoning chars, cumulative completion_tokens
        times: list[float] = []
        answer_chars: list[int] = []
        reasoning_chars: list[int] = []
        cumulative: list[int | None] = []
        final_usage: dict[str, Any] | None = None
        saw_done = saw_finish = False
        failure: tuple[str, str] | None = None
        keep = result.answer
        reasoning_fields = self.preset.reasoning_fields

        def handle(events: list[bytes], now: float) -> bool:
            """Returns True when the stream is over (DONE, or a fatal problem)."""
            nonlocal final_usage, saw_done, saw_finish, failure
            for data in events:
                if data == b"[DONE]":
                    saw_done = True
                    return True
                try:
                    obj = orjson.loads(data)
                except orjson.JSONDecodeError:
                    failure = ("protocol_error", f"malformed SSE data: {data[:120]!r}")
                    return True
                if not isinstance(obj, dict):
                    failure = ("protocol_error", f"SSE data is not an object: {data[:120]!r}")
                    return True
                if obj.get("error") and not obj.get("choices"):
                    err = obj["error"]
                    msg = err.get("message", err) if isinstance(err, dict) else err
                    failure = ("http_error", f"error in stream: {msg}")
                    return True
                usage = obj.get("usage")
                a_len = r_len = 0
                for ch in obj.get("choices") or ():
                    if chat:
                        delta = ch.get("delta") or {}
                        text = delta.get("content")
                        for name in reasoning_fields:
                            reasoning = delta.get(name)
                            if reasoning:
                                r_len += len(reasoning)
                    else:
                        text = ch.get("text")
                    if text:
                        a_len += len(text)
                        if keep is not None:
                            keep.append(text)
                    if ch.get("finish_reason"):
                        saw_finish = True
                cum = usage.get("completion_tokens") if isinstance(usage, dict) else None
                if isinstance(usage, dict):
                    final_usage = usage
                if a_len or r_len or cum is not None:
                    times.append(now)
                    answer_chars.append(a_len)
                    reasoning_chars.append(r_len)
                    cumulative.append(cum if isinstance(cum, int) else None)
            return False

        content = resp.content
        over = False
        try:
            while not over:
                chunk = await content.readany()
                now = result.last_io_s = clock.now()
                if not chunk:
                    over = handle(parser.close(), now)
                    break
                over = handle(parser.feed(chunk), now)
        except SSEError as exc:  # a line without end: stop reading rather than buffer it all
            failure = ("protocol_error", str(exc))
        finally:  # tokens that arrived before a failure are measured too
            result.done_s = clock.now()
            self._count_tokens(result, times, answer_chars, reasoning_chars, cumulative,
                               final_usage)
        if failure:
            result.status, result.error = failure[0], failure[1][:500]
        elif not saw_done and not saw_finish:
            result.status, result.error = "disconnect", "stream ended before [DONE]"
        else:
            result.status = "ok"

    @staticmethod
    def _count_tokens(result: RequestResult, times: list[float], answer_chars: list[int],
                      reasoning_chars: list[int], cumulative: list[int | None],
                      final_usage: dict[str, Any] | None) -> None:
        n = len(times)
        weights = [a + r for a, r in zip(answer_chars, reasoning_chars, strict=True)]
        n_text = n - weights.count(0)
        usage = final_usage or {}
        usage_reasoning = _reasoning_from_usage(usage)
        total_usage = usage.get("completion_tokens")
        per_chunk: list[int] | None  # None: one token per text chunk
        # usage on every text chunk, and not just one final block => exact per-chunk deltas
        if n_text and n > 1 and all(c is not None for c, w in zip(cumulative, weights,
                                                                    strict=True) if w):
            per_chunk, prev = [], 0
            for c in cumulative:
                c = prev if c is None else c
                per_chunk.append(max(c - prev, 0))
                prev = max(prev, c)
            source = "usage_deltas"
        elif isinstance(total_usage, int):
            per_chunk = None  # the usage confirms one token per text chunk, unless:
            if total_usage != n_text:
                text_chunks = [i for i in range(n) if weights[i]]
                per_chunk = [0] * n
                counts = spread(total_usage, [weights[i] for i in text_chunks])
                for i, k in zip(text_chunks, counts, strict=True):
                    per_chunk[i] = k
            source = "final_usage_spread"
        else:
            per_chunk = None
            source = "chunks" if n_text else "none"
        if per_chunk is None:  # one token per text chunk: no per-token list to build
            token_times = (times if n_text == n
                           else [t for t, w in zip(times, weights, strict=True) if w])
            per_chunk = [1 if w else 0 for w in weights] if n_text != n else None
        else:
            token_times = []
            for t, k in zip(times, per_chunk, strict=True):
                if k == 1:
                    token_times.append(t)
                elif k:
                    token_times.extend([t] * k)
        first_token = first_answer = None
        reasoning = 0
        if token_times:
            first_token = token_times[0]
            counted = per_chunk or [1] * n
            first_answer = next((times[i] for i in range(n) if answer_chars[i] and counted[i]),
                                None)
            if any(reasoning_chars):
                for k, a, r in zip(counted, answer_chars, reasoning_chars, strict=True):
                    if k and r:
                        reasoning += k if not a else round(k * r / (a + r))
        result.token_times = token_times
        result.output_tokens = len(token_times)
        result.reasoning_tokens = usage_reasoning if usage_reasoning is not None else reasoning
        result.first_token_s = first_token
        result.first_answer_s = first_answer
        result.token_count_source = source
        if final_usage and isinstance(final_usage.get("prompt_tokens"), int):
            result.input_tokens = final_usage["prompt_tokens"]
        result.cached_tokens = _cached_from_usage(final_usage or {})


def _idle_in_pool(session: aiohttp.ClientSession) -> bool | None:
    """Whether the session's pool holds an idle connection, which aiohttp hands out before it
    opens a new one (a session serves one target); None where the pool cannot be seen. This
    looks at the connector's pool directly because the tracing hook that says the same costs
    ~15 µs per request (10% of the client's per-request CPU, measured)."""
    conns = getattr(session.connector, "_conns", None)
    return any(conns.values()) if isinstance(conns, dict) else None


class _Attempt:
    """One try of a request, as the tracing hook sees it."""

    __slots__ = ("reused",)

    def __init__(self) -> None:
        self.reused = False


async def _on_reuse(session: aiohttp.ClientSession, ctx: Any,
                    params: aiohttp.TraceConnectionReuseconnParams) -> None:
    attempt = ctx.trace_request_ctx
    if isinstance(attempt, _Attempt):
        attempt.reused = True


def _reuse_trace() -> aiohttp.TraceConfig:
    trace = aiohttp.TraceConfig()
    trace.on_connection_reuseconn.append(_on_reuse)
    trace.freeze()
    return trace


_REUSE_TRACE = _reuse_trace()


# aiohttp's C parser drops the body reader of a response whose framing turns bad mid-body (a
# chunk-size line that is not hexadecimal, in a read after the headers): it closes the connection
# but never tells the reader, which then waits for the whole-request timeout (the pure-Python
# parser raises). So each connection's loss fails the body its latest response is still reading.
_READING: weakref.WeakKeyDictionary[Any, aiohttp.ClientResponse] = weakref.WeakKeyDictionary()


def _watch_connection(resp: aiohttp.ClientResponse) -> None:
    conn = resp.connection
    proto = conn.protocol if conn is not None else None
    if proto is None:
        return
    if proto not in _READING:  # the first response on this connection
        closed = getattr(proto, "closed", None)
        if not isinstance(closed, asyncio.Future):  # already lost, or an unknown aiohttp
            return
        closed.add_done_callback(lambda fut, ref=weakref.ref(proto): _connection_lost(ref, fut))
    _READING[proto] = resp


def _connection_lost(proto_ref: weakref.ref[Any], closed: asyncio.Future[None]) -> None:
    if not closed.cancelled():
        closed.exception()  # looked at: asyncio does not log it as never retrieved
    proto = proto_ref()
    resp = _READING.pop(proto, None) if proto is not None else None
    if resp is None or resp.content.is_eof() or resp.content.exception() is not None:
        return  # read to the end, or aiohttp told the reader itself
    cause = proto.exception() if hasattr(proto, "exception") else None
    message = getattr(cause, "message", None) or "connection closed in the middle of the body"
    resp.content.set_exception(aiohttp.ClientResponseError(
        resp.request_info, resp.history, status=resp.status, message=str(message)))


def _cached_from_usage(usage: dict[str, Any]) -> int | None:
    """Prompt tokens served from the prefix cache (``usage.prompt_tokens_details.cached_tokens``,
    as OpenAI, vLLM with --enable-prompt-tokens-details and SGLang report it); None if absent."""
    details = usage.get("prompt_tokens_details")
    value = details.get("cached_tokens") if isinstance(details, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _reasoning_from_usage(usage: dict[str, Any]) -> int | None:
    details = usage.get("completion_tokens_details")
    if isinstance(details, dict) and isinstance(details.get("reasoning_tokens"), int):
        return details["reasoning_tokens"]
    return None


def _one_line(error: str) -> str:
    """An error message fit for the records: one line (aiohttp's messages span several). The
    journal makes any text UTF-8 it can write."""
    return " ".join(error.split()) if "\n" in error or "\r" in error else error


async def _read_capped(content: aiohttp.StreamReader, limit: int) -> bytes | None:
    """The whole body, or None as soon as it passes ``limit`` bytes (memory stays bounded)."""
    buf = bytearray()
    while chunk := await content.readany():
        buf += chunk
        if len(buf) > limit:
            return None
    return bytes(buf)


async def _read_error_body(resp: aiohttp.ClientResponse) -> str:
    try:
        raw = await asyncio.wait_for(resp.content.read(2048), timeout=2.0)
    except (TimeoutError, asyncio.TimeoutError, aiohttp.ClientError):
        return "(no body)"
    text = raw.decode("utf-8", "replace").strip().replace("\n", " ")
    try:
        obj = orjson.loads(raw)
        if isinstance(obj, dict) and isinstance(obj.get("error"), dict):
            text = obj["error"].get("message") or text
        elif isinstance(obj, dict) and isinstance(obj.get("error"), str):
            text = obj["error"]
    except orjson.JSONDecodeError:
        pass
    return text[:300]
