"""The scripted OpenAI-compatible server, driven over real HTTP with raw aiohttp requests."""

from __future__ import annotations

import asyncio
import http.client
import itertools
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest

from slobench.engine.scripted import Script, ScriptedServerProcess, start_in_loop

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


@dataclass
class Result:
    """What a client saw: status, parsed SSE events with arrival times, and how it ended."""

    status: int = 0
    headers_s: float | None = None  # seconds from send to response headers
    events: list[dict[str, Any]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # seconds from send, one per event
    malformed: list[bytes] = field(default_factory=list)
    done: bool = False
    body: bytes = b""
    error: BaseException | None = None
    end_s: float = 0.0

    @property
    def token_chunks(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["choices"]]

    @property
    def chunk_times(self) -> list[float]:
        return [t for e, t in zip(self.events, self.times, strict=True) if e["choices"]]


async def _request(url: str, path: str, body: dict[str, Any], *, timeout_s: float = 15.0) -> Result:
    res = Result()
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        t0 = time.perf_counter()
        try:
            async with session.get(url + "/health") as warm:  # time only the request itself
                await warm.read()
            t0 = time.perf_counter()
            async with session.post(url + path, json=body) as resp:
                res.status = resp.status
                res.headers_s = time.perf_counter() - t0
                if resp.content_type != "text/event-stream":
                    res.body = await resp.read()
                else:
                    async for raw in resp.content:
                        line = raw.strip()
                        if not line.startswith(b"data:"):
                            continue
                        data = line[5:].strip()
                        if data == b"[DONE]":
                            res.done = True
                            continue
                        try:
                            event = orjson.loads(data)
                        except orjson.JSONDecodeError:
                            res.malformed.append(data)
                            continue
                        res.events.append(event)
                        res.times.append(time.perf_counter() - t0)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            res.error = exc
        res.end_s = time.perf_counter() - t0
    return res


def request(url: str, path: str, body: dict[str, Any], **kw: Any) -> Result:
    return asyncio.run(_request(url, path, body, **kw))


def chat(url: str, script: dict[str, Any] | None = None, **body: Any) -> Result:
    payload: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi there"}]}
    payload.update(body)
    if script is not None:
        payload["slobench_script"] = script
    return request(url, CHAT, payload)


def get_json(url: str, path: str, method: str = "GET") -> tuple[int, Any]:
    async def go() -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session, session.request(method, url + path) as r:
            return r.status, orjson.loads(await r.read())

    return asyncio.run(go())


def words(text: str) -> list[str]:
    return text.split()


def content_of(chunk: dict[str, Any]) -> str:
    choice = chunk["choices"][0]
    return choice["delta"].get("content", "") if "delta" in choice else choice["text"]


@pytest.fixture(scope="module")
def server() -> Any:
    """One server for tests that script each request through ``slobench_script``."""
    with ScriptedServerProcess({"ttft_s": 0.02, "tpot_s": 0.002}) as srv:
        yield srv
        assert "Traceback" not in srv.stderr_text(), srv.stderr_text()


@pytest.fixture
def url(server: ScriptedServerProcess) -> str:
    server.reset_stats()
    return server.base_url


# --------------------------------------------------------------------------------------------
# format, token counts, chunking


def test_stream_chat_format_and_token_count(url: str) -> None:
    res = chat(url, stream=True, max_tokens=7)
    assert res.status == 200 and res.error is None and res.done
    chunks = res.token_chunks
    assert len(chunks) == len(res.events) == 7  # no usage unless asked for
    assert [content_of(c) for c in chunks] == [f" w{i}" for i in range(7)]
    for c in chunks:
        assert c["object"] == "chat.completion.chunk"
        assert c["id"] == chunks[0]["id"] and c["model"] == "scripted-model"
        assert isinstance(c["created"], int) and c["choices"][0]["index"] == 0
        assert "usage" not in c
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "role" not in chunks[1]["choices"][0]["delta"]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 6 + ["length"]


def test_stream_completions_format(url: str) -> None:
    body = {"model": "m", "prompt": "one two three", "max_tokens": 5, "stream": True}
    body["stream_options"] = {"include_usage": True}
    res = request(url, COMPLETIONS, body)
    assert res.status == 200 and res.done
    chunks = res.token_chunks
    assert all(c["object"] == "text_completion" for c in res.events)
    assert "".join(c["choices"][0]["text"] for c in chunks) == " w0 w1 w2 w3 w4"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    usage = res.events[-1]["usage"]
    assert res.events[-1]["choices"] == []
    assert usage == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}


