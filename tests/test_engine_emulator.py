"""The engine emulator over real HTTP: OpenAI-compatible answers, vLLM's /metrics, token timing
that follows the step-time model, batching, prefix caching, disconnects, faults and bad input.

Servers run either in a subprocess (``EmulatorProcess``, as ``slobench run`` starts it: the
timing tests use these, so the client's CPU stays out of the server's loop) or in-process with
``serve(create_app(...))`` on port 0 (fault and lag tests, where timing precision is not the
point). Every client is a real aiohttp session; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from slobench.engine.config import EngineConfig
from slobench.engine.emulator import EmulatorProcess, Faults, create_app, serve
from slobench.engine.process import ServerProcess
from slobench.prompts.tokenizer import BuiltinTokenizer

DONE = "[DONE]"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
_unique = itertools.count()


# -- client helpers -------------------------------------------------------------------------------


def unique_prompt(n_tokens: int) -> str:
    """``n_tokens`` words (one built-in token each) that no other prompt in this file shares."""
    tag = next(_unique)
    return " ".join(f"u{tag}w{i}" for i in range(n_tokens))


@dataclass
class Streamed:
    status: int
    headers_s: float  # seconds from sending until the response headers
    events: list[tuple[float, Any]] = field(default_factory=list)  # (s since send, JSON | DONE)
    body: Any = None  # the JSON body of a non-200 answer
    error: BaseException | None = None  # what broke the stream, if anything

    @property
    def chunks(self) -> list[dict[str, Any]]:
        return [ev for _, ev in self.events if ev != DONE]

    @property
    def token_times(self) -> list[float]:
        """One entry per token (a chunk carrying k tokens counts k)."""
        out: list[float] = []
        for t, ev in self.events:
            if ev != DONE and ev["choices"]:
                out += [t] * len(_chunk_text(ev["choices"][0]).split())
        return out

    @property
    def text(self) -> str:
        return "".join(_chunk_text(c["choices"][0]) for c in self.chunks if c["choices"])

    @property
    def done(self) -> bool:
        return bool(self.events) and self.events[-1][1] == DONE


def _chunk_text(choice: dict[str, Any]) -> str:
    return (choice["delta"].get("content") or "") if "delta" in choice else choice["text"]


async def stream(session: aiohttp.ClientSession, url: str, body: dict[str, Any],
                 path: str = CHAT, *, stop_after_tokens: int | None = None) -> Streamed:
    """POST a streaming request and record when every SSE event arrives."""
    t0 = time.perf_counter()
    async with session.post(url + path, json={**body, "stream": True}) as resp:
        out = Streamed(resp.status, time.perf_counter() - t0)
        if resp.status != 200:
            out.body = await resp.json(content_type=None)
            return out
        tokens = 0
        try:
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                ev: Any = DONE if data == b"[DONE]" else orjson.loads(data)
                out.events.append((time.perf_counter() - t0, ev))
                if ev != DONE and ev["choices"]:
                    tokens += len(_chunk_text(ev["choices"][0]).split())
                if stop_after_tokens is not None and tokens >= stop_after_tokens:
                    resp.close()  # hang up mid-stream
                    break
        except aiohttp.ClientPayloadError as exc:
            out.error = exc
        return out


async def post_json(session: aiohttp.ClientSession, url: str, body: Any, path: str = CHAT,
                    ) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with session.post(url + path, data=data,
                            headers={"Content-Type": "application/json"}) as resp:
        return resp.status, await resp.json(content_type=None)


async def get_json(session: aiohttp.ClientSession, url: str, path: str) -> Any:
    async with session.get(url + path) as resp:
        assert resp.status == 200, path
        return await resp.json()


@dataclass
class Scrape:
    values: dict[str, float]  # sample name -> value (histogram buckets left out)
    types: dict[str, str]  # family name -> type
    labels: dict[str, dict[str, str]]

    def __getitem__(self, name: str) -> float:
        return self.values[name]


async def scrape(session: aiohttp.ClientSession, url: str) -> Scrape:
    async with session.get(url + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    values: dict[str, float] = {}
    types: dict[str, str] = {}
    labels: dict[str, dict[str, str]] = {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        for s in fam.samples:
            if "le" not in s.labels:
                values[s.name] = s.value
                labels[s.name] = dict(s.labels)
    return Scrape(values, types, labels)


async def wait_idle(session: aiohttp.ClientSession, url: str, timeout_s: float = 3.0) -> Scrape:
    deadline = time.monotonic() + timeout_s
    while True:
        m = await scrape(session, url)
        if m["vllm:num_requests_running"] == 0 and m["vllm:num_requests_waiting"] == 0:
            return m
        assert time.monotonic() < deadline, f"engine still busy: {m.values}"
        await asyncio.sleep(0.02)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@contextlib.asynccontextmanager
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@contextlib.asynccontextmanager
async def in_process(config: EngineConfig | None = None, faults: Faults | None = None,
                     ) -> AsyncIterator[str]:
    """The emulator on 127.0.0.1, port 0, in this event loop."""
    config = config or EngineConfig()
    app = create_app(config.make_scheduler, model=config.served_name, faults=faults,
                     max_model_len=config.max_model_len,
                     admission_delay=config.admission_delay_s)
    url, stop = await serve(app, "127.0.0.1", 0)
    try:
        yield url
    finally:
        await stop()


def median_of(xs: list[float]) -> float:
    return statistics.median(xs)


# -- servers --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def emu() -> Any:
    """The default deployment (Llama-3.1-8B, one H100) in a subprocess, warmed up."""
    config = EngineConfig()
    with EmulatorProcess(config) as proc:

        async def warm() -> None:
            async with client() as s:
                r = await stream(s, proc.base_url, {"prompt": "warm up", "max_tokens": 4},
                                 COMPLETIONS)
                assert r.done, proc.stderr_text()

        run(warm())
        yield proc.base_url, config
        assert "Traceback" not in proc.stderr_text(), proc.stderr_text()


@pytest.fixture(scope="module")
def batch_emu(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A deployment where every sequence in a step costs 3 ms, so batch size shows plainly."""
    factors = tmp_path_factory.mktemp("emu") / "factors.json"
    factors.write_text(json.dumps({"seq_overhead_s": 0.003}))
    config = EngineConfig(factors=str(factors))
    with EmulatorProcess(config) as proc:
        yield proc.base_url, config


