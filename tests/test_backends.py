"""Request bodies per engine preset, SSE framing, token spreading, client-health judgment."""

from __future__ import annotations

import orjson
import pytest

from slobench.client.backends.openai import (
    OpenAIBackend,
    normalize_base_url,
    request_headers,
    spread,
)
from slobench.client.backends.presets import PRESETS, get_preset
from slobench.client.sse import SSEParser
from slobench.errors import UserError
from slobench.schema import conform_records
from slobench.slo.health import assess


def body(engine: str, endpoint: str = "chat", stream: bool = True, extra=None) -> dict:
    b = OpenAIBackend("http://127.0.0.1:8000/v1/", model="m", preset=get_preset(engine),
                      endpoint=endpoint, stream=stream, extra_body=extra)
    path = "chat/completions" if endpoint == "chat" else "completions"
    assert b.url == f"http://127.0.0.1:8000/v1/{path}"
    return orjson.loads(b.prepare("hello world", 64))


def test_presets_pick_the_fields_each_engine_understands():
    vllm = body("vllm")
    assert vllm["max_tokens"] == 64 and vllm["min_tokens"] == 64 and vllm["ignore_eos"] is True
    assert vllm["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert vllm["messages"] == [{"role": "user", "content": "hello world"}]
    generic = body("generic")
    assert set(generic) == {"model", "stream", "messages", "max_tokens", "stream_options"}
    assert generic["stream_options"] == {"include_usage": True}
    openai = body("openai")
    assert openai["max_completion_tokens"] == 64 and "max_tokens" not in openai
    assert "ignore_eos" not in body("tgi")
    assert body("llamacpp")["ignore_eos"] is True
    comp = body("sglang", endpoint="completions", stream=False)
    assert comp["prompt"] == "hello world" and comp["max_tokens"] == 64
    assert "stream_options" not in comp and comp["stream"] is False
    trt = body("trtllm")
    assert trt["ignore_eos"] is True and trt["min_tokens"] == 64
    assert set(PRESETS) == {"vllm", "sglang", "tgi", "trtllm", "llamacpp", "emulator", "openai",
                            "generic"}


def test_extra_body_passes_through_and_wins():
    b = body("vllm", extra={"temperature": 0.0, "ignore_eos": False, "top_k": 5})
    assert b["temperature"] == 0.0 and b["top_k"] == 5 and b["ignore_eos"] is False


def test_unknown_preset_and_bad_urls():
    with pytest.raises(UserError, match="vllm"):
        get_preset("vllmm")
    for url in ("ftp://x", "localhost:8000", "http://"):
        with pytest.raises(UserError, match="--target"):
            normalize_base_url(url)
    assert normalize_base_url("http://u:p@h:8000/v1") == "http://h:8000"


def test_auth_headers():
    assert request_headers("http://h", "sk-1", None)["Authorization"] == "Bearer sk-1"
    basic = request_headers("http://al%40x:pw@h", None, {"X-A": "1"})
    assert basic["Authorization"].startswith("Basic ") and basic["X-A"] == "1"
    assert "Authorization" not in request_headers("http://h", None, None)


def test_sse_parser_framing():
    p = SSEParser()
    assert p.feed(b"data: {\"a\":") == []
    assert p.feed(b"1}\n\n: keep-alive comment\n\nevent: x\ndata: two\r\n") == [b'{"a":1}']
    assert p.feed(b"data: lines\r\n\r\ndata: [DONE]\n\n") == [b"two\nlines", b"[DONE]"]
    assert p.feed(b"data:no-space") == []
    assert p.close() == [b"no-space"]


@pytest.mark.parametrize(
    ("total", "weights", "expected"),
    [
        (6, [1, 1, 1], [2, 2, 2]),
        (3, [5, 1, 1], [1, 1, 1]),  # as many tokens as chunks: one each whatever the text
        (2, [1, 1, 1], [1, 1, 0]),
        (10, [8, 4, 4], [4, 3, 3]),
        (0, [1, 2], [0, 0]),
        (4, [], []),
    ],
)
def test_spread(total, weights, expected):
    out = spread(total, weights)
    assert out == expected
    assert sum(out) == (total if weights else 0)


def _records(lags: list[float]):
    import pyarrow as pa

    n = len(lags)
    return conform_records(pa.table({
        "request_id": [str(i) for i in range(n)], "client_id": ["c"] * n, "app": ["chatbot"] * n,
        "scheduled_s": [float(i) for i in range(n)],
        "sent_s": [i + lag for i, lag in enumerate(lags)],
        "input_tokens": [1] * n, "status": ["ok"] * n,
    }))


def test_health_flags_send_lag_and_cpu():
    good = assess(_records([0.0001] * 100), [0.2] * 10)
    assert good["valid"] and not good["reasons"]
    late = assess(_records([0.0001] * 95 + [0.05] * 5), [0.2] * 10)
    assert not late["valid"] and "send lag" in late["reasons"][0]
    busy = assess(_records([0.0001] * 100), [0.99] * 10)
    assert not busy["valid"] and "CPU" in busy["reasons"][0]
    strict = assess(_records([0.002] * 100), None, lag_threshold_s=0.001)
    assert not strict["valid"]