@pytest.mark.parametrize(("n", "k", "sizes"), [(10, 3, [3, 3, 3, 1]), (8, 4, [4, 4]), (2, 5, [2])])
def test_multi_token_chunks(url: str, n: int, k: int, sizes: list[int]) -> None:
    res = chat(url, {"tokens_per_chunk": k, "output_tokens": n}, stream=True, max_tokens=100)
    assert [len(words(content_of(c))) for c in res.token_chunks] == sizes
    text = "".join(content_of(c) for c in res.token_chunks)
    assert words(text) == [f"w{i}" for i in range(n)]
    assert res.token_chunks[-1]["choices"][0]["finish_reason"] == "stop"  # n < max_tokens


def test_output_tokens_defaults(url: str) -> None:
    assert len(chat(url, stream=True).token_chunks) == 16  # no max_tokens at all
    res = chat(url, stream=True, max_completion_tokens=4)
    assert len(res.token_chunks) == 4
    assert res.token_chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert len(chat(url, {"output_tokens": 3}, stream=True, max_tokens=50).token_chunks) == 3


def test_zero_output_tokens(url: str) -> None:
    res = chat(url, {"output_tokens": 0}, stream=True, stream_options={"include_usage": True})
    assert res.done and len(res.token_chunks) == 1
    assert content_of(res.token_chunks[0]) == ""
    assert res.events[-1]["usage"]["completion_tokens"] == 0


@pytest.mark.parametrize("field_name", ["reasoning_content", "reasoning"])
def test_reasoning_deltas(url: str, field_name: str) -> None:
    script = {"reasoning_tokens": 3, "tokens_per_chunk": 2, "reasoning_field": field_name}
    res = chat(url, script, stream=True, max_tokens=6, stream_options={"include_usage": True})
    deltas = [c["choices"][0]["delta"] for c in res.token_chunks]
    other = "reasoning" if field_name == "reasoning_content" else "reasoning_content"
    assert all(other not in d for d in deltas)
    reasoning = "".join(d.get(field_name, "") for d in deltas)
    content = "".join(d.get("content", "") for d in deltas)
    assert words(reasoning) == ["r0", "r1", "r2"]
    assert words(content) == ["w3", "w4", "w5"]
    assert field_name in deltas[0] and "content" not in deltas[0]
    assert field_name in deltas[1] and "content" in deltas[1]  # this chunk spans the boundary
    usage = res.events[-1]["usage"]
    assert usage["completion_tokens"] == 6
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 3}


# --------------------------------------------------------------------------------------------
# usage modes


def test_usage_auto_follows_stream_options(url: str) -> None:
    assert all("usage" not in e for e in chat(url, stream=True, max_tokens=3).events)

    res = chat(url, stream=True, max_tokens=3, stream_options={"include_usage": True})
    assert [("usage" in e) for e in res.events] == [False, False, False, True]
    assert res.events[-1]["choices"] == []
    assert res.events[-1]["usage"]["completion_tokens"] == 3
    assert res.events[-1]["usage"]["prompt_tokens"] == 2

    opts = {"include_usage": True, "continuous_usage_stats": True}
    res = chat(url, {"tokens_per_chunk": 2}, stream=True, max_tokens=5, stream_options=opts)
    assert [e["usage"]["completion_tokens"] for e in res.events] == [2, 4, 5, 5]
    assert res.events[-1]["choices"] == []


