"""The engine emulator over HTTP: an OpenAI-compatible server whose tokens stream out in real
time, exactly when the scheduler and the step-time model say a GPU engine would produce them.

One asyncio task (the *engine loop*) drives the scheduler on the real clock: it plans a step,
sleeps until the step's end (to within a millisecond, then polls), and hands each request's
tokens to its HTTP stream. If the process cannot keep up (the loop wakes late), the next step
starts late, so clients see a slower engine and never tokens from the future; the lag is counted,
exposed on /metrics and /health, and logged.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from slobench.engine.core import EngineRequest
from slobench.engine.scheduler import Scheduler
from slobench.prompts.images import resolve_encoder
from slobench.prompts.tokenizer import BuiltinTokenizer

log = logging.getLogger("slobench.emulator")

POLL_S = 0.0015  # sleep to within this of a step's end, then poll (timers are ms-coarse)
LATE_TOLERANCE_S = 0.005  # a step ending later than this behind schedule counts as late
DEFAULT_MAX_TOKENS = 256
PREFIX_BLOCK = 16  # tokens per hashed prompt block (the scheduler's default block size)


class InjectedDisconnect(ConnectionAbortedError):
    """Raised inside a stream to drop its connection on purpose (fault injection)."""


class _QuietInjectedFaults(logging.Filter):
    """uvicorn logs every exception that ends a response with a traceback; an injected
    disconnect is intended, so it must not flood the log at realistic fault rates."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        while exc is not None:
            if isinstance(exc, InjectedDisconnect):
                return False
            group = getattr(exc, "exceptions", None)  # an exception group (3.11+ or backport)
            exc = exc.__cause__ or exc.__context__ or (group[0] if group else None)
        return True


