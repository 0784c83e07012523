"""Derived metrics, SLO checks, attainment, goodput and summaries on hand-computed records."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest

from slobench.errors import UserError
from slobench.schema import RECORD_DEFAULTS, conform_records
from slobench.slo.metrics import check_slos, derive, meets
from slobench.slo.spec import parse_slo
from slobench.slo.summary import summarize

NAN = math.nan


def records(*rows: dict) -> pa.Table:
    """A conformed Records table; columns no row mentions get their defaults from conform."""
    base = {"client_id": "c0", "app": "chatbot", "scheduled_s": 0.0, "input_tokens": 100,
            "status": "ok"}
    full = [{"request_id": f"r{i}", **base, **row} for i, row in enumerate(rows)]
    keys = sorted({k for r in full for k in r})
    data = {k: [r.get(k, RECORD_DEFAULTS.get(k)) for r in full] for k in keys}
    if "token_times" in data:
        data["token_times"] = pa.array(data["token_times"], type=pa.list_(pa.float64()))
    return conform_records(pa.table(data))


def stream(first: float, gap: float, n: int) -> list[float]:
    return [first + i * gap for i in range(n)]


# A: multi-token chunks; B: reasoning; C: failure mid-stream; D: non-streaming; E: one token.
A = dict(scheduled_s=0.0, sent_s=0.1, queue_s=0.05, first_token_s=1.0, done_s=1.2,
         output_tokens=4, token_times=[1.0, 1.0, 1.0, 1.2], token_count_source="usage_deltas")
B = dict(app="reasoning", scheduled_s=2.0, sent_s=2.0, first_token_s=2.3, first_answer_s=2.6,
         done_s=3.0, output_tokens=8, reasoning_tokens=3,
         token_times=[2.3, 2.4, 2.5, 2.6, 2.7, 2.8, 2.9, 3.0], token_count_source="chunks")
C = dict(scheduled_s=3.0, sent_s=3.25, first_token_s=3.5, token_times=[3.5, 3.6],
         status="timeout", output_tokens=2, token_count_source="chunks")
D = dict(scheduled_s=4.0, sent_s=4.0, first_token_s=5.0, first_answer_s=5.0, done_s=5.0,
         output_tokens=20, token_count_source="non_streaming")
E = dict(scheduled_s=5.0, sent_s=5.0, first_token_s=5.2, first_answer_s=5.2, done_s=5.2,
         output_tokens=1, token_times=[5.2], token_count_source="chunks")


def close(actual: np.ndarray, expected: list[float]) -> None:
    np.testing.assert_allclose(actual, np.array(expected, dtype=float), rtol=0, atol=1e-12,
                               equal_nan=True)


def test_derive_per_request_metrics() -> None:
    d = derive(records(A, B, C, D, E))
    assert d.n == 5
    assert d.ok.tolist() == [True, True, False, True, True]
    assert d.non_streaming.tolist() == [False, False, False, True, False]
    close(d.ttft, [1.0, 0.3, NAN, 1.0, 0.2])
    close(d.e2e, [1.2, 1.0, NAN, 1.0, 0.2])
    close(d.ttfa, [NAN, 0.6, NAN, 1.0, 0.2])
    close(d.tpot, [0.2 / 3, 0.7 / 7, NAN, NAN, NAN])
    close(d.think_tpot, [NAN, 0.1, NAN, NAN, NAN])
    close(d.answer_tpot, [NAN, 0.1, NAN, NAN, NAN])
    close(d.itl_max, [0.2, 0.1, NAN, NAN, NAN])
    close(d.send_lag, [0.05, 0.0, 0.25, 0.0, 0.0])
    close(d.queue, [0.05, 0.0, 0.0, 0.0, 0.0])


def test_itl_flattened_keeps_chunk_zeros_and_skips_failures() -> None:
    d = derive(records(A, B, C, D, E))
    close(d.itl_values, [0.0, 0.0, 0.2] + [0.1] * 7)
    assert d.itl_index.tolist() == [0, 0, 0] + [1] * 7
    assert np.issubdtype(d.itl_index.dtype, np.integer)
    # Per-token arrays cover every request (C's tokens too).
    assert d.token_index.tolist() == [0] * 4 + [1] * 8 + [2] * 2 + [4]
    assert d.token_pos.tolist() == [0, 1, 2, 3, *range(8), 0, 1, 0]


def test_derive_on_sliced_table() -> None:
    t = records(E, A, B)
    d = derive(t.slice(1, 2))
    close(d.itl_values, [0.0, 0.0, 0.2] + [0.1] * 7)
    assert d.itl_index.tolist() == [0, 0, 0] + [1] * 7
    close(d.ttft, [1.0, 0.3])


def test_derive_empty() -> None:
    d = derive(records(A).slice(0, 0))
    assert d.n == 0 and d.itl_values.size == 0 and d.ttft.size == 0


def test_meets_rules() -> None:
    slos = parse_slo("chatbot: ttft<=1s, tpot<=100ms; "
                     "reasoning: ttft<=1s, think_tpot<=100ms, answer_tpot<=100ms")
    t = records(A, B, C, D, E)
    chk = check_slos(derive(t), t, slos)
    # A meets (ttft exactly 1s); B meets (think/answer exactly 100ms); C failed; D non-streaming
    # cannot verify TPOT; E has one token so TPOT holds vacuously.
    assert chk.met.tolist() == [True, True, False, False, True]
    assert meets(derive(t), t, slos).tolist() == chk.met.tolist()
    assert chk.applies["tpot"].tolist() == [True, False, True, True, True]
    assert chk.passed["tpot"].tolist() == [True, False, False, False, True]
    assert chk.passed["ttft"].tolist() == [True, True, False, True, True]
    assert chk.passed["think_tpot"].tolist() == [False, True, False, False, False]
    assert set(chk.passed) == {"ttft", "tpot", "think_tpot", "answer_tpot"}


def test_meets_tighter_bounds_fail() -> None:
    slos = parse_slo("chatbot: ttft<=999ms; reasoning: ttft<=1s, think_tpot<=99ms")
    t = records(A, B, E)
    assert meets(derive(t), t, slos).tolist() == [False, False, True]


def test_undefined_metrics_are_vacuous_but_non_streaming_is_not() -> None:
    slos = parse_slo("chatbot: ttft<=2s, think_tpot<=10ms, answer_tpot<=10ms, itl<=10ms")
    no_reason = dict(scheduled_s=0.0, first_token_s=0.5, first_answer_s=0.5, done_s=0.5,
                     output_tokens=1, token_times=[0.5], token_count_source="chunks")
    non_stream_one = dict(D, output_tokens=1)
    t = records(no_reason, non_stream_one)
    chk = check_slos(derive(t), t, slos)
    assert chk.met.tolist() == [True, False]
    assert chk.passed["ttft"].tolist() == [True, True]
    assert chk.passed["itl"].tolist() == [True, False]


def test_itl_constraint_uses_largest_gap() -> None:
    slos = parse_slo("chatbot: itl<=200ms; reasoning: itl<=99ms")
    t = records(A, B)
    assert meets(derive(t), t, slos).tolist() == [True, False]


def test_missing_time_of_ok_request_fails() -> None:
    slos = parse_slo("chatbot: e2e<=10s")
    t = records(dict(A, done_s=None))
    assert meets(derive(t), t, slos).tolist() == [False]


def test_deadline_per_token() -> None:
    slos = parse_slo("x: deadline<=1s+100ms/tok; y: deadline<=2s")
    rows = [
        dict(app="x", output_tokens=4, token_times=[0.9, 1.1, 1.2, 1.3]),  # on the boundary
        dict(app="x", output_tokens=4, token_times=[0.9, 1.1, 1.2, 1.35]),  # 4th late
        dict(app="x", output_tokens=4, token_times=[1.0, 1.0, 1.0, 1.2]),  # one chunk + 1
        dict(app="x", output_tokens=1, token_times=[1.05]),  # first token late
        dict(app="x", scheduled_s=10.0, output_tokens=2, token_times=[11.0, 11.1]),
        dict(app="x", scheduled_s=10.0, output_tokens=2, token_times=[11.0, 11.11]),
        dict(app="x", output_tokens=3, done_s=0.5, token_count_source="non_streaming"),
        dict(app="x", status="timeout", output_tokens=1, token_times=[0.1]),
        dict(app="x", output_tokens=0),  # nothing to time: vacuous
        dict(app="y", output_tokens=3, token_times=[1.5, 1.9, 2.0]),
        dict(app="y", output_tokens=2, token_times=[1.5, 2.1]),
    ]
    for r in rows:
        r.setdefault("done_s", max(r.get("token_times") or [0.0]))
        r.setdefault("token_count_source", "chunks")
    t = records(*rows)
    chk = check_slos(derive(t), t, slos)
    assert chk.met.tolist() == [True, False, True, False, True, False, False, False, True,
                                True, False]
    assert chk.passed["deadline"].tolist() == chk.met.tolist()


# --------------------------------------------------------------------------- summary

SPEC = "chatbot: ttft<=1s, tpot<=100ms, attain>=50%; coding: ttft<=2s, attain>=50%"
ROWS = [
    # 1: chatbot, meets (ttft 0.5, tpot 0.1)
    dict(scheduled_s=0.0, sent_s=0.0, first_token_s=0.5, first_answer_s=0.5, done_s=1.4,
         output_tokens=10, token_times=stream(0.5, 0.1, 10), token_count_source="chunks"),
    # 2: chatbot, ttft 1.5 too slow
    dict(scheduled_s=1.0, sent_s=1.0, first_token_s=2.5, first_answer_s=2.5, done_s=3.4,
         output_tokens=10, token_times=stream(2.5, 0.1, 10), token_count_source="chunks"),
    # 3: chatbot, HTTP 500
    dict(scheduled_s=2.0, sent_s=2.5, status="http_error", http_status=500, error="boom"),
    # 4: coding, meets (ttft 1.0)
    dict(app="coding", scheduled_s=3.0, sent_s=3.0, first_token_s=4.0, first_answer_s=4.0,
         done_s=6.0, input_tokens=200, output_tokens=5, token_times=stream(4.0, 0.5, 5),
         token_count_source="chunks"),
    # 5: coding, timeout
    dict(app="coding", scheduled_s=4.0, sent_s=4.0, status="timeout"),
    # 6: chatbot, outside the window [0, 10)
    dict(scheduled_s=12.0, sent_s=12.0, first_token_s=12.9, first_answer_s=12.9, done_s=13.0,
         output_tokens=2, token_times=[12.9, 13.0], token_count_source="chunks"),
]


def test_summary_window_attainment_goodput() -> None:
    s = summarize(records(*ROWS), parse_slo(SPEC), window=(0.0, 10.0))
    json.dumps(s, allow_nan=False)
    assert s["window"] == [0.0, 10.0]
    assert s["duration_s"] == 10.0
    assert s["total_requests"] == 6
    assert s["excluded_by_window"] == 1

    chat = s["classes"]["chatbot"]
    assert chat["requests"] == 3 and chat["ok"] == 2
    assert chat["errors"] == {"http_error": 1}
    assert chat["slo"] == {
        "class": "chatbot", "spec": "ttft<=1s, tpot<=100ms, attain>=50%",
        "attainment": 1 / 3, "per_constraint": {"ttft<=1s": 1 / 3, "tpot<=100ms": 2 / 3},
        "target": 0.5, "passed": False}
    assert chat["goodput_rps"] == pytest.approx(0.1, abs=1e-15)
    assert chat["throughput"] == {"requests_per_s": 0.2, "input_tokens_per_s": 20.0,
                                  "output_tokens_per_s": 2.0}

    code = s["classes"]["coding"]
    assert code["requests"] == 2 and code["ok"] == 1 and code["errors"] == {"timeout": 1}
    assert code["slo"]["attainment"] == 0.5 and code["slo"]["passed"] is True
    assert code["slo"]["per_constraint"] == {"ttft<=2s": 0.5}
    assert code["goodput_rps"] == pytest.approx(0.1, abs=1e-15)
    assert code["latency"]["itl"]["count"] == 4
    assert code["latency"]["itl"]["max"] == 0.5

    over = s["overall"]
    assert over["requests"] == 5 and over["ok"] == 3
    assert over["errors"] == {"http_error": 1, "timeout": 1}
    assert over["slo"]["attainment"] == 2 / 5
    assert over["slo"]["per_constraint"] == {"ttft": 2 / 5, "tpot": 2 / 3}
    assert over["slo"]["target"] == 0.5
    assert over["slo"]["passed"] is False
    assert "spec" not in over["slo"]
    assert over["goodput_rps"] == pytest.approx(0.2, abs=1e-15)
    assert over["throughput"]["requests_per_s"] == pytest.approx(0.3, abs=1e-15)
    assert over["throughput"]["input_tokens_per_s"] == 40.0
    assert over["throughput"]["output_tokens_per_s"] == 2.5

    ttft = over["latency"]["ttft"]
    expect = np.array([0.5, 1.5, 1.0])
    for q in (50, 90, 95, 99):
        assert ttft[f"p{q}"] == pytest.approx(float(np.percentile(expect, q)), abs=1e-12)
    assert ttft["count"] == 3 and ttft["max"] == 1.5
    assert over["latency"]["itl"]["count"] == 22
    assert over["latency"]["itl"]["max"] == 0.5
    assert over["latency"]["send_lag"]["count"] == 5
    assert over["latency"]["send_lag"]["max"] == 0.5
    assert over["latency"]["queue"]["count"] == 5
    assert over["latency"]["tpot"]["count"] == 3
    assert over["latency"]["ttfa"]["p50"] == 1.0


def test_summary_without_window_uses_all_requests() -> None:
    s = summarize(records(*ROWS), parse_slo(SPEC))
    assert s["window"] == [0.0, 13.0]
    assert s["duration_s"] == 13.0
    assert s["excluded_by_window"] == 0
    assert s["overall"]["requests"] == 6
    # 1, 4 and 6 meet their SLOs.
    assert s["overall"]["slo"]["attainment"] == 3 / 6
    assert s["overall"]["goodput_rps"] == 3 / 13
    assert s["classes"]["chatbot"]["slo"]["attainment"] == 2 / 4
    assert s["classes"]["chatbot"]["slo"]["passed"] is True
    assert s["overall"]["slo"]["passed"] is True


def test_summary_window_end_is_exclusive() -> None:
    s = summarize(records(*ROWS), parse_slo(SPEC), window=(1.0, 3.0))
    assert s["overall"]["requests"] == 2  # scheduled at 1.0 and 2.0
    assert s["excluded_by_window"] == 4
    assert s["classes"] == {"chatbot": s["classes"]["chatbot"]}
    assert s["overall"]["goodput_rps"] == 0.0


def test_summary_uses_wildcard_class() -> None:
    s = summarize(records(dict(ROWS[0], app="translation")), parse_slo("*: ttft<=100ms"))
    slo = s["classes"]["translation"]["slo"]
    assert slo["class"] == "*" and slo["spec"] == "ttft<=100ms, attain>=90%"
    assert slo["attainment"] == 0.0 and slo["passed"] is False


def test_summary_empty_and_nan_as_none() -> None:
    s = summarize(records(*ROWS), parse_slo(SPEC), window=(100.0, 200.0))
    json.dumps(s, allow_nan=False)
    over = s["overall"]
    assert over["requests"] == 0 and s["classes"] == {}
    assert over["slo"]["attainment"] is None and over["slo"]["passed"] is False
    assert over["latency"]["ttft"] == {"p50": None, "p90": None, "p95": None, "p99": None,
                                       "max": None, "mean": None, "count": 0}
    assert over["goodput_rps"] == 0.0

    empty = summarize(records(ROWS[0]).slice(0, 0), parse_slo(None))
    assert empty["total_requests"] == 0 and empty["duration_s"] == 0.0
    assert empty["overall"]["goodput_rps"] is None


def test_summary_bad_window() -> None:
    with pytest.raises(UserError):
        summarize(records(*ROWS), parse_slo(SPEC), window=(5.0, 5.0))