def test_usage_continuous_and_none(url: str) -> None:
    res = chat(url, {"usage": "continuous"}, stream=True, max_tokens=3)
    assert [e["usage"]["completion_tokens"] for e in res.events] == [1, 2, 3, 3]
    assert res.events[-1]["choices"] == []

    opts = {"include_usage": True, "continuous_usage_stats": True}
    res = chat(url, {"usage": "none"}, stream=True, max_tokens=3, stream_options=opts)
    assert len(res.events) == 3 and all("usage" not in e for e in res.events)

    res = chat(url, {"usage": "none"}, max_tokens=3)
    assert "usage" not in orjson.loads(res.body)


def test_prompt_tokens_count_words(url: str) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a b c"}, {"type": "image_url"}]},
    ]
    res = chat(url, messages=messages, max_tokens=2)
    usage = orjson.loads(res.body)["usage"]
    assert usage == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


# --------------------------------------------------------------------------------------------
# non-streaming


def test_non_streaming_chat_and_completions(url: str) -> None:
    res = chat(url, {"reasoning_tokens": 1}, max_tokens=3)
    assert res.status == 200
    out = orjson.loads(res.body)
    assert out["object"] == "chat.completion" and out["model"] == "scripted-model"
    choice = out["choices"][0]
    assert choice["message"] == {
        "role": "assistant",
        "reasoning_content": " r0",
        "content": " w1 w2",
    }
    assert choice["finish_reason"] == "length"
    assert out["usage"]["completion_tokens"] == 3
    assert out["usage"]["completion_tokens_details"] == {"reasoning_tokens": 1}

    res = request(url, COMPLETIONS, {"prompt": "x y", "max_tokens": 4})
    out = orjson.loads(res.body)
    assert out["object"] == "text_completion"
    assert out["choices"][0]["text"] == " w0 w1 w2 w3"
    assert out["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}


# --------------------------------------------------------------------------------------------
# timing (a loaded 2-core machine: generous, but a wrong schedule still fails)


def test_stream_timing_ttft_and_tpot(url: str) -> None:
    script = {"ttft_s": 0.2, "tpot_s": 0.02}
    res = chat(url, script, stream=True, max_tokens=20)
    times = res.chunk_times
    assert len(times) == 20
    assert 0.18 <= times[0] <= 0.30, times[0]
    expected_total = 0.2 + 19 * 0.02  # 0.58
    assert expected_total - 0.02 <= times[-1] <= expected_total * 1.2 + 0.03, times[-1]
    assert res.headers_s is not None and res.headers_s < 0.1  # headers come at once


def test_multi_token_chunk_timing(url: str) -> None:
    script = {"ttft_s": 0.05, "tpot_s": 0.02, "tokens_per_chunk": 4}
    res = chat(url, script, stream=True, max_tokens=16)
    times = res.chunk_times
    assert len(times) == 4
    # a 4-token chunk goes out when its last token is due: 0.05 + 3 * 0.02 = 0.11
    assert 0.10 <= times[0] <= 0.11 * 1.2 + 0.03, times[0]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert 0.07 <= sum(gaps) / len(gaps) <= 0.10, gaps


def test_schedule_is_absolute_no_drift(url: str) -> None:
    # 300 one-token chunks at 2 ms: per-token sleeps that accumulate error would overshoot by
    # well over 100 ms; sleeping to absolute deadlines keeps the end on time.
    res = chat(url, {"ttft_s": 0.01, "tpot_s": 0.002}, stream=True, max_tokens=300)
    assert len(res.token_chunks) == 300
    expected = 0.01 + 299 * 0.002  # 0.608
    assert expected - 0.01 <= res.chunk_times[-1] <= expected + 0.1, res.chunk_times[-1]


def test_non_streaming_timing(url: str) -> None:
    res = chat(url, {"ttft_s": 0.1, "tpot_s": 0.01}, max_tokens=21)
    expected = 0.1 + 20 * 0.01  # 0.3
    assert res.status == 200
    assert expected - 0.01 <= res.end_s <= expected * 1.2 + 0.03, res.end_s


def test_concurrent_streams_keep_schedule(url: str) -> None:
    async def go() -> list[Result]:
        body = {"prompt": "x", "max_tokens": 100, "stream": True}
        body["slobench_script"] = {"ttft_s": 0.05, "tpot_s": 0.01}
        return await asyncio.gather(*(_request(url, COMPLETIONS, body) for _ in range(20)))

    results = asyncio.run(go())
    expected = 0.05 + 99 * 0.01  # 1.04 s each; 2,000 tokens in about a second
    for res in results:
        assert res.done and len(res.token_chunks) == 100
        assert expected - 0.02 <= res.chunk_times[-1] <= expected * 1.2 + 0.05


# --------------------------------------------------------------------------------------------
# faults


@pytest.mark.parametrize("status", [429, 500, 503])
def test_fault_status(url: str, status: int) -> None:
    res = chat(url, {"fault": "status", "fault_status": status}, stream=True)
    assert res.status == status
    assert orjson.loads(res.body)["error"]["message"] == "scripted failure"
    body = '{"error":{"message":"slow down","type":"rate_limit"}}'
    res = chat(url, {"fault": "status", "fault_status": status, "fault_body": body})
    assert res.status == status and orjson.loads(res.body)["error"]["message"] == "slow down"


def test_fault_reset_mid_stream(url: str) -> None:
    res = chat(url, {"fault": "reset", "fault_after_tokens": 3}, stream=True, max_tokens=10)
    assert res.status == 200
    assert isinstance(res.error, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError)
    assert [content_of(c) for c in res.token_chunks] == [" w0", " w1", " w2"]
    assert not res.done


def test_fault_reset_splits_multi_token_chunk(url: str) -> None:
    script = {"fault": "reset", "fault_after_tokens": 3, "tokens_per_chunk": 2}
    res = chat(url, script, stream=True, max_tokens=10)
    assert [len(words(content_of(c))) for c in res.token_chunks] == [2, 1]
    assert res.error is not None


def test_fault_malformed(url: str) -> None:
    res = chat(url, {"fault": "malformed", "fault_after_tokens": 2}, stream=True, max_tokens=4)
    assert res.malformed == [b"{not json"]
    assert len(res.token_chunks) == 4 and res.done  # the stream carries on after the bad line
    res = chat(url, {"fault": "malformed"}, max_tokens=4)
    assert res.status == 200 and res.body == b"{not json"


def test_fault_stall(url: str) -> None:
    script = {"fault": "stall", "fault_after_tokens": 2, "stall_s": 0.3, "tpot_s": 0.01}
    res = chat(url, script, stream=True, max_tokens=4)
    assert res.done and len(res.token_chunks) == 4
    gaps = [b - a for a, b in itertools.pairwise(res.chunk_times)]
    assert gaps[1] >= 0.29 and gaps[0] < 0.15 and gaps[2] < 0.15, gaps


def test_fault_stall_times_out_client(url: str) -> None:
    script = {"fault": "stall", "fault_after_tokens": 1}  # default stall_s: an hour
    body = {"messages": [], "stream": True, "max_tokens": 4, "slobench_script": script}
    res = request(url, CHAT, body, timeout_s=0.5)
    assert isinstance(res.error, asyncio.TimeoutError)
    assert len(res.token_chunks) == 1 and not res.done


def test_fault_never_answer(url: str) -> None:
    body = {"messages": [], "slobench_script": {"fault": "never_answer"}}
    res = request(url, CHAT, body, timeout_s=0.4)
    assert isinstance(res.error, asyncio.TimeoutError)
    assert res.status == 0 and res.headers_s is None  # no headers ever came
    body["slobench_script"] = {"fault": "never_answer", "stall_s": 0.2}
    res = request(url, CHAT, body)
    assert isinstance(res.error, aiohttp.ServerDisconnectedError) and res.status == 0
    assert res.end_s >= 0.19


def test_fault_slow_first_byte(url: str) -> None:
    script = {"fault": "slow_first_byte", "stall_s": 0.3, "ttft_s": 0.05}
    res = chat(url, script, stream=True, max_tokens=3)
    assert res.headers_s is not None and res.headers_s >= 0.29
    assert 0.34 <= res.chunk_times[0] <= 0.35 * 1.2 + 0.03
    assert res.done and len(res.token_chunks) == 3


def test_fault_truncate(url: str) -> None:
    res = chat(url, {"fault": "truncate", "fault_after_tokens": 2}, stream=True, max_tokens=5)
    assert res.error is None and not res.done
    assert len(res.token_chunks) == 2
    assert all(c["choices"][0]["finish_reason"] is None for c in res.token_chunks)
    res = chat(url, {"fault": "truncate", "fault_after_tokens": 99}, stream=True, max_tokens=3)
    assert res.error is None and not res.done and len(res.token_chunks) == 3
    res = chat(url, {"fault": "truncate"}, max_tokens=3)  # non-streaming: body cut short
    assert isinstance(res.error, aiohttp.ClientPayloadError)


def test_fault_reset_non_streaming(url: str) -> None:
    res = chat(url, {"fault": "reset"}, max_tokens=3)
    assert isinstance(res.error, aiohttp.ServerDisconnectedError) and res.status == 0


def test_fault_every_nth_request(url: str) -> None:
    script = {"fault": "status", "fault_status": 503, "fault_every": 3}
    statuses = [chat(url, script, max_tokens=1).status for _ in range(7)]
    assert statuses == [503, 200, 200, 503, 200, 200, 503]


# --------------------------------------------------------------------------------------------
# overrides, errors, endpoints, stats


def test_invalid_override_is_400(url: str) -> None:
    for script in ({"fault": "explode"}, {"ttft_s": -1}, {"no_such_field": 1}, [1, 2]):
        res = chat(url, script)  # type: ignore[arg-type]
        assert res.status == 400, script
        assert "slobench_script" in orjson.loads(res.body)["error"]["message"]


def test_invalid_json_body_is_400(url: str) -> None:
    async def go() -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session, session.post(url + CHAT, data=b"{x") as r:
            return r.status, orjson.loads(await r.read())

    status, body = asyncio.run(go())
    assert status == 400 and "error" in body


def test_default_script_and_model_from_start_arguments(scripted_server: Any) -> None:
    url = scripted_server({"output_tokens": 3, "tokens_per_chunk": 3}, model="my-model")
    status, models = get_json(url, "/v1/models")
    assert status == 200 and models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["my-model"]
    res = chat(url, stream=True, max_tokens=50)
    assert len(res.token_chunks) == 1 and res.token_chunks[0]["model"] == "my-model"
    assert words(content_of(res.token_chunks[0])) == ["w0", "w1", "w2"]
    # an override merges over the server's default instead of replacing it
    res = chat(url, {"tokens_per_chunk": 1}, stream=True, max_tokens=50)
    assert len(res.token_chunks) == 3


def test_models_and_health(url: str) -> None:
    status, models = get_json(url, "/v1/models")
    assert status == 200 and models["data"][0]["id"] == "scripted-model"

    async def health() -> tuple[int, str]:
        async with aiohttp.ClientSession() as session, session.get(url + "/health") as r:
            return r.status, await r.text()

    assert asyncio.run(health())[0] == 200


def test_stats_and_reset(url: str) -> None:
    before = time.perf_counter()
    chat(url, max_tokens=2)
    request(url, COMPLETIONS, {"prompt": "x", "max_tokens": 3, "stream": True})
    chat(url, {"output_tokens": 1})
    after = time.perf_counter()
    status, stats = get_json(url, "/stats")
    assert status == 200
    assert stats["requests"] == 3
    assert stats["max_tokens"] == [2, 3, None]
    times = stats["receipt_times"]
    assert len(times) == 3 and before <= times[0] <= times[1] <= times[2] <= after
    assert stats["active"] == 0
    assert get_json(url, "/stats/reset", "POST")[0] == 200
    assert get_json(url, "/stats")[1]["requests"] == 0


def test_client_disconnect_mid_stream(url: str, server: ScriptedServerProcess) -> None:
    async def go() -> None:
        async with aiohttp.ClientSession() as session:
            body = {"messages": [], "stream": True, "max_tokens": 100000}
            async with session.post(url + CHAT, json=body) as resp:
                await resp.content.readline()
            # leaving the block without reading the body closes the connection

    asyncio.run(go())
    deadline = time.monotonic() + 5
    while server.stats()["active"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.stats()["active"] == 0
    assert chat(url, max_tokens=2).status == 200


def test_refused_port_fixture(free_port_refused: str) -> None:
    res = request(free_port_refused, CHAT, {"messages": []}, timeout_s=5)
    assert isinstance(res.error, aiohttp.ClientConnectorError)


def test_start_in_loop() -> None:
    async def go() -> list[str]:
        runner, base_url = await start_in_loop(Script(output_tokens=2), port=0)
        try:
            res = await _request(base_url, CHAT, {"messages": [], "stream": True})
            return [content_of(c) for c in res.token_chunks]
        finally:
            await runner.cleanup()

    assert asyncio.run(go()) == [" w0", " w1"]


# --------------------------------------------------------------------------------------------
# truth log: rx, when the server read the request's first bytes

# perf_counter is CLOCK_MONOTONIC on Linux, shared with the server's process: the test's stamps
# compare with the server's. The bound on rx after the send is generous for a loaded 2-core box.
SAME_CLOCK = sys.platform.startswith("linux")
READ_WITHIN_S = 0.5


@pytest.fixture(scope="module")
def truth_server() -> Any:
    with ScriptedServerProcess({"ttft_s": 0.01, "tpot_s": 0.001, "output_tokens": 4},
                               truth=True) as srv:
        yield srv
        assert "Traceback" not in srv.stderr_text(), srv.stderr_text()


@pytest.fixture
def truth_url(truth_server: ScriptedServerProcess) -> str:
    truth_server.truth(clear=True)
    return truth_server.base_url


def _connection(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=20)


def _post(conn: http.client.HTTPConnection, stream: bool) -> float:
    """One chat completion on ``conn``, read to the end; returns the time just before sending."""
    body = orjson.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": stream})
    sent = time.perf_counter()
    conn.request("POST", CHAT, body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    resp.read()
    return sent


def _check_rx(rec: dict[str, Any], sent: float) -> None:
    assert rec["status"] == "ok"
    # strictly before: the stamp comes from the server's read, not the handler (rx = t0 is the
    # fallback for an aiohttp without the hook)
    assert rec["rx"] < rec["t0"] <= rec["sent"][0]
    if SAME_CLOCK:
        assert sent <= rec["rx"] < sent + READ_WITHIN_S, (rec["rx"] - sent, rec)


@pytest.mark.parametrize("stream", [True, False])
def test_truth_rx_is_when_the_request_was_read(truth_server: ScriptedServerProcess,
                                               truth_url: str, stream: bool) -> None:
    conn = _connection(truth_url)
    try:
        sent = _post(conn, stream)
    finally:
        conn.close()
    [rec] = truth_server.truth(clear=True)
    _check_rx(rec, sent)
    assert rec["stream"] is stream


def test_truth_rx_per_request_on_a_kept_alive_connection(truth_server: ScriptedServerProcess,
                                                         truth_url: str) -> None:
    conn = _connection(truth_url)
    try:
        first = _post(conn, stream=True)
        sock = conn.sock
        conn.request("GET", "/health")  # a request without a truth record in between
        conn.getresponse().read()
        second = _post(conn, stream=False)
        assert conn.sock is sock  # one connection throughout
    finally:
        conn.close()
    one, two = truth_server.truth(clear=True)
    _check_rx(one, first)
    _check_rx(two, second)
    assert two["rx"] > one["done"]  # its own stamp, not the first request's (nor /health's)


def _recv_until(sock: socket.socket, buf: bytes, done: Any) -> bytes:
    while not done(buf):
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {buf!r}"
        buf += chunk
    return buf


def _read_head(sock: socket.socket, buf: bytes = b"") -> tuple[bytes, bytes]:
    buf = _recv_until(sock, buf, lambda b: b"\r\n\r\n" in b)
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def _read_response(sock: socket.socket, buf: bytes = b"") -> bytes:
    """A whole non-streamed response (Content-Length); returns its status line and headers."""
    head, rest = _read_head(sock, buf)
    assert head.startswith(b"HTTP/1.1 200"), head
    match = re.search(rb"(?i)content-length: *(\d+)", head)
    assert match, head
    length = int(match.group(1))
    rest = _recv_until(sock, rest, lambda b: len(b) >= length)
    assert len(rest) == length  # nothing more: this client does not pipeline
    return head


def test_truth_rx_is_the_first_read_not_the_body(truth_server: ScriptedServerProcess,
                                                 truth_url: str) -> None:
    """Headers first, the body only once the server has parsed them (it answers ``Expect:
    100-continue``): rx is the headers' read; the body's read is this request's too, so the next
    request on the connection gets a stamp of its own."""
    parts = urlsplit(truth_url)
    assert parts.hostname is not None and parts.port is not None
    body = orjson.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": False})
    head = (f"POST {CHAT} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n").encode()
    with socket.create_connection((parts.hostname, parts.port), timeout=20) as sock:
        sent = time.perf_counter()
        sock.sendall(head)
        status, rest = _read_head(sock)
        assert status.startswith(b"HTTP/1.1 100"), status
        time.sleep(0.05)
        body_sent = time.perf_counter()
        sock.sendall(body)
        _read_response(sock, rest)
        plain = head.replace(b"Expect: 100-continue\r\n", b"")
        next_sent = time.perf_counter()
        sock.sendall(plain + body)
        _read_response(sock)
    rec, nxt = truth_server.truth(clear=True)
    _check_rx(rec, sent)
    _check_rx(nxt, next_sent)
    if SAME_CLOCK:
        assert rec["rx"] < body_sent


# --------------------------------------------------------------------------------------------
# entry point and subprocess helper


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "slobench.engine.scripted", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_prints_listening_and_exits_cleanly(sig: signal.Signals) -> None:
    proc = _spawn("--host", "127.0.0.1", "--port", "0", "--script", '{"ttft_s":0.01}')
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        match = re.fullmatch(r"LISTENING (http://127\.0\.0\.1:(\d+))\n", line)
        assert match, line
        base_url = match.group(1)
        assert int(match.group(2)) > 0
        res = chat(base_url, stream=True, max_tokens=3)
        assert res.done
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out == b""  # exactly one line in all
    assert b"Traceback" not in err, err


def test_cli_exits_cleanly_with_requests_in_flight() -> None:
    proc = _spawn("--script", '{"fault":"never_answer"}')
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().decode().split()[1]

        async def go() -> list[Result]:
            body = {"messages": [], "stream": True}
            tasks = [asyncio.create_task(_request(base_url, CHAT, body)) for _ in range(3)]
            body2 = {**body, "slobench_script": {"fault": None}, "max_tokens": 10**6}
            tasks.append(asyncio.create_task(_request(base_url, CHAT, body2)))
            await asyncio.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*tasks)

        results = asyncio.run(go())
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and b"Traceback" not in err, err
    assert all(r.error is not None for r in results)
    assert len(results[-1].token_chunks) > 0


def test_cli_rejects_bad_script() -> None:
    proc = _spawn("--script", '{"fault":"explode"}')
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 2 and out == b""
    assert b"invalid --script" in err and b"Traceback" not in err


def test_scripted_server_process_context_manager() -> None:
    with ScriptedServerProcess(Script(output_tokens=2), model="ctx") as srv:
        assert srv.base_url.startswith("http://127.0.0.1:")
        proc = srv.proc
        assert proc is not None and proc.poll() is None
        assert get_json(srv.base_url, "/v1/models")[1]["data"][0]["id"] == "ctx"
        assert srv.stats()["requests"] == 0
    assert proc.poll() == 0


def test_scripted_server_process_reports_startup_failure() -> None:
    srv = ScriptedServerProcess(port=-5)  # not a valid port: the server exits at once
    with pytest.raises(RuntimeError, match="exited"):
        srv.start()
    assert srv.proc is None


def test_scripted_server_process_accepts_dict_and_validates() -> None:
    with pytest.raises(ValueError):
        ScriptedServerProcess({"tokens_per_chunk": 0})