@dataclass
class Faults:
    """Injected failures, each decided per request by a seeded random draw."""

    error_rates: dict[int, float] = field(default_factory=dict)  # HTTP status -> probability
    disconnect_rate: float = 0.0  # drop the connection mid-stream
    stall_rate: float = 0.0  # pause the stream once for stall_s
    stall_s: float = 5.0
    slow_first_byte_s: float = 0.0  # delay before the response headers
    seed: int = 0

    def __post_init__(self) -> None:
        from slobench.errors import UserError

        for name in ("disconnect_rate", "stall_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UserError(f"--{name.replace('_', '-')}: {value} is not a probability; "
                                "give a number between 0 and 1")
        for name in ("stall_s", "slow_first_byte_s"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')}: must be >= 0 seconds")


def prefix_hashes(token_ids: list[int], block: int = PREFIX_BLOCK) -> list[int]:
    """Chained hashes of the prompt's full blocks: equal prefixes give equal leading hashes."""
    out: list[int] = []
    prev = 0
    for start in range(0, len(token_ids) - block + 1, block):
        prev = hash((prev, *token_ids[start:start + block]))  # ints: stable across processes
        out.append(prev)
    return out


class _Stream:
    __slots__ = ("queue", "request")

    def __init__(self, request: EngineRequest) -> None:
        self.request = request
        self.queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()


class EngineLoop:
    """The scheduler on the real clock."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.streams: dict[str, _Stream] = {}
        self._wake = asyncio.Event()
        self.steps = 0
        self.late_steps = 0
        self.lag_total_s = 0.0
        self.lag_max_s = 0.0
        self._last_warned = 0.0

    @staticmethod
    def now() -> float:
        return time.perf_counter()

    def submit(self, request: EngineRequest) -> _Stream:
        stream = _Stream(request)
        self.streams[request.request_id] = stream
        self.scheduler.add(request)
        self._wake.set()
        return stream

    def abort(self, request_id: str) -> None:
        if self.streams.pop(request_id, None) is not None:
            self.scheduler.abort(request_id)

    async def sleep_until(self, t: float) -> None:
        while True:
            delta = t - self.now()
            if delta <= 0:
                return
            if delta > POLL_S:
                await asyncio.sleep(delta - POLL_S)
            else:
                await asyncio.sleep(0)

    async def run(self) -> None:
        start = self.now()
        while True:
            if not self.scheduler.has_work():
                self._wake.clear()
                await self._wake.wait()
                start = self.now()
                continue
            start = max(start, self.now())
            try:
                result = self.scheduler.step(start)
            except Exception:  # a scheduler bug must not hang every client: fail what is open
                log.exception("the scheduler failed; ending the requests in flight")
                for request_id in list(self.streams):
                    stream = self.streams.pop(request_id)
                    self.scheduler.abort(request_id)
                    stream.queue.put_nowait(None)
                continue
            if result is None:  # nothing to schedule after all: yield, never spin
                await asyncio.sleep(0.001)
                continue
            end = start + result.duration_s
            await self.sleep_until(end)
            late = self.now() - end
            self.steps += 1
            if late > LATE_TOLERANCE_S:
                self._count_late(late)
                end = self.now()  # the engine cannot have finished earlier than we noticed
            for request_id, n in result.emitted:
                stream = self.streams.get(request_id)
                if stream is not None and n:
                    stream.queue.put_nowait((n, end))
            for request_id in result.finished:
                stream = self.streams.pop(request_id, None)
                if stream is not None:
                    stream.queue.put_nowait(None)
            start = end

    def _count_late(self, late: float) -> None:
        self.late_steps += 1
        self.lag_total_s += late
        self.lag_max_s = max(self.lag_max_s, late)
        if time.monotonic() - self._last_warned > 10:
            self._last_warned = time.monotonic()
            log.warning("emulator fell behind real time: a step ended %.1f ms late (%d of %d "
                        "steps late so far); its latencies are pessimistic", late * 1e3,
                        self.late_steps, self.steps)

    def health(self) -> dict[str, Any]:
        return {"steps": self.steps, "late_steps": self.late_steps,
                "lag_max_s": self.lag_max_s, "lag_total_s": self.lag_total_s,
                "keeping_real_time":
                self.late_steps <= max(2, self.steps // 50)}


class _Metrics:
    """vLLM's metric names, so dashboards and scrapers built for vLLM work unchanged."""

    def __init__(self, model: str) -> None:
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        r = self.registry
        self.model = model
        self.running = Gauge("vllm:num_requests_running", "Requests in the running batch",
                             labels, registry=r)
        self.waiting = Gauge("vllm:num_requests_waiting", "Requests waiting", labels, registry=r)
        self.kv_usage = Gauge("vllm:kv_cache_usage_perc", "KV-cache usage (0..1)", labels,
                              registry=r)
        self.gpu_cache = Gauge("vllm:gpu_cache_usage_perc", "KV-cache usage (0..1), v0 name",
                               labels, registry=r)
        # vLLM's *_total series are counters: advanced by the scheduler's growth at each scrape
        self.totals = {
            key: Counter(name, help_text, labels, registry=r)
            for key, name, help_text in (
                ("prompt_tokens_total", "vllm:prompt_tokens_total", "Prefill tokens processed"),
                ("generation_tokens_total", "vllm:generation_tokens_total", "Tokens generated"),
                ("preemptions_total", "vllm:num_preemptions_total", "Preemptions"),
                ("prefix_cache_queries", "vllm:prefix_cache_queries_total",
                 "Prefix-cache queries (tokens)"),
                ("prefix_cache_hits", "vllm:prefix_cache_hits_total",
                 "Prefix-cache hits (tokens)"))}
        self.success = Counter("vllm:request_success", "Finished requests", labels, registry=r)
        buckets = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token", labels,
                              buckets=buckets, registry=r)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "End-to-end latency", labels,
                             buckets=buckets, registry=r)
        self.late_steps = Gauge("slobench_emulator_late_steps", "Steps that ended late",
                                labels, registry=r)
        self.lag_max = Gauge("slobench_emulator_lag_max_seconds", "Worst step lateness",
                             labels, registry=r)
        # engine steps and the tokens they computed (prefill + decode): tokens per step is the
        # batching efficiency; real counters (exposed as *_total), advanced at each scrape
        self.steps = Counter("slobench_emulator_steps", "Engine steps", labels, registry=r)
        self.step_tokens = Counter("slobench_emulator_step_tokens", "Tokens computed by engine "
                                   "steps (prefill and decode)", labels, registry=r)
        self._counted: dict[str, float] = {}
        for counter in (self.steps, self.step_tokens, *self.totals.values()):
            counter.labels(model)  # exported (as 0) from the first scrape on

    def render(self, loop: EngineLoop) -> bytes:
        s = loop.scheduler.stats
        m = self.model
        self.running.labels(m).set(s.get("running", 0))
        self.waiting.labels(m).set(s.get("waiting", 0))
        self.kv_usage.labels(m).set(s.get("kv_usage", 0.0))
        self.gpu_cache.labels(m).set(s.get("kv_usage", 0.0))
        self.late_steps.labels(m).set(loop.late_steps)
        self.lag_max.labels(m).set(loop.lag_max_s)
        now = {"steps": s.get("steps_total", 0), "tokens": s.get("prefill_tokens_computed", 0)
               + s.get("decode_tokens_computed", 0)}
        now.update((key, s.get(key, 0)) for key in self.totals)
        counters = {"steps": self.steps, "tokens": self.step_tokens, **self.totals}
        for key, counter in counters.items():
            grown = now[key] - self._counted.get(key, 0)
            if grown > 0:
                counter.labels(m).inc(grown)
            self._counted[key] = now[key]  # (a scheduler reset starts the growth over)
        return generate_latest(self.registry)


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}},
                        status_code=status)


