"""A scripted OpenAI-compatible server: exact, repeatable timings and faults over real HTTP.

slobench's client tests drive this server (never a mocked client), and ``slobench run`` uses it as
the default target when no target is given. Every response follows a :class:`Script`: time to
first token, time per output token, tokens per streamed chunk, reasoning tokens, usage reporting,
and one optional fault (HTTP error, connection reset, malformed SSE, stall, never answering, slow
headers, truncated stream). A request may override the server's script with a JSON body field
``"slobench_script": {...}``.

Timing is an absolute schedule from the request's receipt time ``t0`` (``time.perf_counter`` when
the handler starts): token ``i`` is due at ``t0 + ttft_s + i * tpot_s``; a chunk is written when
its last token is due.

Run by hand::

    python -m slobench.engine.scripted --port 8000 --script '{"ttft_s": 0.2, "tpot_s": 0.02}'

It prints one line ``LISTENING http://127.0.0.1:PORT`` once serving and runs until SIGTERM/SIGINT.

Truth log (``--truth`` / ``--truth-log PATH``, opt-in): for every completion request the server
records when it read the request's first bytes (``rx``) and started its handler (``t0``), each
chunk's due time, the time the chunk's write returned, and the tokens it carried, so a benchmark
knows what the server actually emitted (and how late it ran). Served by ``GET /truth``; with a
path, also written as JSON lines at shutdown. See docs/scripted-server.md.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slobench.engine.process import ServerProcess, run_event_loop, serve_until_stopped
from slobench.prompts.tokenizer import BuiltinTokenizer

__all__ = [
    "DEFAULT_MODEL",
    "FaultKind",
    "Script",
    "ScriptedServerProcess",
    "TruthRecord",
    "main",
    "make_app",
    "start_in_loop",
]

DEFAULT_MODEL = "scripted-model"
DEFAULT_OUTPUT_TOKENS = 16
SCRIPT_FIELD = "slobench_script"

FaultKind = Literal[
    "status", "reset", "malformed", "stall", "never_answer", "slow_first_byte", "truncate"
]

_DONE = b"data: [DONE]\n\n"
_MALFORMED = b"data: {not json\n\n"
_SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


class Script(BaseModel):
    """How the scripted server answers a request. Every field has a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ttft_s: float = Field(0.05, ge=0, description="delay from request receipt to the first token")
    tpot_s: float = Field(0.01, ge=0, description="time per output token after the first")
    tokens_per_chunk: int = Field(1, ge=1, description="tokens carried by one streamed chunk")
    output_tokens: int | None = Field(
        None, ge=0, description="tokens to generate; default: max_tokens, else 16"
    )
    reasoning_tokens: int = Field(0, ge=0, description="the first R output tokens are reasoning")
    reasoning_field: Literal["reasoning_content", "reasoning"] = "reasoning_content"
    usage: Literal["auto", "continuous", "none"] = "auto"
    fault: FaultKind | None = None
    fault_status: int = Field(500, ge=100, le=599)
    fault_body: str = '{"error":{"message":"scripted failure","type":"server_error"}}'
    fault_after_tokens: int = Field(0, ge=0)
    stall_s: float = Field(3600.0, ge=0)
    fault_every: int = Field(1, ge=1, description="fault every Nth request (index % N == 0)")


def _as_script(script: Script | dict[str, Any] | None) -> Script:
    if script is None:
        return Script()
    if isinstance(script, Script):
        return script
    return Script.model_validate(script)


# --------------------------------------------------------------------------------------------
# request helpers


def _count_words(value: Any) -> int:
    """Prompt tokens: whitespace-separated words (token-id lists count one per id)."""
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, int):
        return 1
    if isinstance(value, dict):
        if value.get("type", "text") == "text":
            return _count_words(value.get("text"))
        return 0
    if isinstance(value, list):
        return sum(_count_words(v) for v in value)
    return 0


