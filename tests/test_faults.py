"""Faults end as classified per-request errors in a finished run, never a crash."""

from __future__ import annotations

import pytest

from helpers import bench, fixed_workload, records_of
from slobench.client.backends.openai import OpenAIBackend
from slobench.client.backends.presets import get_preset
from slobench.client.journal import Journal, read_journal
from slobench.client.pacing import LoadPlan
from slobench.client.runner import Runner, Timeouts, new_event_loop
from slobench.clock import RunClock
from slobench.prompts.synth import make_synthesizer

FAST = Timeouts(request_s=5, connect_s=2, stall_s=0.5)


def run_faulty(scripted_server, tmp_path, script, n=6, **kw):
    base = {"ttft_s": 0.02, "tpot_s": 0.005, "fault_every": 2}
    url = scripted_server({**base, **script})
    a = bench(url, fixed_workload(n, gap_s=0.05, output_tokens=10), tmp_path,
              timeouts=kw.pop("timeouts", FAST), **kw)
    rows = records_of(a)
    assert len(rows) == n
    assert a.manifest["status"] == "complete"
    return a, rows


def statuses(rows):
    return sorted(r["status"] for r in rows)


@pytest.mark.parametrize("code", [429, 500, 503])
def test_http_errors_keep_status_and_body(scripted_server, tmp_path, code):
    body = '{"error": {"message": "overloaded: try later", "type": "server_error"}}'
    a, rows = run_faulty(scripted_server, tmp_path,
                         {"fault": "status", "fault_status": code, "fault_body": body})
    bad = [r for r in rows if r["status"] != "ok"]
    assert len(bad) == 3 and all(r["status"] == "http_error" for r in bad)
    assert all(r["http_status"] == code for r in bad)
    assert all("overloaded: try later" in r["error"] for r in bad)
    assert a.summary["overall"]["errors"] == {"http_error": 3}
    assert a.summary["overall"]["slo"]["attainment"] == pytest.approx(0.5)


def test_reset_mid_stream_is_a_disconnect(scripted_server, tmp_path):
    _, rows = run_faulty(scripted_server, tmp_path, {"fault": "reset", "fault_after_tokens": 3})
    bad = [r for r in rows if r["status"] != "ok"]
    assert [r["status"] for r in bad] == ["disconnect"] * 3
    assert all(r["output_tokens"] >= 1 for r in bad)  # what arrived before the reset is kept


def test_stream_without_done_is_a_disconnect(scripted_server, tmp_path):
    _, rows = run_faulty(scripted_server, tmp_path, {"fault": "truncate", "fault_after_tokens": 2})
    assert statuses(rows) == ["disconnect"] * 3 + ["ok"] * 3


def test_malformed_sse_is_a_protocol_error(scripted_server, tmp_path):
    _, rows = run_faulty(scripted_server, tmp_path, {"fault": "malformed",
                                                     "fault_after_tokens": 2})
    bad = [r for r in rows if r["status"] != "ok"]
    assert [r["status"] for r in bad] == ["protocol_error"] * 3
    assert all("malformed" in r["error"] for r in bad)


def test_stall_past_timeout_is_a_timeout(scripted_server, tmp_path):
    _, rows = run_faulty(scripted_server, tmp_path, {"fault": "stall", "fault_after_tokens": 3,
                                                     "stall_s": 30})
    bad = [r for r in rows if r["status"] != "ok"]
    assert [r["status"] for r in bad] == ["timeout"] * 3
    for r in bad:  # the stall timeout (0.5 s) fired, not the 30 s stall
        assert 0.45 <= r["done_s"] - r["first_token_s"] < 3.0


def test_server_that_never_answers_times_out(scripted_server, tmp_path):
    _, rows = run_faulty(scripted_server, tmp_path, {"fault": "never_answer", "stall_s": 30})
    bad = [r for r in rows if r["status"] != "ok"]
    assert [r["status"] for r in bad] == ["timeout"] * 3
    assert all(r["first_token_s"] is None for r in bad)


def test_total_request_timeout(scripted_server, tmp_path):
    # tokens keep coming (no stall), but the whole request exceeds its limit
    _, rows = run_faulty(scripted_server, tmp_path, {"tpot_s": 0.05, "fault_every": 1},
                         n=2, timeouts=Timeouts(request_s=0.4, stall_s=5))
    assert statuses(rows) == ["timeout", "timeout"]


def test_slow_first_byte_is_measured_not_failed(scripted_server, tmp_path):
    _, rows = run_faulty(scripted_server, tmp_path, {"fault": "slow_first_byte", "stall_s": 0.3},
                         timeouts=Timeouts(request_s=5, stall_s=2))
    assert statuses(rows) == ["ok"] * 6
    slow = [r for r in rows if r["first_token_s"] - r["scheduled_s"] >= 0.3]
    assert len(slow) == 3


def test_connection_refused_is_classified(free_port_refused, tmp_path):
    backend = OpenAIBackend(free_port_refused, model="m", preset=get_preset("generic"))
    journal = Journal(tmp_path / "j.jsonl")
    runner = Runner(fixed_workload(4, gap_s=0.02), backend, LoadPlan(), journal=journal,
                    clock=RunClock(), timeouts=FAST, synthesizer=make_synthesizer())
    loop = new_event_loop()
    try:
        outcome = loop.run_until_complete(runner.run())
    finally:
        loop.close()
    table, torn = read_journal(tmp_path / "j.jsonl")
    rows = table.to_pylist()
    assert not outcome.interrupted and torn == 0
    assert [r["status"] for r in rows] == ["connect_error"] * 4
    assert all("cannot connect" in r["error"] for r in rows)


def test_server_dying_mid_run_does_not_crash_the_run(scripted_server, tmp_path):
    url = scripted_server({"ttft_s": 0.02, "tpot_s": 0.01})
    proc = scripted_server.processes[url]
    import threading

    threading.Timer(0.6, proc.stop).start()
    a = bench(url, fixed_workload(15, gap_s=0.1, output_tokens=5), tmp_path, timeouts=FAST)
    rows = records_of(a)
    assert len(rows) == 15 and a.manifest["status"] == "complete"
    st = {r["status"] for r in rows}
    assert "ok" in st and st & {"connect_error", "disconnect"}