def _image_ids(url: Any, encoder: Any) -> list[int]:
    """An image part as the engine sees it: as many pseudo token ids as the vision encoder
    gives its size (read from the PNG header of a data URL), the same ids for the same image
    so the prefix cache can reuse it. Anything else counts as one token."""
    import base64
    import zlib

    if not isinstance(url, str):
        return []
    key = zlib.crc32(url.encode())
    n = 1
    if url.startswith("data:image/png;base64,"):
        try:
            head = base64.b64decode(url[22:22 + 44])
            if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
                w, h = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
                n = int(encoder.tokens(w, h))
        except ValueError:
            n = 1
    return [(key + k) % 128_256 for k in range(n)]


def _prompt_ids(body: dict[str, Any], chat: bool, tokenizer: BuiltinTokenizer,
                encoder: Any) -> list[int]:
    """The prompt's token ids, images included (one pseudo id per image token)."""
    if not chat:
        return tokenizer.encode(_prompt_text(body, chat))
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    ids: list[int] = []
    for msg in messages:
        content = msg.get("content") if isinstance(msg, dict) else None
        if isinstance(content, str):
            ids += tokenizer.encode(content)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    continue
                if part.get("type") == "text":
                    ids += tokenizer.encode(str(part.get("text", "")))
                elif part.get("type") == "image_url":
                    image = part.get("image_url")
                    ids += _image_ids(image.get("url") if isinstance(image, dict) else image,
                                      encoder)
    return ids


def _prompt_text(body: dict[str, Any], chat: bool) -> str:
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ValueError("'messages' must be a non-empty list")
        parts: list[str] = []
        for msg in messages:
            content = msg.get("content") if isinstance(msg, dict) else None
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts += [p.get("text", "") for p in content
                          if isinstance(p, dict) and p.get("type") == "text"]
        return "\n".join(parts)
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        prompt = " ".join(str(p) for p in prompt)
    if not isinstance(prompt, str):
        raise ValueError("'prompt' must be a string")
    return prompt