def _chat_prompt_tokens(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return 0
    return sum(_count_words(m.get("content")) for m in messages if isinstance(m, dict))


def _requested_max(body: dict[str, Any]) -> int | None:
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _token_text(i: int, reasoning: bool) -> str:
    return f" r{i}" if reasoning else f" w{i}"


def _error_response(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
    body = orjson.dumps({"error": {"message": message, "type": kind, "code": status}})
    return web.Response(status=status, body=body, content_type="application/json")


_EARLY_TOLERANCE_S = 0.0002


async def _sleep_until(deadline: float) -> None:
    """Sleep to an absolute perf_counter deadline, never waking more than 0.2 ms early.

    Event-loop timers have millisecond granularity (uvloop may fire up to 1 ms early), so an
    early wake-up sleeps again for at least one timer tick rather than spinning.
    """
    while (delay := deadline - time.perf_counter()) > _EARLY_TOLERANCE_S:
        await asyncio.sleep(max(delay, 0.001))


# --------------------------------------------------------------------------------------------
# the server


class TruthRecord:
    """What the server actually emitted for one completion request (truth-log mode).

    Times are the server's ``time.perf_counter()``: ``rx`` when the request's first bytes were
    read from its socket (``t0`` where the aiohttp hook is unavailable), ``t0`` when the handler
    started (the schedule counts from it; ``t0 - rx`` is the server's own queueing); per chunk,
    ``due`` (when the script wanted it), ``sent`` (when ``write`` returned: the bytes were handed to
    the kernel) and ``tokens`` (0 for the empty final chunk of a zero-token answer); ``done`` after
    the end of the response. Appending to plain lists keeps the cost per chunk to well under a
    microsecond.
    """

    __slots__ = ("done", "due", "id", "rx", "sent", "status", "stream", "t0", "tokens")

    def __init__(self, idx: int, t0: float, stream: bool, rx: float | None = None) -> None:
        self.id = idx
        self.rx = t0 if rx is None else rx
        self.t0 = t0
        self.stream = stream
        self.status = "ok"
        self.due: list[float] = []
        self.sent: list[float] = []
        self.tokens: list[int] = []
        self.done: float | None = None

    def chunk(self, due: float, tokens: int) -> None:
        self.sent.append(time.perf_counter())
        self.due.append(due)
        self.tokens.append(tokens)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "rx": self.rx, "t0": self.t0, "stream": self.stream,
                "status": self.status, "due": self.due, "sent": self.sent,
                "tokens": self.tokens, "done": self.done}


class _State:
    """Server-wide state: the default script, the model name and the request statistics."""

    def __init__(self, script: Script, model: str, truth: bool = False) -> None:
        self.script = script
        self.model = model
        # truth-log mode: one record per completion request, kept until fetched with clear=1
        self.truth: list[TruthRecord] | None = [] if truth else None
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.receipt_times: list[float] = []
        self.max_tokens: list[int | None] = []
        self.active = 0
        self.max_active = 0


_MAX_STATS = 100_000  # per-request entries kept for /stats

_STATE: web.AppKey[_State] = web.AppKey("scripted_state", _State)


class _Plan:
    """Everything one completion request needs to be answered."""

    __slots__ = (
        "chat",
        "continuous",
        "created",
        "fault",
        "final_usage",
        "finish_reason",
        "id",
        "model",
        "n",
        "prompt_tokens",
        "reasoning",
        "script",
        "stream",
        "t0",
        "truth",
    )

    def __init__(
        self, *, chat: bool, body: dict[str, Any], script: Script, model: str, t0: float, idx: int
    ) -> None:
        self.truth: TruthRecord | None = None
        self.chat = chat
        self.script = script
        self.model = model
        self.t0 = t0
        self.stream = bool(body.get("stream", False))
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-scripted-{idx}"
        self.created = int(time.time())
        requested = _requested_max(body)
        if script.output_tokens is not None:
            n = script.output_tokens
        elif requested is not None:
            n = requested
        else:
            n = DEFAULT_OUTPUT_TOKENS
        self.n = max(0, n)
        self.reasoning = min(script.reasoning_tokens, self.n)
        self.finish_reason = "length" if requested is not None and self.n >= requested else "stop"
        self.prompt_tokens = _chat_prompt_tokens(body) if chat else _count_words(body.get("prompt"))
        self.fault = script.fault if script.fault and idx % script.fault_every == 0 else None
        opts = body.get("stream_options")
        opts = opts if isinstance(opts, dict) else {}
        if script.usage == "none":
            self.continuous = self.final_usage = False
        elif script.usage == "continuous":
            self.continuous = self.final_usage = True
        else:
            self.final_usage = bool(opts.get("include_usage"))
            self.continuous = bool(opts.get("continuous_usage_stats"))

    # -- payloads ------------------------------------------------------------------------------

    def usage(self, completion: int) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }
        if self.reasoning:
            usage["completion_tokens_details"] = {
                "reasoning_tokens": min(completion, self.reasoning)
            }
        return usage

    def chunk(self, start: int, end: int, *, last: bool) -> bytes:
        """One SSE event carrying tokens [start, end)."""
        if self.chat:
            delta: dict[str, Any] = {}
            if start == 0:
                delta["role"] = "assistant"
            r_end = min(end, self.reasoning)
            if start < r_end:
                field = self.script.reasoning_field
                delta[field] = "".join(_token_text(i, True) for i in range(start, r_end))
            if end > self.reasoning or end == start:
                delta["content"] = "".join(
                    _token_text(i, False) for i in range(max(start, self.reasoning), end)
                )
            choice: dict[str, Any] = {"index": 0, "delta": delta}
        else:
            text = "".join(_token_text(i, i < self.reasoning) for i in range(start, end))
            choice = {"index": 0, "text": text}
        choice["logprobs"] = None
        choice["finish_reason"] = self.finish_reason if last else None
        event: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }
        if self.continuous:
            event["usage"] = self.usage(end)
        return b"data: " + orjson.dumps(event) + b"\n\n"

    def usage_chunk(self) -> bytes:
        event = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": self.usage(self.n),
        }
        return b"data: " + orjson.dumps(event) + b"\n\n"

    def full_response(self) -> bytes:
        if self.chat:
            message: dict[str, Any] = {"role": "assistant"}
            if self.reasoning:
                message[self.script.reasoning_field] = "".join(
                    _token_text(i, True) for i in range(self.reasoning)
                )
            message["content"] = "".join(
                _token_text(i, False) for i in range(self.reasoning, self.n)
            )
            choice: dict[str, Any] = {"index": 0, "message": message}
        else:
            text = "".join(_token_text(i, i < self.reasoning) for i in range(self.n))
            choice = {"index": 0, "text": text}
        choice["logprobs"] = None
        choice["finish_reason"] = self.finish_reason
        out: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }
        if self.script.usage != "none":
            out["usage"] = self.usage(self.n)
        return orjson.dumps(out)

    # -- schedule ------------------------------------------------------------------------------

    def due(self, token: int, shift: float) -> float:
        """Absolute perf_counter time at which token ``token`` (0-based) is due."""
        return self.t0 + shift + self.script.ttft_s + token * self.script.tpot_s

    def segments(self, split: int | None) -> list[tuple[int, int]]:
        """Chunks as [start, end) token ranges, k tokens each, split at ``split`` if given."""
        k = self.script.tokens_per_chunk
        bounds = [0, self.n] if split is None or not 0 < split < self.n else [0, split, self.n]
        out: list[tuple[int, int]] = []
        for lo, hi in itertools.pairwise(bounds):
            out.extend((s, min(s + k, hi)) for s in range(lo, hi, k))
        return out