# -- the OpenAI surface ---------------------------------------------------------------------------


def test_models(emu):
    url, config = emu

    async def go() -> None:
        async with client() as s:
            models = await get_json(s, url, "/v1/models")
        assert models["object"] == "list"
        assert [m["id"] for m in models["data"]] == ["llama-3.1-8b"] == [config.served_name]
        assert models["data"][0]["max_model_len"] == config.max_model_len == 131072

    run(go())


def _health_after_light_load() -> dict[str, Any]:
    """A fresh emulator, two rounds of 4 concurrent requests, then GET /health."""
    with EmulatorProcess(EngineConfig()) as proc:

        async def go() -> dict[str, Any]:
            async with client() as s:
                assert await get_json(s, proc.base_url, "/health") == {
                    "steps": 0, "late_steps": 0, "lag_max_s": 0.0, "lag_total_s": 0.0,
                    "keeping_real_time": True}
                for _ in range(2):
                    rs = await asyncio.gather(*[stream(s, proc.base_url, {
                        "prompt": unique_prompt(100), "max_tokens": 20}, COMPLETIONS)
                        for _ in range(4)])
                    assert all(r.done and len(r.token_times) == 20 for r in rs)
                return await get_json(s, proc.base_url, "/health")

        return run(go())


def test_health_keeps_real_time_at_light_load():
    """At 4 concurrent requests the emulator keeps real time. A step counts as late when it
    ends more than 2 ms behind schedule, so a busy machine can make a few steps late: then the
    flag must still agree with the counts, lateness must stay rare and small, and one retry on a
    fresh server is allowed before giving up with a skip that says why."""
    for _ in range(2):
        health = _health_after_light_load()
        assert set(health) == {"steps", "late_steps", "lag_max_s", "lag_total_s",
                               "keeping_real_time"}
        assert health["steps"] >= 40  # 2 x 20 decode steps at least
        assert health["keeping_real_time"] is (
            health["late_steps"] <= max(1, health["steps"] // 100)), health
        assert health["late_steps"] < health["steps"] // 2, health  # not systematically late
        assert health["lag_max_s"] < 0.25, health
        if health["keeping_real_time"]:
            return
    pytest.skip(f"this machine is too busy for the emulator to keep real time: {health}")


def test_tokenize_counts_like_the_builtin_tokenizer(emu):
    url, _ = emu
    tok = BuiltinTokenizer()
    text = "Hello, world! It's 3.14 degrees -- isn't it? (yes)"
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": text},
                {"role": "user", "content": [{"type": "text", "text": "and more"},
                                             {"type": "image_url", "image_url": {"url": "x"}}]}]

    async def go() -> None:
        async with client() as s:
            status, body = await post_json(s, url, {"prompt": text}, "/tokenize")
            assert status == 200
            assert body["count"] == tok.count(text) == 21  # words and punctuation marks
            assert body["tokens"] == tok.encode(text)
            assert body["max_model_len"] == 131072

            status, body = await post_json(s, url, {"messages": messages}, "/tokenize")
            assert status == 200
            # an image that is not a PNG data URL costs one token (see the image test below)
            assert body["count"] == tok.count("Be brief.\n" + text + "\nand more") + 1
            # a chat request's usage counts its prompt the same way
            r = await stream(s, url, {"messages": messages, "max_tokens": 2,
                                      "stream_options": {"include_usage": True}})
            assert r.chunks[-1]["usage"]["prompt_tokens"] == body["count"]

    run(go())


def test_images_count_as_the_vision_encoder_says(emu):
    from slobench.prompts.images import ENCODERS, ImagePrompter

    url, _ = emu
    prompter = ImagePrompter("qwen2.5-vl", nonce="t")
    out = prompter.parts("Describe it.", [258, 1000], seed="r1")
    messages = [{"role": "user", "content": out.parts}]

    async def go() -> None:
        async with client() as s:
            status, body = await post_json(s, url, {"messages": messages}, "/tokenize")
            assert status == 200
            assert body["count"] == BuiltinTokenizer().count("Describe it.") + out.tokens
            assert out.image_tokens == [ENCODERS["qwen2.5-vl"].fit(n, None).tokens
                                        for n in (258, 1000)]

    run(go())


def test_streaming_chat_gives_exactly_max_tokens_with_usage(emu):
    url, _ = emu
    prompt = unique_prompt(40)

    async def go() -> None:
        async with client() as s:
            r = await stream(s, url, {"model": "llama-3.1-8b", "max_tokens": 17,
                                      "messages": [{"role": "user", "content": prompt}],
                                      "stream_options": {"include_usage": True}})
        assert r.status == 200 and r.error is None
        assert r.done and [ev for _, ev in r.events].count(DONE) == 1
        content, final = r.chunks[:-1], r.chunks[-1]
        assert len(r.token_times) == 17
        assert r.text.split() == [f"t{i}" for i in range(17)]
        assert content[0]["choices"][0]["delta"]["role"] == "assistant"
        assert all(c["object"] == "chat.completion.chunk" for c in r.chunks)
        assert all(c["model"] == "llama-3.1-8b" for c in r.chunks)
        assert len({c["id"] for c in r.chunks}) == 1
        assert [c["choices"][0]["finish_reason"] for c in content] == [None] * 16 + ["length"]
        assert all("usage" not in c for c in content)  # only with continuous_usage_stats
        assert final["choices"] == []
        assert final["usage"] == {"prompt_tokens": 40, "completion_tokens": 17,
                                  "total_tokens": 57}

    run(go())


def test_streaming_completions_with_continuous_usage(emu):
    url, _ = emu

    async def go() -> None:
        async with client() as s:
            r = await stream(s, url, {"prompt": unique_prompt(25), "max_tokens": 12,
                                      "stream_options": {"include_usage": True,
                                                         "continuous_usage_stats": True}},
                             COMPLETIONS)
            plain = await stream(s, url, {"prompt": "no usage asked", "max_tokens": 5},
                                 COMPLETIONS)
        assert r.done and r.error is None
        content = [c for c in r.chunks if c["choices"]]
        assert all(c["object"] == "text_completion" for c in r.chunks)
        assert len(r.token_times) == 12
        # cumulative usage on every chunk
        assert [c["usage"]["completion_tokens"] for c in content] == list(range(1, 13))
        assert all(c["usage"]["prompt_tokens"] == 25 for c in content)
        assert all(c["usage"]["total_tokens"] == 25 + c["usage"]["completion_tokens"]
                   for c in content)
        assert content[-1]["choices"][0]["finish_reason"] == "length"
        assert r.chunks[-1]["choices"] == [] and r.chunks[-1]["usage"]["completion_tokens"] == 12
        # without stream_options: no usage anywhere, still [DONE] and exactly max_tokens
        assert plain.done and len(plain.token_times) == 5
        assert all("usage" not in c for c in plain.chunks)

    run(go())


def test_non_streaming_chat_and_completions(emu):
    url, _ = emu

    async def go() -> None:
        async with client() as s:
            status, chat = await post_json(s, url, {
                "messages": [{"role": "user", "content": unique_prompt(30)}],
                "max_completion_tokens": 9})
            assert status == 200
            assert chat["object"] == "chat.completion"
            choice = chat["choices"][0]
            assert choice["finish_reason"] == "length"
            assert choice["message"]["role"] == "assistant"
            assert len(choice["message"]["content"].split()) == 9
            assert chat["usage"] == {"prompt_tokens": 30, "completion_tokens": 9,
                                     "total_tokens": 39}

            status, comp = await post_json(s, url, {"prompt": unique_prompt(12),
                                                    "max_tokens": 6}, COMPLETIONS)
            assert status == 200
            assert comp["object"] == "text_completion"
            assert comp["choices"][0]["finish_reason"] == "length"
            assert len(comp["choices"][0]["text"].split()) == 6
            assert comp["usage"]["completion_tokens"] == 6
            assert comp["usage"]["prompt_tokens"] == 12

    run(go())


# -- timing against the model ---------------------------------------------------------------------


def test_idle_engine_timing_follows_the_cost_model(emu):
    """TTFT on an idle engine = frontend delay + prefill step(s); then one token per decode step.
    Tokens never arrive before the model says they exist."""
    url, config = emu
    cm = config.cost_model
    n_out = 48

    async def go() -> None:
        async with client() as s:
            await wait_idle(s, url)
            for prompt_tokens in (256, 4000):
                ttfts, gaps = [], []
                for _ in range(3):
                    r = await stream(s, url, {"prompt": unique_prompt(prompt_tokens),
                                              "max_tokens": n_out}, COMPLETIONS)
                    times = r.token_times
                    assert len(times) == n_out
                    ttfts.append(times[0])
                    gaps.append((times[-1] - times[0]) / (n_out - 1))
                est = cm.ttft_estimate_s(prompt_tokens)
                assert est == pytest.approx(cm.admission_delay_s(prompt_tokens)
                                            + cm.prefill_step_s(prompt_tokens))
                assert min(ttfts) >= est - 0.001, (prompt_tokens, ttfts, est)  # never early
                assert abs(median_of(ttfts) - est) <= max(0.25 * est, 0.015), (
                    prompt_tokens, ttfts, est)
                # step k (k >= 1) decodes the k-th token after prompt_tokens + k - 1 cached ones
                want = statistics.fmean(cm.decode_step_s(1, prompt_tokens + k - 1)
                                        for k in range(1, n_out))
                assert abs(median_of(gaps) - want) <= 0.25 * want, (prompt_tokens, gaps, want)

    run(go())


def test_parallel_streams_all_complete_and_steps_slow_with_batch_size(batch_emu):
    url, config = batch_emu
    cm = config.cost_model
    n_out, prompt_tokens = 40, 200

    async def batch(s: aiohttp.ClientSession, n: int) -> tuple[list[Streamed], Scrape | None]:
        async def mid_scrape() -> Scrape | None:
            if n == 1:
                return None
            await asyncio.sleep(0.45)  # all prefilled, none finished (40 steps of ~30 ms)
            return await scrape(s, url)

        *rs, m = await asyncio.gather(*[stream(s, url, {"prompt": unique_prompt(prompt_tokens),
                                                        "max_tokens": n_out}, COMPLETIONS)
                                        for _ in range(n)], mid_scrape())
        return rs, m

    def mid_gap(r: Streamed) -> float:  # steps that decode tokens 12..31: all in decode by then
        t = r.token_times
        return (t[30] - t[10]) / 20

    async def go() -> None:
        async with client() as s:
            (single,), _ = await batch(s, 1)
            eight, mid = await batch(s, 8)
            health = await get_json(s, url, "/health")
        assert mid is not None and mid["vllm:num_requests_running"] == 8
        for r in [single, *eight]:
            assert r.done and r.error is None and len(r.token_times) == n_out
            assert r.chunks[-1]["choices"][0]["finish_reason"] == "length"
        want1 = cm.decode_step_s(1, prompt_tokens + 20)
        want8 = cm.decode_step_s(8, prompt_tokens + 20)
        assert want8 > 2 * want1  # the model says more sequences -> slower steps
        got1 = mid_gap(single)
        got8 = median_of([mid_gap(r) for r in eight])
        assert abs(got1 - want1) <= 0.25 * want1, (got1, want1)
        assert abs(got8 - want8) <= 0.25 * want8, (got8, want8)
        assert got8 / got1 == pytest.approx(want8 / want1, rel=0.25)
        assert health["late_steps"] < health["steps"] // 2, health  # not systematically late

    run(go())


# -- /metrics -------------------------------------------------------------------------------------


VLLM_METRICS = {
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:gpu_cache_usage_perc": "gauge",
    # counters: the family's name drops "_total"; the series keep it (vllm:prompt_tokens_total)
    "vllm:prompt_tokens": "counter",
    "vllm:generation_tokens": "counter",
    "vllm:num_preemptions": "counter",
    "vllm:prefix_cache_queries": "counter",
    "vllm:prefix_cache_hits": "counter",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
}


def test_metrics_use_vllm_names_and_count_requests(emu):
    url, config = emu
    lengths = [(31, 10), (57, 20), (12, 30)]  # (prompt tokens, max_tokens)

    async def go() -> None:
        async with client() as s:
            before = await wait_idle(s, url)
            r1 = stream(s, url, {"prompt": unique_prompt(lengths[0][0]),
                                 "max_tokens": lengths[0][1]}, COMPLETIONS)
            r2 = stream(s, url, {"messages": [{"role": "user",
                                               "content": unique_prompt(lengths[1][0])}],
                                 "max_tokens": lengths[1][1]})
            r3 = post_json(s, url, {"prompt": unique_prompt(lengths[2][0]),
                                    "max_tokens": lengths[2][1]}, COMPLETIONS)
            a, b, (status, _) = await asyncio.gather(r1, r2, r3)
            assert a.done and b.done and status == 200
            after = await wait_idle(s, url)
            text = await (await s.get(url + "/metrics")).text()
        for name, kind in VLLM_METRICS.items():
            assert name in after.types, f"{name} missing from /metrics"
            if kind:
                assert after.types[name] == kind, name
        assert "# TYPE vllm:time_to_first_token_seconds histogram" in text
        assert 'vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="llama-3.1-8b"}' in text
        assert after.labels["vllm:num_requests_running"] == {"model_name": config.served_name}

        def delta(name: str) -> float:
            return after[name] - before.values.get(name, 0.0)

        assert delta("vllm:generation_tokens_total") == sum(o for _, o in lengths)
        assert delta("vllm:prompt_tokens_total") == sum(p for p, _ in lengths)
        assert delta("vllm:time_to_first_token_seconds_count") == 3
        assert delta("vllm:e2e_request_latency_seconds_count") == 3
        assert delta("vllm:request_success_total") == 3
        # each TTFT is at least the frontend delay, and far below a second when idle
        mean_ttft = delta("vllm:time_to_first_token_seconds_sum") / 3
        assert config.cost_model.admission_delay_s(10) <= mean_ttft < 0.5
        assert after["vllm:kv_cache_usage_perc"] == 0.0  # nothing holds blocks when idle
        assert after["slobench_emulator_late_steps"] >= 0

    run(go())


def test_prefix_caching_hits_and_shortens_ttft(emu):
    url, config = emu
    cm = config.cost_model
    n = 1600
    hits = "vllm:prefix_cache_hits_total"
    queries = "vllm:prefix_cache_queries_total"

    async def go() -> None:
        firsts, seconds = [], []
        async with client() as s:
            await wait_idle(s, url)
            for _ in range(3):
                prompt = unique_prompt(n)
                m0 = await scrape(s, url)
                a = await stream(s, url, {"prompt": prompt, "max_tokens": 4}, COMPLETIONS)
                m1 = await scrape(s, url)
                b = await stream(s, url, {"prompt": prompt, "max_tokens": 4}, COMPLETIONS)
                m2 = await scrape(s, url)
                assert a.done and b.done
                assert m1[queries] - m0[queries] >= n and m2[queries] - m1[queries] >= n
                assert m1[hits] == m0[hits]  # a fresh prompt hits nothing
                assert m2[hits] - m1[hits] >= n - 2 * config.block_size  # all but the last block
                firsts.append(a.token_times[0])
                seconds.append(b.token_times[0])
        # the second prefill skips the cached blocks, and the time shows it
        saved = cm.prefill_step_s(n) - cm.prefill_step_s(16, n - 16)
        assert saved > 0.02
        assert median_of(firsts) - median_of(seconds) >= 0.5 * saved, (firsts, seconds, saved)

    run(go())


def test_client_disconnect_frees_the_request(emu):
    url, _ = emu
    gen = "vllm:generation_tokens_total"

    async def go() -> None:
        async with client() as s:
            await wait_idle(s, url)
            task = asyncio.ensure_future(stream(s, url, {"prompt": unique_prompt(50),
                                                         "max_tokens": 4000},
                                                COMPLETIONS, stop_after_tokens=1_000_000))
            deadline = time.monotonic() + 3
            while True:  # mid-stream (4000 tokens take ~25 s)
                mid = await scrape(s, url)
                if mid[gen] and mid["vllm:num_requests_running"] == 1:
                    break
                assert time.monotonic() < deadline, mid.values
                await asyncio.sleep(0.02)
            assert mid["vllm:kv_cache_usage_perc"] > 0
            task.cancel()  # the client goes away
            with contextlib.suppress(asyncio.CancelledError):
                await task
            idle = await wait_idle(s, url, timeout_s=2.0)
            assert idle["vllm:kv_cache_usage_perc"] == 0.0
            await asyncio.sleep(0.1)
            later = await scrape(s, url)
            assert later[gen] == idle[gen]  # no engine time spent on it any more
            assert later[gen] < 4000

    run(go())


def test_hanging_up_mid_stream_from_the_client_side(emu):
    """Closing the response after a few tokens (no task cancellation) frees it just the same."""
    url, _ = emu

    async def go() -> None:
        async with client() as s:
            r = await stream(s, url, {"prompt": unique_prompt(20), "max_tokens": 3000},
                             COMPLETIONS, stop_after_tokens=5)
            assert len(r.token_times) == 5 and not r.done
            await wait_idle(s, url, timeout_s=2.0)

    run(go())


def test_non_streaming_disconnect_frees_the_request():
    async def go() -> None:
        async with in_process() as url, client() as s:
            with contextlib.suppress(asyncio.TimeoutError):
                await s.post(url + COMPLETIONS, json={"prompt": "hi", "max_tokens": 3000},
                             timeout=aiohttp.ClientTimeout(total=0.4))
            await wait_idle(s, url, timeout_s=1.5)

    run(go())


def test_request_beyond_the_kv_cache_is_a_400():
    config = EngineConfig(model="llama-3.1-70b", tp=2)  # 31k tokens of KV < max_model_len
    assert config.cost_model.kv_capacity_tokens() < 40_000 < config.max_model_len

    async def go() -> None:
        async with in_process(config) as url, client() as s:
            status, body = await post_json(s, url, {"prompt": "a " * 40_000, "max_tokens": 10},
                                           COMPLETIONS)
            assert status == 400, body
            assert body["error"]["message"]

    run(go())


# -- falling behind real time ---------------------------------------------------------------------


def test_falling_behind_is_counted_and_reported():
    """Block the process's event loop three times mid-stream: the engine notices each late step,
    /health stops claiming real time, /metrics shows the lag."""
    block_s = 0.03

    async def go() -> None:
        async with in_process() as url, client() as s:
            h0 = await get_json(s, url, "/health")
            assert h0 == {"steps": 0, "late_steps": 0, "lag_max_s": 0.0, "lag_total_s": 0.0,
                          "keeping_real_time": True}
            t0 = time.perf_counter()
            async with s.post(url + COMPLETIONS, json={"prompt": "x", "max_tokens": 30,
                                                       "stream": True}) as resp:
                n = 0
                async for line in resp.content:
                    if line.startswith(b"data: {"):
                        n += 1
                        if n in (5, 10, 15):
                            time.sleep(block_s)  # blocks the server's loop too (one process)
            elapsed = time.perf_counter() - t0
            health = await get_json(s, url, "/health")
            m = await scrape(s, url)
        assert n == 30
        assert health["late_steps"] >= 3, health
        assert health["lag_max_s"] >= block_s - 0.01, health
        assert health["keeping_real_time"] is False, health
        assert m["slobench_emulator_late_steps"] == health["late_steps"]
        assert m["slobench_emulator_lag_max_seconds"] == pytest.approx(health["lag_max_s"])
        # the lost time is not made up later (no burst of tokens "from the past"): each block
        # delays the rest of the stream by the block less the step it interrupted
        cm = EngineConfig().cost_model
        step = cm.decode_step_s(1, 1)
        assert elapsed >= cm.ttft_estimate_s(1) + 29 * step + 3 * (block_s - step - 0.002)

    run(go())


# -- faults ---------------------------------------------------------------------------------------


def test_injected_error_rates_answer_with_json_errors():
    faults = Faults(error_rates={429: 0.5, 503: 1.0}, seed=7)

    async def go() -> None:
        async with in_process(faults=faults) as url, client() as s:
            seen = []
            for i in range(16):
                path = CHAT if i % 2 else COMPLETIONS
                body = ({"messages": [{"role": "user", "content": "hi"}]} if path == CHAT
                        else {"prompt": "hi"})
                r = await stream(s, url, {**body, "max_tokens": 5}, path)
                assert r.status in (429, 503)
                err = r.body["error"]
                assert err["code"] == r.status and str(r.status) in err["message"]
                assert err["type"] == "server_error"
                seen.append(r.status)
            assert set(seen) == {429, 503}
            m = await scrape(s, url)
            assert m["vllm:generation_tokens_total"] == 0  # failed requests never ran

    run(go())


def test_injected_disconnect_breaks_the_stream_and_slow_first_byte_delays_headers():
    faults = Faults(disconnect_rate=1.0, slow_first_byte_s=0.3, seed=3)

    async def go() -> None:
        async with in_process(faults=faults) as url, client() as s:
            for _ in range(3):
                r = await stream(s, url, {"prompt": unique_prompt(10), "max_tokens": 30,
                                          "stream_options": {"include_usage": True}},
                                 COMPLETIONS)
                assert r.status == 200
                assert r.headers_s >= 0.3
                assert isinstance(r.error, aiohttp.ClientPayloadError)  # a torn chunked body
                assert not r.done and not any("usage" in c for c in r.chunks)
                assert 1 <= len(r.token_times) <= 30
            t0 = time.perf_counter()
            status, _ = await post_json(s, url, {"prompt": "x", "max_tokens": 2}, COMPLETIONS)
            assert status == 200 and time.perf_counter() - t0 >= 0.3
            await wait_idle(s, url)  # the dropped streams were aborted in the engine

    run(go())


def test_injected_stall_pauses_the_stream_once():
    faults = Faults(stall_rate=1.0, stall_s=0.25)

    async def go() -> None:
        async with in_process(faults=faults) as url, client() as s:
            r = await stream(s, url, {"prompt": "x", "max_tokens": 20}, COMPLETIONS)
        assert r.done and len(r.token_times) == 20
        gaps = [b - a for a, b in itertools.pairwise([0.0, *r.token_times])]
        assert max(gaps) >= 0.25
        assert sum(g >= 0.2 for g in gaps) == 1

    run(go())


# -- bad requests ---------------------------------------------------------------------------------


BAD_REQUESTS = [
    (CHAT, b"{not json", ""),
    (CHAT, b"[1, 2]", "object"),
    (CHAT, {"model": "m", "max_tokens": 5}, "messages"),
    (CHAT, {"messages": [], "max_tokens": 5}, "messages"),
    (CHAT, {"messages": "hello"}, "messages"),
    (COMPLETIONS, {"max_tokens": 5}, "prompt"),
    (COMPLETIONS, {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    (COMPLETIONS, {"prompt": "hi", "max_tokens": -3}, "max_tokens"),
    (COMPLETIONS, {"prompt": "hi", "max_tokens": "many"}, "many"),
    (COMPLETIONS, {"prompt": "a " * 131_073, "max_tokens": 1}, "131073"),
    (CHAT, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 131_072},
     "maximum context length"),
    ("/tokenize", b"nope", "/tokenize"),
]


@pytest.mark.parametrize(("path", "body", "needle"), BAD_REQUESTS,
                         ids=[f"{p}-{n or 'invalid json'}" for p, _, n in BAD_REQUESTS])
def test_bad_requests_get_400_with_a_json_error(emu, path, body, needle):
    url, _ = emu

    async def go() -> None:
        async with client() as s:
            before = await scrape(s, url)
            for stream_flag in (False, True):
                b = body
                if isinstance(b, dict) and path != "/tokenize":
                    b = {**b, "stream": stream_flag}
                status, answer = await post_json(s, url, b, path)
                assert status == 400, answer
                err = answer["error"]
                assert err["code"] == 400 and err["type"] == "invalid_request_error"
                assert err["message"] and needle.lower() in err["message"].lower(), err["message"]
            after = await scrape(s, url)
            assert after["vllm:num_requests_waiting"] == after["vllm:num_requests_running"] == 0
            assert after["vllm:prompt_tokens_total"] == before["vllm:prompt_tokens_total"]

    run(go())


# -- the process and the command line -------------------------------------------------------------


def test_bad_engine_exits_2_with_one_error_line():
    proc = subprocess.run([sys.executable, "-m", "slobench.engine.emulator",
                           "--engine", '{"gpu": "h1000"}'], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "h1000" in lines[0] and "h100-sxm" in lines[0]  # names the bad one and the catalog


def _non_loopback_ipv4() -> str | None:
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks a route
        ip = s.getsockname()[0]
        return None if ip.startswith("127.") else ip
    return None


def test_default_bind_address_is_loopback():
    srv = ServerProcess("slobench.engine.emulator", [])  # no --host: the module's default
    with srv:
        assert srv.base_url.startswith("http://127.0.0.1:"), srv.base_url
        port = int(srv.base_url.rsplit(":", 1)[1])
        ip = _non_loopback_ipv4()
        if ip is not None:  # not reachable from other machines
            with pytest.raises(OSError), socket.create_connection((ip, port), timeout=1):
                pass
    assert inspect.signature(EmulatorProcess).parameters["host"].default == "127.0.0.1"
    from slobench.cli.emulate import emulate

    assert inspect.signature(emulate).parameters["host"].default.default == "127.0.0.1"


def test_slobench_emulate_serves_70b_on_four_h100s(tmp_path: Path):
    """The documented example: `slobench emulate --model llama-3.1-70b --gpu h100 --tp 4`."""
    proc = subprocess.Popen([sys.executable, "-m", "slobench", "emulate", "--model",
                             "llama-3.1-70b", "--gpu", "h100", "--tp", "4", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("LISTENING http://127.0.0.1:"), (line, proc.stderr)
        url = line.split()[1]
        cm = EngineConfig(model="llama-3.1-70b", tp=4).cost_model

        async def go() -> None:
            async with client() as s:
                models = await get_json(s, url, "/v1/models")
                assert models["data"][0]["id"] == "llama-3.1-70b"
                await stream(s, url, {"prompt": "warm", "max_tokens": 2}, COMPLETIONS)
                ttfts, gaps = [], []
                for _ in range(3):
                    r = await stream(s, url, {"prompt": unique_prompt(256), "max_tokens": 20},
                                     COMPLETIONS)
                    t = r.token_times
                    assert len(t) == 20
                    ttfts.append(t[0])
                    gaps.append((t[-1] - t[0]) / 19)
            want_gap = cm.decode_step_s(1, 256 + 10)  # 14.6 ms: 70B on 4 x H100, not 8B on 1
            assert abs(median_of(gaps) - want_gap) <= 0.25 * want_gap, (gaps, want_gap)
            want_ttft = cm.ttft_estimate_s(256)
            assert abs(median_of(ttfts) - want_ttft) <= max(0.25 * want_ttft, 0.015), ttfts

        run(go())
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "llama-3.1-70b" in err and "Traceback" not in err


def test_slobench_run_without_target_records_the_emulator_health(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "slobench", "run", "-n", "6", "-r", "20",
                           "--input-tokens", "64", "--output-tokens", "8", "--out", "runs",
                           "-q"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "100"})
    assert proc.returncode == 0, proc.stderr
    assert "built-in engine emulator at http://127.0.0.1:" in proc.stderr.replace("\n", " ")
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    emulator = manifest["emulator"]
    assert emulator["steps"] >= 8  # at least one request's 8 tokens
    assert emulator["keeping_real_time"] is (
        emulator["late_steps"] <= max(1, emulator["steps"] // 100)), emulator
    assert emulator["lag_max_s"] >= 0
    assert {"late_steps", "lag_max_s"} <= set(emulator)


def test_injected_disconnects_do_not_flood_the_log():
    import urllib.request

    from slobench.engine.emulator import EmulatorProcess, Faults

    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                       "max_tokens": 8, "stream": True}).encode()
    with EmulatorProcess(EngineConfig(), Faults(disconnect_rate=1.0)) as emu:
        for _ in range(3):
            req = urllib.request.Request(emu.base_url + "/v1/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
            with contextlib.suppress(Exception), urllib.request.urlopen(req, timeout=10) as r:
                r.read()
        time.sleep(0.3)
        assert "Traceback" not in emu.stderr_text()