def create_app(make_scheduler: Callable[[], Scheduler], *, model: str,
               faults: Faults | None = None, max_model_len: int = 131072,
               admission_delay: Callable[[int], float] | None = None,
               vision_encoder: str = "qwen2.5-vl") -> FastAPI:
    """The emulator's web app. The engine loop starts with the app (lifespan).

    ``admission_delay(prompt_tokens)`` is the frontend's time (HTTP, tokenization, templating)
    before the scheduler sees a request; it counts in TTFT but never stalls a running batch.
    """
    faults = faults or Faults()
    tokenizer = BuiltinTokenizer()
    encoder = resolve_encoder(vision_encoder)
    metrics = _Metrics(model)
    rng = random.Random(faults.seed)
    ids = itertools.count()
    state: dict[str, Any] = {}

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = EngineLoop(make_scheduler())
        state["loop"] = loop
        task = asyncio.get_running_loop().create_task(loop.run())
        try:
            yield
        finally:
            task.cancel()

    app = FastAPI(title="slobench engine emulator", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse(state["loop"].health())

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": [
            {"id": model, "object": "model", "created": 0, "owned_by": "slobench",
             "max_model_len": max_model_len}]})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(state["loop"]), media_type=CONTENT_TYPE_LATEST)

    @app.post("/tokenize")
    async def tokenize(request: Request) -> JSONResponse:
        try:
            body = orjson.loads(await request.body())
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            tokens = _prompt_ids(body, "messages" in body, tokenizer, encoder)
        except (orjson.JSONDecodeError, ValueError, TypeError, AttributeError) as exc:
            return _error(400, f"bad /tokenize body: {exc}")
        return JSONResponse({"count": len(tokens), "max_model_len": max_model_len,
                             "tokens": tokens})

    async def complete(request: Request, chat: bool) -> Response:
        try:
            body = orjson.loads(await request.body())
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            token_ids = _prompt_ids(body, chat, tokenizer, encoder)
            max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
            max_tokens = DEFAULT_MAX_TOKENS if max_tokens is None else int(max_tokens)
            if max_tokens < 1:
                raise ValueError("max_tokens must be >= 1")
            opts = body.get("stream_options") or {}
            if not isinstance(opts, dict):  # checked before the engine takes the request
                raise ValueError("'stream_options' must be a JSON object")
        except (orjson.JSONDecodeError, ValueError, TypeError, AttributeError) as exc:
            return _error(400, str(exc))
        for status, p in faults.error_rates.items():
            if rng.random() < p:
                return _error(status, f"injected fault: HTTP {status}", "server_error")
        disconnect_at = (rng.randint(1, max_tokens) if rng.random() < faults.disconnect_rate
                         else None)
        stall_at = rng.randint(1, max_tokens) if rng.random() < faults.stall_rate else None
        if len(token_ids) + max_tokens > max_model_len:
            return _error(400, f"prompt ({len(token_ids)} tokens) + max_tokens ({max_tokens}) "
                          f"exceed the maximum context length {max_model_len}")
        loop: EngineLoop = state["loop"]
        arrival = loop.now()
        if admission_delay is not None:
            await loop.sleep_until(arrival + admission_delay(len(token_ids)))
        rid = f"cmpl-{next(ids)}"
        priority = body.get("priority", 0)  # vLLM's field: lower runs first (--policy priority)
        stream = loop.submit(EngineRequest(
            request_id=rid, prompt_tokens=len(token_ids), max_output_tokens=max_tokens,
            arrival_s=loop.now(), prefix_blocks=prefix_hashes(token_ids),
            priority=priority if isinstance(priority, int) else 0))
        reason = loop.scheduler.reject_reasons.get(rid)
        if reason is not None:  # can never fit this engine: say so, as vLLM does, with a 400
            loop.abort(rid)
            return _error(400, f"request rejected: {reason}")
        if faults.slow_first_byte_s:
            await asyncio.sleep(faults.slow_first_byte_s)
        shape = _Shape(rid, model, chat, len(token_ids), max_tokens)
        if not body.get("stream"):
            return await _whole(loop, stream, shape, metrics, arrival, request)
        return StreamingResponse(
            _sse(loop, stream, shape, metrics, arrival, include_usage=bool(
                opts.get("include_usage")), continuous=bool(opts.get("continuous_usage_stats")),
                disconnect_at=disconnect_at, stall_at=stall_at, stall_s=faults.stall_s),
            media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await complete(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await complete(request, chat=False)

    return app


@dataclass
class _Shape:
    """What every chunk of one response shares."""

    request_id: str
    model: str
    chat: bool
    prompt_tokens: int
    max_tokens: int
    created: int = field(default_factory=lambda: int(time.time()))

    def chunk(self, text: str, finish: str | None, usage: dict[str, int] | None,
              first: bool) -> bytes:
        if self.chat:
            delta: dict[str, Any] = {"content": text}
            if first:
                delta["role"] = "assistant"
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish}
            obj = "text_completion"
        out: dict[str, Any] = {"id": self.request_id, "object": obj, "created": self.created,
                               "model": self.model, "choices": [choice]}
        if usage is not None:
            out["usage"] = usage
        return b"data: " + orjson.dumps(out) + b"\n\n"

    def usage(self, generated: int) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": generated,
                "total_tokens": self.prompt_tokens + generated}