async def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()
    # Let the loop notice the lost connection; the handler is then cancelled or simply returns.
    await asyncio.sleep(0)


async def _stream(request: web.Request, plan: _Plan) -> web.StreamResponse:
    script = plan.script
    fault = plan.fault
    shift = 0.0
    resp = web.StreamResponse(status=200, headers=_SSE_HEADERS)
    await resp.prepare(request)
    token_fault = fault in ("reset", "malformed", "stall", "truncate")
    fault_at = script.fault_after_tokens if token_fault else None
    segments = plan.segments(fault_at)
    fired = False

    async def fire(at_token: int) -> bool:
        """Apply the token fault due before token ``at_token``; True if the stream must end."""
        nonlocal shift, fired
        fired = True
        if fault == "stall":
            shift += script.stall_s
            return False
        if at_token < plan.n:
            await _sleep_until(plan.due(at_token, shift))
        if fault == "reset":
            await _abort(request)
            return True
        if fault == "truncate":
            await resp.write_eof()
            return True
        await resp.write(_MALFORMED)  # malformed: send garbage, then carry on
        return False

    truth = plan.truth
    if not segments:  # zero output tokens: one empty final chunk at the first-token time
        if fault_at is not None and await fire(0):
            return resp
        await _sleep_until(due := plan.due(0, shift))
        await resp.write(plan.chunk(0, 0, last=True))
        if truth is not None:
            truth.chunk(due, 0)
    last_index = len(segments) - 1
    for j, (start, end) in enumerate(segments):
        if fault_at is not None and not fired and start == fault_at and await fire(start):
            return resp
        await _sleep_until(due := plan.due(end - 1, shift))
        await resp.write(plan.chunk(start, end, last=j == last_index))
        if truth is not None:
            truth.chunk(due, end - start)
    if fault_at is not None and not fired:  # fault point at or after the last token
        if fault == "stall":
            await asyncio.sleep(script.stall_s)
        elif fault == "reset":
            await _abort(request)
            return resp
        elif fault == "truncate":
            if plan.final_usage:
                await resp.write(plan.usage_chunk())
            await resp.write_eof()
            return resp
        else:
            await resp.write(_MALFORMED)
    if plan.final_usage:
        await resp.write(plan.usage_chunk())
    await resp.write(_DONE)
    await resp.write_eof()
    if truth is not None:
        truth.done = time.perf_counter()
    return resp


