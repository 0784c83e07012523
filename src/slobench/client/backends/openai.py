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
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import orjson

from slobench.client.backends.presets import EnginePreset
from slobench.client.http1 import (
    ConnectionLost,
    ConnectionPool,
    HTTPFailure,
    ResponseSink,
)
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


def target_query(url: str) -> str:
    """The query of a target URL as it goes on each request path (``?a=b``), or ""."""
    query = urlsplit(url.strip()).query
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in query):
        raise UserError("--target: the URL's query has a space or a control character; "
                        "percent-encode it (%20)")
    return f"?{query}" if query else ""


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110)
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
    for name, value in (headers or {}).items():
        if not _HEADER_NAME.fullmatch(name) or any(c in value for c in "\r\n\0"):
            raise UserError(f"--header: '{name}' is not a valid HTTP header (a name of letters, "
                            "digits and -, a value without line breaks); fix it")
        if name.lower() in ("content-length", "transfer-encoding"):
            raise UserError(f"--header: '{name}' is set by slobench for each request; drop it")
    if api_key is not None and any(c in api_key for c in "\r\n\0"):
        raise UserError("--api-key: the key contains a line break; give the key alone")
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
        # a query in the target URL (Azure's ?api-version=, a gateway's key) goes on every
        # request; it is never written down (see strip_credentials)
        self.query = target_query(base_url)
        self.model = model
        self.preset = preset
        self.stream = stream
        self.extra_body = dict(extra_body or {})
        self.headers = request_headers(base_url, api_key, headers)
        if stream and preset.close_after_stream:
            self.headers.setdefault("Connection", "close")
        # the request head up to Content-Length's value, by Host header
        self._heads: dict[str, bytes] = {}

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

    def request_bytes(self, pool: ConnectionPool, payload: bytes) -> bytes:
        """The whole request on the wire: head (built once per pool) and ``payload``."""
        head = self._heads.get(pool.host_header)
        if head is None:
            given = {k.lower() for k in self.headers}
            lines = [f"POST {urlsplit(self.url).path}{self.query} HTTP/1.1",
                     *([f"Host: {pool.host_header}"] if "host" not in given else []),
                     *(["User-Agent: slobench"] if "user-agent" not in given else []),
                     *(f"{k}: {v}" for k, v in self.headers.items()), "Content-Length: "]
            head = self._heads[pool.host_header] = "\r\n".join(lines).encode("utf-8")
        return b"".join((head, str(len(payload)).encode(), b"\r\n\r\n", payload))

    async def send(self, pool: ConnectionPool, payload: bytes, result: RequestResult,
                   clock: RunClock) -> None:
        request = self.request_bytes(pool, payload)
        sink = _StreamSink(self, result) if self.stream else _WholeSink(self, result)
        try:
            result.sent_s = clock.now()
            await self._exchange(pool, request, sink, result)
        except asyncio.CancelledError:
            sink.settle(clock.now())  # what arrived before is measured too
            result.fail("cancelled", "cancelled before completion", clock.now())
            raise
        except HTTPFailure as exc:
            sink.settle(clock.now())
            result.fail(exc.status, exc.message, clock.now())
        else:
            sink.settle(clock.now())
            sink.conclude()
        finally:
            if result.error is not None:
                result.error = _one_line(result.error)

    async def _exchange(self, pool: ConnectionPool, request: bytes, sink: ResponseSink,
                        result: RequestResult) -> None:
        """Send ``request`` and wait for its response.

        A server may close an idle keep-alive connection just as the client sends on it (uvicorn
        after 5 s, nginx, llama-server after every stream): the request then fails before any
        response arrives, through no fault of the server's. Only then, when the connection had
        served requests before, is the request sent again (``result.retries``); at most
        ``STALE_RETRIES`` times, and never after a failure on a new connection, so a server that
        really drops requests shows as errors. Its time still counts from the scheduled time."""
        while True:
            conn = await pool.acquire()
            try:
                await conn.exchange(request, sink)
                return
            except ConnectionLost as exc:
                if not (exc.before_response and conn.served) or result.retries >= STALE_RETRIES:
                    raise
                result.retries += 1


class _Sink:
    """One response, as the connection delivers it (see ``http1.ResponseSink``). An error
    status (3xx and up: redirects are not followed) keeps the first read of the body as the
    error's text."""

    __slots__ = ("_error_body", "_error_status", "end_s", "result")

    def __init__(self, result: RequestResult) -> None:
        self.result = result
        self._error_status = 0
        self._error_body: bytes | None = None
        self.end_s: float | None = None  # when the response was complete (the last read)

    def on_headers(self, status: int, now: float) -> None:
        result = self.result
        result.last_io_s = now
        result.http_status = status
        if status >= 300:
            self._error_status = status

    def on_body(self, data: bytes, now: float) -> bool:
        self.result.last_io_s = now
        if self._error_status:
            self._error_body = data[:2048]
            self.end_s = now
            return True
        return self.body(data, now)

    def on_end(self, now: float) -> None:
        if self.end_s is None:
            self.end_s = now
        if not self._error_status:
            self.end(now)

    def body(self, data: bytes, now: float) -> bool:
        raise NotImplementedError

    def end(self, now: float) -> None:
        raise NotImplementedError

    def settle(self, now: float) -> None:
        """Fill the result's measurements from what arrived (also after a failure)."""
        self.result.done_s = self.end_s if self.end_s is not None else now

    def conclude(self) -> None:
        """The response is complete: its status."""
        if self._error_status:
            status = self._error_status
            text = _error_text(self._error_body)
            if 300 <= status < 400:
                text += " (redirects are not followed: give the final URL as the target)"
            self.result.fail("http_error", f"HTTP {status}: {text}", self.result.done_s or 0.0)