def _words(start: int, n: int) -> str:
    return "".join(f" t{i}" for i in range(start, start + n))


async def _sse(loop: EngineLoop, stream: _Stream, shape: _Shape, metrics: _Metrics,
               arrival: float, *, include_usage: bool, continuous: bool,
               disconnect_at: int | None, stall_at: int | None,
               stall_s: float) -> AsyncIterator[bytes]:
    generated = 0
    try:
        while True:
            item = await stream.queue.get()
            if item is None:
                break
            n, t = item
            if generated == 0:
                metrics.ttft.labels(shape.model).observe(t - arrival)
            finish = "length" if generated + n >= shape.max_tokens else None
            text = _words(generated, n)
            generated += n
            yield shape.chunk(text, finish, shape.usage(generated) if continuous else None,
                              first=generated == n)
            if disconnect_at is not None and generated >= disconnect_at:
                raise InjectedDisconnect("injected fault: disconnect mid-stream")
            if stall_at is not None and generated >= stall_at:
                stall_at = None
                await asyncio.sleep(stall_s)
        if include_usage or continuous:
            out = {"id": shape.request_id, "object": "chat.completion.chunk" if shape.chat
                   else "text_completion", "created": shape.created, "model": shape.model,
                   "choices": [], "usage": shape.usage(generated)}
            yield b"data: " + orjson.dumps(out) + b"\n\n"
        yield b"data: [DONE]\n\n"
        metrics.e2e.labels(shape.model).observe(loop.now() - arrival)
        metrics.success.labels(shape.model).inc()
    finally:  # the client went away (or we dropped it): stop spending engine time on it
        loop.abort(shape.request_id)


async def _until_disconnected(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.2)


