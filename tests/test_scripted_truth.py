"""The scripted server's truth log: what it actually emitted, per request and chunk, over real HTTP.

The server runs in a subprocess (or in the test's event loop); a raw aiohttp client reads the
stream and stamps each chunk's arrival with ``time.perf_counter()``, the same clock the server logs
with on Linux, so the log can be checked against what the client really received.
"""

from __future__ import annotations

import asyncio
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from slobench.engine.scripted import ScriptedServerProcess, start_in_loop

CHAT = "/v1/chat/completions"
# Servers never write early (0.2 ms slack); lateness bound generous for a loaded 2-core machine.
EARLY_S = 0.0003
LATE_S = 0.25
SAME_CLOCK = sys.platform.startswith("linux")  # perf_counter is CLOCK_MONOTONIC across processes


async def _stream(url: str, body: dict[str, Any], status: int = 200
                  ) -> tuple[float, list[float]]:
    """Send one request; returns (send time, arrival time of each token chunk)."""
    arrivals: list[float] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        async with session.get(url + "/health") as warm:
            await warm.read()
        sent = time.perf_counter()
        async with session.post(url + CHAT, json=body) as resp:
            assert resp.status == status
            if resp.content_type != "text/event-stream":
                await resp.read()
                return sent, [time.perf_counter()]
            async for raw in resp.content:
                line = raw.strip()
                if (line.startswith(b"data:") and line[5:].strip() != b"[DONE]"
                        and orjson.loads(line[5:])["choices"]):
                    arrivals.append(time.perf_counter())
    return sent, arrivals


def _body(n: int, **kw: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": n,
            "stream": True, **kw}


def _check_record(rec: dict[str, Any], *, ttft: float, tpot: float, sizes: list[int]) -> None:
    assert rec["status"] == "ok" and rec["stream"] is True
    assert rec["tokens"] == sizes
    ends = [sum(sizes[: i + 1]) for i in range(len(sizes))]
    for due, end in zip(rec["due"], ends, strict=True):  # due of a chunk: its last token's time
        assert due == pytest.approx(rec["t0"] + ttft + (end - 1) * tpot, abs=1e-9)
    late = [s - d for s, d in zip(rec["sent"], rec["due"], strict=True)]
    assert min(late) >= -EARLY_S, late
    assert max(late) < LATE_S, late
    assert rec["sent"] == sorted(rec["sent"])
    assert rec["done"] >= rec["sent"][-1]


def test_truth_log_one_token_chunks_matches_client() -> None:
    with ScriptedServerProcess({"ttft_s": 0.05, "tpot_s": 0.01}, truth=True) as srv:
        sent, arrivals = asyncio.run(_stream(srv.base_url, _body(8)))
        [rec] = srv.truth()
    _check_record(rec, ttft=0.05, tpot=0.01, sizes=[1] * 8)
    assert len(arrivals) == 8
    if SAME_CLOCK:
        # receipt after the client sent and before the first chunk arrived; each chunk's logged
        # write time is close to its arrival (the stamp follows the write, so a server preempted
        # right after it may stamp later than the client reads)
        assert sent - EARLY_S <= rec["t0"] <= arrivals[0]
        for written, arrived in zip(rec["sent"], arrivals, strict=True):
            assert abs(arrived - written) < LATE_S
    true_ttft = rec["sent"][0] - rec["t0"]
    assert 0.05 - EARLY_S <= true_ttft < 0.05 + LATE_S


def test_truth_log_multi_token_chunks() -> None:
    with ScriptedServerProcess({"ttft_s": 0.02, "tpot_s": 0.005, "tokens_per_chunk": 4},
                               truth=True) as srv:
        asyncio.run(_stream(srv.base_url, _body(10)))
        [rec] = srv.truth()
    _check_record(rec, ttft=0.02, tpot=0.005, sizes=[4, 4, 2])


def test_truth_clear_keeps_only_new_requests() -> None:
    with ScriptedServerProcess({"ttft_s": 0.0, "tpot_s": 0.001}, truth=True) as srv:
        for _ in range(3):
            asyncio.run(_stream(srv.base_url, _body(4)))
        first = srv.truth(clear=True)
        assert [r["id"] for r in first] == [0, 1, 2]
        assert srv.truth() == []
        asyncio.run(_stream(srv.base_url, _body(2)))
        [rec] = srv.truth()
        assert rec["id"] == 3 and rec["tokens"] == [1, 1]
        assert srv.stats()["requests"] == 4  # /stats is independent of the truth log


def test_truth_clear_keeps_requests_in_flight() -> None:
    async def go() -> None:
        runner, url = await start_in_loop({"ttft_s": 0.0, "tpot_s": 0.05}, truth=True)
        try:
            async with aiohttp.ClientSession() as session:
                task = asyncio.ensure_future(_stream(url, _body(10)))
                await asyncio.sleep(0.2)  # mid-stream
                async with session.get(url + "/truth?clear=1") as resp:
                    [partial] = (await resp.json())["requests"]
                assert partial["done"] is None and 0 < len(partial["sent"]) < 10
                await task
                async with session.get(url + "/truth") as resp:
                    [complete] = (await resp.json())["requests"]
            assert complete["id"] == partial["id"] and len(complete["sent"]) == 10
            assert complete["done"] is not None
        finally:
            await runner.cleanup()

    asyncio.run(go())


def test_truth_off_by_default() -> None:
    with ScriptedServerProcess({"ttft_s": 0.0, "tpot_s": 0.0}) as srv:
        asyncio.run(_stream(srv.base_url, _body(2)))
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(srv.base_url + "/truth", timeout=10)
        assert err.value.code == 404
        assert "--truth" in err.value.read().decode()


def test_truth_log_file_written_at_shutdown(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "truth.jsonl"
    with ScriptedServerProcess({"ttft_s": 0.01, "tpot_s": 0.002}, truth_log=path) as srv:
        asyncio.run(_stream(srv.base_url, _body(3)))
        asyncio.run(_stream(srv.base_url, _body(5, stream=False)))
        asyncio.run(_stream(srv.base_url, _body(
            3, slobench_script={"fault": "status", "fault_status": 503}), status=503))
        assert len(srv.truth()) == 3  # --truth-log implies the endpoint
        assert not path.exists()  # written at shutdown, not during the run
    lines = [orjson.loads(x) for x in path.read_bytes().splitlines()]
    assert [r["id"] for r in lines] == [0, 1, 2]
    streamed, whole, failed = lines
    _check_record(streamed, ttft=0.01, tpot=0.002, sizes=[1, 1, 1])
    # non-streaming: one "chunk" with every token, due when the last token is
    assert whole["stream"] is False and whole["tokens"] == [5]
    assert whole["due"][0] == pytest.approx(whole["t0"] + 0.01 + 4 * 0.002, abs=1e-9)
    assert whole["sent"][0] >= whole["due"][0] - EARLY_S
    # a fault is labelled and emitted no tokens
    assert failed["status"] == "status" and failed["tokens"] == []
    assert failed["done"] >= failed["t0"]


def test_truth_log_cli_flag(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    srv = ScriptedServerProcess({"ttft_s": 0.0, "tpot_s": 0.0, "tokens_per_chunk": 2},
                                truth_log=str(path))
    assert "--truth-log" in srv.args and str(path) in srv.args
    with srv:
        asyncio.run(_stream(srv.base_url, _body(5)))
    [rec] = [orjson.loads(x) for x in path.read_bytes().splitlines()]
    assert rec["tokens"] == [2, 2, 1]