class _WholeSink(_Sink):
    """A non-streamed answer: one JSON body, bounded by ``MAX_EVENT_BYTES``."""

    __slots__ = ("_buf", "_chat", "_overflow")

    def __init__(self, backend: OpenAIBackend, result: RequestResult) -> None:
        super().__init__(result)
        self._chat = backend.endpoint == "chat"
        self._buf = bytearray()
        self._overflow = False

    def body(self, data: bytes, now: float) -> bool:
        self._buf += data
        if len(self._buf) > MAX_EVENT_BYTES:
            self._overflow = True
            self.end_s = now
            return True
        return False

    def end(self, now: float) -> None:
        pass

    def conclude(self) -> None:
        result = self.result
        now = result.done_s or 0.0
        if self._error_status:
            super().conclude()
            return
        if self._overflow:
            result.fail("protocol_error",
                        f"response body longer than {MAX_EVENT_BYTES >> 20} MiB (the limit)", now)
            return
        raw = bytes(self._buf)
        try:
            obj = orjson.loads(raw)
            choice = obj["choices"][0]
            if self._chat:
                msg = choice.get("message") or {}
                text = msg.get("content") or ""
            else:
                text = choice.get("text") or ""
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError) as exc:
            result.fail("protocol_error", f"unparseable response body: {exc}: {raw[:200]!r}", now)
            return
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


class _StreamSink(_Sink):
    """A streamed answer: SSE events parsed as they arrive, per chunk its arrival time, answer
    and reasoning characters, and cumulative completion_tokens; tokens counted at the end."""

    __slots__ = ("_answer_chars", "_chat", "_cumulative", "_failure", "_final_usage", "_keep",
                 "_parser", "_reasoning_chars", "_reasoning_fields", "_saw_done", "_saw_finish",
                 "_times")

    def __init__(self, backend: OpenAIBackend, result: RequestResult) -> None:
        super().__init__(result)
        self._parser = SSEParser()
        self._chat = backend.endpoint == "chat"
        self._reasoning_fields = backend.preset.reasoning_fields
        self._keep = result.answer
        self._times: list[float] = []
        self._answer_chars: list[int] = []
        self._reasoning_chars: list[int] = []
        self._cumulative: list[int | None] = []
        self._final_usage: dict[str, Any] | None = None
        self._saw_done = self._saw_finish = False
        self._failure: tuple[str, str] | None = None

    def on_body(self, data: bytes, now: float) -> bool:  # the hot path: one call per read
        self.result.last_io_s = now
        if self._error_status:
            return super().on_body(data, now)
        try:
            events = self._parser.feed(data)
        except SSEError as exc:  # a line without end: stop reading rather than buffer it all
            self._failure = ("protocol_error", str(exc))
            self.end_s = now
            return True
        if events and self._handle(events, now):
            self.end_s = now
            return True
        return False

    def end(self, now: float) -> None:
        if self._failure is None and not self._saw_done:
            try:
                events = self._parser.close()
            except SSEError as exc:
                self._failure = ("protocol_error", str(exc))
                return
            self._handle(events, now)

    def _handle(self, events: list[bytes], now: float) -> bool:
        """Returns True when the stream is over (DONE, or a fatal problem)."""
        chat = self._chat
        keep = self._keep
        for data in events:
            if data == b"[DONE]":
                self._saw_done = True
                return True
            try:
                obj = orjson.loads(data)
            except orjson.JSONDecodeError:
                self._failure = ("protocol_error", f"malformed SSE data: {data[:120]!r}")
                return True
            if not isinstance(obj, dict):
                self._failure = ("protocol_error", f"SSE data is not an object: {data[:120]!r}")
                return True
            if obj.get("error") and not obj.get("choices"):
                err = obj["error"]
                msg = err.get("message", err) if isinstance(err, dict) else err
                self._failure = ("http_error", f"error in stream: {msg}")
                return True
            usage = obj.get("usage")
            a_len = r_len = 0
            for ch in obj.get("choices") or ():
                if chat:
                    delta = ch.get("delta") or {}
                    text = delta.get("content")
                    for name in self._reasoning_fields:
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
                    self._saw_finish = True
            cum = usage.get("completion_tokens") if isinstance(usage, dict) else None
            if isinstance(usage, dict):
                self._final_usage = usage
            if a_len or r_len or cum is not None:
                self._times.append(now)
                self._answer_chars.append(a_len)
                self._reasoning_chars.append(r_len)
                self._cumulative.append(cum if isinstance(cum, int) else None)
        return False

    def settle(self, now: float) -> None:
        super().settle(now)
        if not self._error_status:
            _count_tokens(self.result, self._times, self._answer_chars, self._reasoning_chars,
                          self._cumulative, self._final_usage)

    def conclude(self) -> None:
        result = self.result
        if self._error_status:
            super().conclude()
        elif self._failure:
            result.status, result.error = self._failure[0], self._failure[1][:500]
        elif not self._saw_done and not self._saw_finish:
            result.status, result.error = "disconnect", "stream ended before [DONE]"
        else:
            result.status = "ok"


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


def _error_text(raw: bytes | None) -> str:
    """The message of an error response's body (its first read): an OpenAI-style
    ``{"error": {"message"}}`` or ``{"error": "..."}``, else the text itself."""
    if not raw:
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
    return str(text)[:300]