async def _whole(loop: EngineLoop, stream: _Stream, shape: _Shape, metrics: _Metrics,
                 arrival: float, request: Request) -> Response:
    async def collect() -> int:
        generated = 0
        while (item := await stream.queue.get()) is not None:
            if generated == 0:
                metrics.ttft.labels(shape.model).observe(item[1] - arrival)
            generated += item[0]
        return generated

    collector = asyncio.ensure_future(collect())
    watcher = asyncio.ensure_future(_until_disconnected(request))
    try:  # a client that hangs up must not keep the engine busy (vLLM aborts these too)
        await asyncio.wait({collector, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        loop.abort(shape.request_id)
    if not collector.done():
        collector.cancel()
        return Response(status_code=499)  # nobody is listening any more
    generated = collector.result()
    metrics.e2e.labels(shape.model).observe(loop.now() - arrival)
    metrics.success.labels(shape.model).inc()
    text = _words(0, generated)
    if shape.chat:
        choice: dict[str, Any] = {"index": 0, "finish_reason": "length",
                                  "message": {"role": "assistant", "content": text}}
        obj = "chat.completion"
    else:
        choice, obj = {"index": 0, "finish_reason": "length", "text": text}, "text_completion"
    return Response(orjson.dumps({"id": shape.request_id, "object": obj,
                                  "created": shape.created, "model": shape.model,
                                  "choices": [choice], "usage": shape.usage(generated)}),
                    media_type="application/json")


async def serve(app: FastAPI, host: str, port: int) -> tuple[str, Callable[[], Any]]:
    """Start uvicorn on host:port (0: a free port); returns the base URL and a stop coroutine."""
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=1)
    logging.getLogger("uvicorn.error").addFilter(_QuietInjectedFaults())
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()  # re-raise the startup error
        await asyncio.sleep(0.01)
    bound = sock.getsockname()[1]
    url_host = f"[{host}]" if ":" in host else host

    async def stop() -> None:
        server.should_exit = True
        await task

    return f"http://{url_host}:{bound}", stop


def parse_error_rates(text: str | None, option: str = "--error-rate") -> dict[int, float]:
    """``429:0.05,503:0.01`` -> {429: 0.05, 503: 0.01}."""
    from slobench.errors import UserError

    rates: dict[int, float] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        code, sep, p = part.partition(":")
        try:
            status, prob = int(code), float(p)
        except ValueError:
            status, prob = 0, -1.0
        if not sep or not 400 <= status <= 599 or not 0 <= prob <= 1:
            raise UserError(f"{option}: '{part.strip()}' is not STATUS:PROBABILITY with a 4xx/5xx "
                            "status and a probability in [0, 1], e.g. 429:0.05,503:0.01")
        rates[status] = prob
    return rates


def main(argv: list[str] | None = None) -> int:
    """``python -m slobench.engine.emulator``: the emulator as a subprocess target."""
    import argparse
    import sys

    from pydantic import ValidationError

    from slobench.engine.config import EngineConfig
    from slobench.engine.process import run_event_loop, serve_until_stopped
    from slobench.errors import UserError

    parser = argparse.ArgumentParser(prog="python -m slobench.engine.emulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--engine", default="{}", help="JSON object of EngineConfig fields")
    parser.add_argument("--faults", default="{}", help="JSON object of Faults fields")
    parser.add_argument("--parent-pid", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        config = EngineConfig.model_validate_json(args.engine)
        raw = orjson.loads(args.faults)
        if not isinstance(raw, dict) or not isinstance(raw.get("error_rates", {}), dict):
            raise ValueError("--faults must be a JSON object of Faults fields")
        raw["error_rates"] = {int(k): float(v) for k, v in raw.get("error_rates", {}).items()}
        faults = Faults(**raw)
        config.validate_all()
        app = create_app(config.make_scheduler, model=config.served_name, faults=faults,
                         max_model_len=config.max_model_len,
                         admission_delay=config.admission_delay_s)
    except (UserError, ValidationError, ValueError, TypeError) as exc:
        print(f"error: {exc}".replace("\n", " "), file=sys.stderr)
        return 2

    async def start() -> tuple[str, Any]:
        return await serve(app, args.host, args.port)

    try:
        run_event_loop(serve_until_stopped(start, args.parent_pid))
    except OSError as exc:
        print(f"error: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


class EmulatorProcess:
    """The emulator in a subprocess (the embedded default target of ``slobench run``)."""

    def __init__(self, config: Any, faults: Faults | None = None, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        from dataclasses import asdict

        from slobench.engine.process import ServerProcess

        self._proc = ServerProcess("slobench.engine.emulator", [
            "--host", host, "--port", str(port), "--engine", config.model_dump_json(),
            "--faults", orjson.dumps(asdict(faults or Faults()),
                                     option=orjson.OPT_NON_STR_KEYS).decode()])
        self._proc.what = "engine emulator"
        self.base_url = ""

    def __enter__(self) -> EmulatorProcess:
        self.base_url = self._proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._proc.stop()

    def stderr_text(self) -> str:
        return self._proc.stderr_text()


if __name__ == "__main__":
    import sys

    sys.exit(main())
