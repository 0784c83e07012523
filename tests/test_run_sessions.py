"""Sessions over real HTTP: a follow-up turn is sent think_s after the turn before it finished
(never before its own arrival_s), in open and closed loop; turns due after the end are not sent.

Timing tolerances hold on a loaded 2-core machine: the schedule is computed exactly from the
recorded done time, and the measured send lag only needs to stay under 60 ms."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest

from helpers import bench, records_of
from slobench.client.pacing import LoadPlan
from slobench.schema import conform_workload

TTFT, TPOT, N_OUT = 0.05, 0.005, 10


@pytest.fixture
def server(scripted_server):
    return scripted_server({"ttft_s": TTFT, "tpot_s": TPOT})


def sessions(n_sessions: int, turns: int, *, gap_s: float = 0.1, think_s: float = 0.15,
             start_s: float = 0.05) -> pa.Table:
    rows: dict[str, list] = {k: [] for k in ("request_id", "arrival_s", "session_id", "turn",
                                            "think_s", "input_tokens", "output_tokens")}
    for s in range(n_sessions):
        t = start_s + s * gap_s
        for k in range(turns):
            think = think_s if k else 0.0
            t += think
            rows["request_id"].append(f"s{s}.t{k}")
            rows["arrival_s"].append(t)  # a lower bound for follow-ups
            rows["session_id"].append(f"s{s}")
            rows["turn"].append(k)
            rows["think_s"].append(think)
            rows["input_tokens"].append(32 + 40 * k)
            rows["output_tokens"].append(N_OUT)
    return conform_workload(pa.table({**rows, "turn": pa.array(rows["turn"], pa.int32())}))


def by_id(analysis) -> dict[str, dict]:
    return {r["request_id"]: r for r in records_of(analysis)}


def test_open_loop_followups_wait_for_done_plus_think(server, tmp_path):
    wl = sessions(4, 3)
    a = bench(server, wl, tmp_path)
    rec = by_id(a)
    assert len(rec) == 12 and all(r["status"] == "ok" for r in rec.values())
    for s in range(4):
        first = rec[f"s{s}.t0"]
        assert first["scheduled_s"] == pytest.approx(0.05 + 0.1 * s, abs=1e-9)
        for k in (1, 2):
            before, r = rec[f"s{s}.t{k - 1}"], rec[f"s{s}.t{k}"]
            assert r["scheduled_s"] == pytest.approx(before["done_s"] + 0.15, abs=1e-9)
            assert r["sent_s"] >= r["scheduled_s"]
            assert r["sent_s"] - r["scheduled_s"] < 0.06
            assert r["first_token_s"] - r["scheduled_s"] >= TTFT - 0.005
    assert a.summary["overall"]["requests"] == 12


def test_followup_not_sent_before_its_arrival(server, tmp_path):
    wl = sessions(2, 2, think_s=0.0)
    arr = wl["arrival_s"].to_numpy().copy()
    arr[wl["turn"].to_numpy() == 1] = 1.0
    wl = wl.set_column(1, "arrival_s", pa.array(arr))
    rec = by_id(bench(server, wl, tmp_path))
    for s in range(2):
        assert rec[f"s{s}.t1"]["scheduled_s"] == pytest.approx(1.0, abs=1e-9)


def test_turns_due_after_the_duration_are_not_sent(server, tmp_path):
    wl = sessions(3, 4, think_s=0.4)
    a = bench(server, wl, tmp_path, plan=LoadPlan(mode="open", duration_s=0.8))
    rec = by_id(a)
    assert rec  # the first turns were sent
    assert all(r["scheduled_s"] < 0.8 for r in rec.values())
    assert len(rec) < 12
    for rid in rec:  # every sent follow-up's previous turn was sent too
        s, k = rid.split(".t")
        if int(k):
            assert f"{s}.t{int(k) - 1}" in rec


def test_max_requests_counts_followups(server, tmp_path):
    a = bench(server, sessions(3, 3), tmp_path, plan=LoadPlan(mode="open", max_requests=5))
    assert len(records_of(a)) == 5


def test_closed_loop_user_runs_a_session_in_order(server, tmp_path):
    wl = sessions(3, 3, think_s=0.05)
    plan = LoadPlan(mode="closed", users=1)
    rows = records_of(bench(server, wl, tmp_path, plan=plan))
    assert [r["request_id"] for r in rows] == [f"s{s}.t{k}" for s in range(3) for k in range(3)]
    for before, r in itertools.pairwise(rows):
        assert r["scheduled_s"] >= before["done_s"]
        if r["request_id"].endswith(("t1", "t2")):
            assert r["scheduled_s"] - before["done_s"] >= 0.05 - 1e-9
    assert np.all(np.diff([r["scheduled_s"] for r in rows]) > 0)