async def _respond_whole(request: web.Request, plan: _Plan) -> web.StreamResponse:
    fault = plan.fault
    deadline = plan.due(max(plan.n - 1, 0), 0.0)
    if fault == "stall":
        deadline += plan.script.stall_s
    await _sleep_until(deadline)
    if fault == "reset":
        await _abort(request)
        return web.Response(status=500)
    if fault == "malformed":
        return web.Response(status=200, body=b"{not json", content_type="application/json")
    body = plan.full_response()
    if plan.truth is not None and fault is None:  # handed to aiohttp at once, after this return
        plan.truth.chunk(deadline, plan.n)
        plan.truth.done = plan.truth.sent[-1]
    if fault == "truncate":
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.content_length = len(body)
        await resp.prepare(request)
        await resp.write(body[: len(body) // 2])
        await _abort(request)
        return resp
    return web.Response(status=200, body=body, content_type="application/json")


async def _completion(request: web.Request, *, chat: bool) -> web.StreamResponse:
    t0 = time.perf_counter()
    state = request.app[_STATE]
    # rx: stamped by _RxRequestHandler, read before the body (later reads belong to this request
    # anyway); without that hook (another aiohttp) the handler start
    rx = getattr(request.protocol, "rx", t0) if state.truth is not None else t0
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        return _error_response(400, f"request body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return _error_response(400, "request body must be a JSON object")
    idx = state.requests
    state.requests += 1
    if len(state.receipt_times) < _MAX_STATS:  # long runs: keep memory bounded
        state.receipt_times.append(t0)
        state.max_tokens.append(_requested_max(body))

    script = state.script
    override = body.get(SCRIPT_FIELD)
    if override is not None:
        if not isinstance(override, dict):
            return _error_response(400, f"{SCRIPT_FIELD} must be a JSON object")
        try:
            script = Script.model_validate({**script.model_dump(), **override})
        except ValidationError as exc:
            errors = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            return _error_response(400, f"invalid {SCRIPT_FIELD}: {errors}")

    plan = _Plan(chat=chat, body=body, script=script, model=state.model, t0=t0, idx=idx)
    if state.truth is not None:
        plan.truth = TruthRecord(idx, t0, plan.stream, rx if 0 < rx <= t0 else t0)
        if plan.fault:
            plan.truth.status = plan.fault
        state.truth.append(plan.truth)
    state.active += 1
    state.max_active = max(state.max_active, state.active)
    try:
        fault = plan.fault
        if fault == "status":
            return web.Response(
                status=script.fault_status,
                body=script.fault_body.encode(),
                content_type="application/json",
            )
        if fault == "never_answer":
            await asyncio.sleep(script.stall_s)
            await _abort(request)
            return web.Response(status=504)
        if fault == "slow_first_byte":
            await asyncio.sleep(script.stall_s)
            plan.t0 = time.perf_counter()
        if plan.stream:
            return await _stream(request, plan)
        return await _respond_whole(request, plan)
    except ConnectionError:  # the client went away mid-response
        if plan.truth is not None:
            plan.truth.status = "client_gone"
        return web.Response(status=499)
    except asyncio.CancelledError:  # the client went away and the handler was cancelled
        if plan.truth is not None:
            plan.truth.status = "client_gone"
        raise
    finally:
        state.active -= 1
        if plan.truth is not None and plan.truth.done is None:  # faults, cancellation
            plan.truth.done = time.perf_counter()


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    return await _completion(request, chat=True)


async def _completions(request: web.Request) -> web.StreamResponse:
    return await _completion(request, chat=False)


async def _models(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    body = {
        "object": "list",
        "data": [{"id": state.model, "object": "model", "created": 0, "owned_by": "slobench"}],
    }
    return web.json_response(body, dumps=lambda o: orjson.dumps(o).decode())


async def _health(request: web.Request) -> web.Response:
    return web.Response(status=200, text="ok")


async def _stats(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    body = {
        "requests": state.requests,
        "receipt_times": state.receipt_times,
        "max_tokens": state.max_tokens,
        "active": state.active,
        "max_active": state.max_active,
    }
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def _tokenize(request: web.Request) -> web.Response:
    """llama.cpp's dialect (``content`` in, ``tokens`` out), with the built-in tokenizer: lets
    tests drive ``--tokenizer server`` against a second tokenize API."""
    try:
        body = orjson.loads(await request.read())
        text = body["content"]
        if not isinstance(text, str):
            raise TypeError("content must be a string")
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        return web.json_response({"error": f"bad /tokenize body: {exc}"}, status=400)
    return web.Response(body=orjson.dumps({"tokens": BuiltinTokenizer().encode(text)}),
                        content_type="application/json")


async def _apply_template(request: web.Request) -> web.Response:
    """llama.cpp's ``/apply-template``: a tiny fixed template around each message."""
    try:
        messages = orjson.loads(await request.read())["messages"]
        prompt = "".join(f"<{m['role']}> {m['content']}\n" for m in messages) + "<assistant>"
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        return web.json_response({"error": f"bad /apply-template body: {exc}"}, status=400)
    return web.Response(body=orjson.dumps({"prompt": prompt}), content_type="application/json")


async def _truth(request: web.Request) -> web.Response:
    """The truth log: ``{"clock", "requests": [...]}``; ``?clear=1`` also drops the returned
    requests that are finished (those still in flight stay, to be returned again complete)."""
    state = request.app[_STATE]
    if state.truth is None:
        return _error_response(404, "truth log is off: start the server with --truth")
    records = state.truth
    if request.query.get("clear", "") not in ("", "0", "false"):
        state.truth = [r for r in records if r.done is None]
    body = {"clock": "perf_counter", "requests": [r.as_dict() for r in records]}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def _truth_writer(path: Path) -> Any:
    """An on_cleanup hook writing the truth log to ``path`` as JSON lines, one per request."""

    async def write(app: web.Application) -> None:
        records = app[_STATE].truth or []
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            for r in records:
                f.write(orjson.dumps(r.as_dict()) + b"\n")

    return write


async def _stats_reset(request: web.Request) -> web.Response:
    request.app[_STATE].reset()
    return web.Response(body=b'{"ok":true}', content_type="application/json")


# --------------------------------------------------------------------------------------------
# when each request's bytes were read: the truth log's rx


class _RxRequestHandler(web.RequestHandler):
    """aiohttp's connection protocol, plus ``rx``: ``perf_counter()`` at the ``data_received``
    that delivered the current request's first bytes.

    Armed when the connection opens and again when a request's body has been fully received (its
    payload's end, see :func:`_rx_protocol_factory`); the next read with bytes stamps ``rx`` and
    disarms, so a body arriving in later reads keeps its request's stamp. Clients here do not
    pipeline: the first bytes after a request's body begin the next request. The handler reads
    ``request.protocol.rx``. Cost: one flag test per read, one ``perf_counter()`` per request.
    """

    __slots__ = ("_rx_armed", "rx")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rx = 0.0
        self._rx_armed = True

    def data_received(self, data: bytes) -> None:
        if self._rx_armed and data:  # aiohttp re-feeds b"" itself to resume a paused parser
            self.rx = time.perf_counter()
            self._rx_armed = False
        super().data_received(data)

    def rearm_rx(self) -> None:
        self._rx_armed = True


def _rx_protocol_factory(server: web.Server) -> Callable[[], web.RequestHandler] | None:
    """A protocol factory for ``server``'s connections making :class:`_RxRequestHandler`s, or
    None where this aiohttp does not allow it (then ``rx`` falls back to the handler start).

    It builds them as ``web.Server.__call__`` does (``server._loop``, ``server._kwargs``: the same
    from aiohttp 3.9 to 3.14), probing once here so that a changed signature fails at start-up,
    not per connection. It also wraps ``server.request_factory`` (copied by each protocol when it
    is created, so before any connection) to re-arm the stamp when a request's payload ends:
    ``on_eof`` runs at once for a body already complete or absent.
    """
    try:
        loop, kwargs = server._loop, server._kwargs
        _RxRequestHandler(server, loop=loop, **kwargs)
    except (AttributeError, TypeError):
        return None
    make_request = server.request_factory

    def request_factory(message: Any, payload: Any, protocol: Any, writer: Any,
                        task: Any) -> web.BaseRequest:
        payload.on_eof(protocol.rearm_rx)
        return make_request(message, payload, protocol, writer, task)

    server.request_factory = request_factory

    def protocol() -> web.RequestHandler:
        return _RxRequestHandler(server, loop=loop, **kwargs)

    return protocol


class _RxSite(web.BaseSite):
    """``web.TCPSite`` with a protocol factory of our own: aiohttp's sites always use
    ``runner.server``. Registered with the runner like any site: ``runner.addresses`` lists it
    and ``runner.cleanup()`` closes it."""

    __slots__ = ("_factory", "_host", "_port")

    def __init__(self, runner: web.BaseRunner, host: str, port: int,
                 factory: Callable[[], web.RequestHandler], *, backlog: int) -> None:
        super().__init__(runner, backlog=backlog)
        self._host, self._port, self._factory = host, port, factory

    @property
    def name(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        self._server = await asyncio.get_running_loop().create_server(
            self._factory, self._host, self._port, backlog=self._backlog)


def make_app(
    script: Script | dict[str, Any] | None = None,
    model: str = DEFAULT_MODEL,
    *,
    truth: bool = False,
    truth_log: str | Path | None = None,
) -> web.Application:
    """The aiohttp application serving ``script`` as the default for every request.

    ``truth`` turns the truth log on (``GET /truth``); ``truth_log`` (implies ``truth``) also
    writes it to that file as JSON lines when the application is cleaned up."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[_STATE] = _State(_as_script(script), model, truth=truth or truth_log is not None)
    if truth_log is not None:
        app.on_cleanup.append(_truth_writer(Path(truth_log)))
    app.router.add_post("/v1/chat/completions", _chat_completions)
    app.router.add_post("/v1/completions", _completions)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/health", _health)
    app.router.add_get("/stats", _stats)
    app.router.add_post("/stats/reset", _stats_reset)
    app.router.add_get("/truth", _truth)
    app.router.add_post("/tokenize", _tokenize)
    app.router.add_post("/apply-template", _apply_template)
    return app


async def start_in_loop(
    script: Script | dict[str, Any] | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    model: str = DEFAULT_MODEL,
    *,
    truth: bool = False,
    truth_log: str | Path | None = None,
) -> tuple[web.AppRunner, str]:
    """Start the server in the running event loop; returns (runner, base_url).

    Stop it with ``await runner.cleanup()`` (which writes ``truth_log`` when given).
    """
    runner = web.AppRunner(
        make_app(script, model, truth=truth, truth_log=truth_log), access_log=None,
        handler_cancellation=True, shutdown_timeout=0.5,
    )
    await runner.setup()
    assert runner.server is not None
    factory = _rx_protocol_factory(runner.server)
    site: web.BaseSite = (web.TCPSite(runner, host, port, backlog=4096) if factory is None
                          else _RxSite(runner, host, port, factory, backlog=4096))
    await site.start()
    bound_port = runner.addresses[0][1] if runner.addresses else port
    url_host = f"[{host}]" if ":" in host else host
    return runner, f"http://{url_host}:{bound_port}"


# --------------------------------------------------------------------------------------------
# entry point


async def _serve(script: Script, host: str, port: int, model: str,
                 parent_pid: int | None = None, *, truth: bool = False,
                 truth_log: str | None = None) -> None:
    async def start() -> tuple[str, Any]:
        runner, base_url = await start_in_loop(script, host, port, model, truth=truth,
                                               truth_log=truth_log)
        return base_url, runner.cleanup

    await serve_until_stopped(start, parent_pid)


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, not {port}")
    return port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m slobench.engine.scripted",
        description="Scripted OpenAI-compatible server with exact timings and faults.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=_port, default=0, help="0 picks a free port")
    parser.add_argument("--script", default="{}", help="JSON object of Script fields")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="exit when this process (the one that started us) is gone")
    parser.add_argument("--truth", action="store_true",
                        help="log what was emitted per request and chunk; served at GET /truth")
    parser.add_argument("--truth-log", metavar="PATH", default=None,
                        help="also write the truth log to PATH (JSON lines) at shutdown")
    args = parser.parse_args(argv)
    try:
        raw = json.loads(args.script)
        if not isinstance(raw, dict):
            raise ValueError("--script must be a JSON object")
        script = Script.model_validate(raw)
    except (ValueError, ValidationError) as exc:
        print(f"error: invalid --script: {exc}", file=sys.stderr)
        return 2
    coro = _serve(script, args.host, args.port, args.model, args.parent_pid,
                  truth=args.truth, truth_log=args.truth_log)
    try:
        run_event_loop(coro)
    except OSError as exc:
        print(f"error: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        pass
    return 0


# --------------------------------------------------------------------------------------------
# subprocess helper


class ScriptedServerProcess(ServerProcess):
    """Run the scripted server in a subprocess for the duration of a ``with`` block.

    >>> with ScriptedServerProcess({"ttft_s": 0.1}) as srv:  # doctest: +SKIP
    ...     print(srv.base_url)
    """

    what = "scripted server"

    def __init__(
        self,
        script: Script | dict[str, Any] | None = None,
        model: str = DEFAULT_MODEL,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout_s: float = 20.0,
        truth: bool = False,
        truth_log: str | Path | None = None,
    ) -> None:
        self.script = _as_script(script)
        self.model = model
        self.host = host
        self.port = port
        extra = ["--truth"] if truth else []
        if truth_log is not None:
            extra += ["--truth-log", str(truth_log)]
        super().__init__(
            "slobench.engine.scripted",
            ["--host", host, "--port", str(port),
             "--script", self.script.model_dump_json(exclude_defaults=True), "--model", model,
             *extra],
            startup_timeout_s=startup_timeout_s,
        )

    def truth(self, clear: bool = False) -> list[dict[str, Any]]:
        """The server's truth log (``GET /truth``): one dict per completion request, see
        :class:`TruthRecord`. ``clear`` drops the finished ones from the server."""
        url = self.base_url + "/truth" + ("?clear=1" if clear else "")
        with urllib.request.urlopen(url, timeout=60) as resp:
            return orjson.loads(resp.read())["requests"]

    def stats(self) -> dict[str, Any]:
        """The server's /stats (request count, receipt times, max_tokens)."""
        with urllib.request.urlopen(self.base_url + "/stats", timeout=10) as resp:
            return orjson.loads(resp.read())

    def reset_stats(self) -> None:
        req = urllib.request.Request(self.base_url + "/stats/reset", data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()

    def __enter__(self) -> ScriptedServerProcess:
        self.start()
        return self


if __name__ == "__main__":
    sys.exit(main())
