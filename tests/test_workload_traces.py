"""Trace import and replay: each format from small files written here; scaling, windows, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from slobench.errors import UserError
from slobench.schema import WORKLOAD_SCHEMA, read_workload, write_table
from slobench.workload.traces import (
    FORMATS,
    detect_format,
    load_trace,
    read_azure,
    scale_times,
    window,
)

AZURE_2023 = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,396,109
2023-11-16 18:15:51.0002410,879,15
2023-11-16 18:15:46.6805901,91,0
"""

AZURE_2024 = """TIMESTAMP,ContextTokens,GeneratedTokens
2024-05-10 00:00:00.009930+00:00,2162,5
2024-05-10 00:00:00.054354+00:00,1150,11
2024-05-10 00:00:01.554354+00:00,500,7
"""

BURSTGPT = """Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type
5,ChatGPT,472,18,490,Conversation log
45,ChatGPT,1087,0,1087,Conversation log
118,GPT-4,417,334,751,API log
134,ChatGPT,1360,291,1651,Conversation log
"""

BURSTGPT_SESSIONS = """\
Timestamp,Session ID,Model,Request tokens,Response tokens,Total tokens,Log Type
0,s1,ChatGPT,100,10,110,Conversation log
3,s2,GPT-4,200,20,220,API log
7,s1,ChatGPT,300,30,330,Conversation log
9,,ChatGPT,50,5,55,API log
12,s1,ChatGPT,400,40,440,Conversation log
"""

VIDUR = """arrived_at,num_prefill_tokens,num_decode_tokens
0.5,100,10
0.25,200,20
2.0,300,30
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def mooncake_lines(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


MOONCAKE = [
    {"timestamp": 0, "input_length": 6755, "output_length": 500, "hash_ids": [0, 1, 2, 3]},
    {"timestamp": 1500, "input_length": 7319, "output_length": 490, "hash_ids": [0, 1, 4]},
    {"timestamp": 1000, "input_length": 100, "output_length": 5, "hash_ids": []},
]


def expect_error(path: Path, match: str, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        load_trace(path, **kwargs)
    msg = str(info.value)
    assert match in msg, msg
    assert "\n" not in msg
    return msg


# ----------------------------------------------------------------------------- formats


def test_azure_2023_seven_fraction_digits(tmp_path: Path) -> None:
    path = write(tmp_path, "AzureLLMInferenceTrace_conv.csv", AZURE_2023)
    t = load_trace(path)
    assert t.schema == WORKLOAD_SCHEMA
    arr = t["arrival_s"].to_pylist()
    assert arr == sorted(arr)
    assert arr[0] == 0.0
    # the 7th fractional digit (100 ns) survives: row 4 is 100 ns after row 1 and sorts second
    assert arr[1] == pytest.approx(1e-7, abs=1e-12)
    assert t["input_tokens"].to_pylist() == [374, 91, 396, 879]
    assert t["output_tokens"].to_pylist() == [44, 0, 109, 15]
    assert arr[2] == pytest.approx(50.9951690 - 46.6805900, abs=1e-9)
    assert set(t["app"].to_pylist()) == {"chatbot"}
    assert set(t["client_id"].to_pylist()) == {"azure-conv"}
    assert t["request_id"].to_pylist() == ["r000000", "r000001", "r000002", "r000003"]
    assert t["session_id"].to_pylist() == t["request_id"].to_pylist()
    assert t["prefix_blocks"].to_pylist() == [[]] * 4


def test_azure_2024_offsets_and_code_variant(tmp_path: Path) -> None:
    path = write(tmp_path, "AzureLLMInferenceTrace_code_1week.csv", AZURE_2024)
    t = load_trace(path, format="azure")
    assert t["arrival_s"].to_pylist() == pytest.approx([0.0, 0.044424, 1.544424])
    assert set(t["app"].to_pylist()) == {"coding"}
    assert set(t["client_id"].to_pylist()) == {"azure-code"}


def test_azure_header_spellings(tmp_path: Path) -> None:
    text = AZURE_2024.replace("TIMESTAMP,ContextTokens,GeneratedTokens",
                              "\ufefftimestamp,Context_Tokens,generated tokens")
    path = write(tmp_path, "trace.csv", text)
    assert detect_format(path) == "azure"
    assert read_azure(path)["input_tokens"].to_pylist() == [2162, 1150, 500]


def test_burstgpt_apps_models_and_failures(tmp_path: Path) -> None:
    path = write(tmp_path, "BurstGPT_1.csv", BURSTGPT)
    t = load_trace(path)
    assert t.schema == WORKLOAD_SCHEMA
    assert t["arrival_s"].to_pylist() == [0.0, 40.0, 113.0, 129.0]
    assert t["app"].to_pylist() == ["chatbot", "chatbot", "tool", "chatbot"]
    assert t["client_id"].to_pylist() == ["ChatGPT", "ChatGPT", "GPT-4", "ChatGPT"]
    assert t["output_tokens"].to_pylist() == [18, 0, 334, 291]
    kept = load_trace(path, drop_failed=True)
    assert kept.num_rows == 3
    assert 0 not in kept["output_tokens"].to_pylist()


def test_burstgpt_sessions_and_turns(tmp_path: Path) -> None:
    path = write(tmp_path, "BurstGPT_v3.csv", BURSTGPT_SESSIONS)
    t = load_trace(path)
    assert t["session_id"].to_pylist() == ["s1", "s2", "s1", "r000003", "s1"]
    assert t["turn"].to_pylist() == [0, 0, 1, 0, 2]


def test_mooncake_hash_ids_and_ms(tmp_path: Path) -> None:
    path = write(tmp_path, "toolagent_trace.jsonl", mooncake_lines(MOONCAKE))
    assert detect_format(path) == "mooncake"
    t = load_trace(path)
    assert t.schema == WORKLOAD_SCHEMA
    assert t["arrival_s"].to_pylist() == [0.0, 1.0, 1.5]
    assert t["prefix_blocks"].to_pylist() == [[0, 1, 2, 3], [], [0, 1, 4]]
    assert t["input_tokens"].to_pylist() == [6755, 100, 7319]
    assert set(t["app"].to_pylist()) == {"tool"}


def test_mooncake_without_hash_ids(tmp_path: Path) -> None:
    recs = [{k: v for k, v in r.items() if k != "hash_ids"} for r in MOONCAKE]
    path = write(tmp_path, "conversation_trace.jsonl", mooncake_lines(recs) + "\n")
    t = load_trace(path)
    assert t["prefix_blocks"].to_pylist() == [[]] * 3
    assert set(t["app"].to_pylist()) == {"chatbot"}


def test_vidur(tmp_path: Path) -> None:
    path = write(tmp_path, "requests.csv", VIDUR)
    assert detect_format(path) == "vidur"
    t = load_trace(path)
    assert t["arrival_s"].to_pylist() == [0.0, 0.25, 1.75]
    assert t["input_tokens"].to_pylist() == [200, 100, 300]
    assert t["output_tokens"].to_pylist() == [20, 10, 30]


def own_table() -> pa.Table:
    rows = {
        "request_id": ["a", "b", "c"],
        "arrival_s": [2.0, 1.0, 3.5],
        "client_id": ["x", "y", "x"],
        "app": ["coding", "chatbot", "coding"],
        "session_id": ["s", "b", "s"],
        "turn": [0, 0, 1],
        "think_s": [0.0, 0.0, 2.0],
        "input_tokens": [10, 20, 30],
        "output_tokens": [1, 2, 3],
        "reasoning_tokens": [0, 0, 5],
        "prefix_blocks": [[1, 2], [], [1, 2, 3]],
        "image_tokens": [[], [576], []],
        "prompt": [None, "hi", None],
    }
    return pa.Table.from_pydict(rows, schema=WORKLOAD_SCHEMA)


def test_own_parquet_round_trip(tmp_path: Path) -> None:
    src = write(tmp_path, "BurstGPT_1.csv", BURSTGPT)
    t = load_trace(src)
    out = tmp_path / "w.parquet"
    write_table(t, out)
    assert read_workload(out).equals(t)
    assert detect_format(out) == "parquet"
    assert load_trace(out).equals(t)
    # our own table, unsorted on disk: loaded sorted, offsets kept
    write_table(own_table(), out)
    back = load_trace(out)
    assert back["request_id"].to_pylist() == ["b", "a", "c"]
    assert back["arrival_s"].to_pylist() == [1.0, 2.0, 3.5]


def test_own_jsonl(tmp_path: Path) -> None:
    rows = own_table().to_pylist()
    path = write(tmp_path, "w.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    assert detect_format(path) == "jsonl"
    t = load_trace(path)
    assert t.schema == WORKLOAD_SCHEMA
    assert t["request_id"].to_pylist() == ["b", "a", "c"]
    assert t["image_tokens"].to_pylist() == [[576], [], []]
    assert t["prompt"].to_pylist() == ["hi", None, None]
    # minimal lines: defaults filled, ids generated
    minimal = write(tmp_path, "m.jsonl",
                    '{"arrival_s": 0.5, "input_tokens": 3, "output_tokens": 4}\n'
                    '{"arrival_s": 0, "input_tokens": 1, "output_tokens": 2}\n')
    m = load_trace(minimal)
    assert m["request_id"].to_pylist() == ["r000001", "r000000"]
    assert m["client_id"].to_pylist() == ["default", "default"]
    assert m["prefix_blocks"].to_pylist() == [[], []]


def test_jsonl_parquet_round_trip(tmp_path: Path) -> None:
    path = write(tmp_path, "w.jsonl",
                 "".join(json.dumps(r) + "\n" for r in own_table().to_pylist()))
    t = load_trace(path)
    out = tmp_path / "w.parquet"
    write_table(t, out)
    assert read_workload(out).equals(t)


# ----------------------------------------------------------------------------- replay options


def test_time_scale(tmp_path: Path) -> None:
    path = write(tmp_path, "BurstGPT_1.csv", BURSTGPT)
    t = load_trace(path, time_scale=0.5)
    assert t["arrival_s"].to_pylist() == [0.0, 20.0, 56.5, 64.5]
    assert load_trace(path, time_scale=2)["arrival_s"].to_pylist()[-1] == 258.0


def test_rate_scale_hits_target(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    times = np.round(np.cumsum(rng.exponential(0.5, 500)), 6)
    text = "arrived_at,num_prefill_tokens,num_decode_tokens\n" + "".join(
        f"{x:.6f},10,5\n" for x in times)
    path = write(tmp_path, "v.csv", text)
    t = load_trace(path, rate_scale=10.0)
    arr = np.asarray(t["arrival_s"].to_pylist())
    assert (len(arr) - 1) / (arr[-1] - arr[0]) == pytest.approx(10.0, rel=1e-9)
    # the shape is kept: inter-arrival gaps all scale by the same factor
    gaps = np.diff(np.sort(times))
    ratio = np.diff(arr)[gaps > 0] / gaps[gaps > 0]
    assert np.allclose(ratio, ratio[0], rtol=1e-6)


def test_rate_and_time_scale_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "BurstGPT_1.csv", BURSTGPT)
    expect_error(path, "not both", time_scale=2, rate_scale=1)
    expect_error(path, "time_scale", time_scale=0)
    expect_error(path, "rate_scale", rate_scale=-1)
    expect_error(path, "at least two requests", rate_scale=1, max_requests=1)


def test_window_and_limit(tmp_path: Path) -> None:
    path = write(tmp_path, "BurstGPT_1.csv", BURSTGPT)
    t = load_trace(path, start_s=40, duration_s=80)
    assert t["arrival_s"].to_pylist() == [0.0, 73.0]
    assert t["request_id"].to_pylist() == ["r000001", "r000002"]
    assert load_trace(path, max_requests=2).num_rows == 2
    assert load_trace(path, duration_s=41).num_rows == 2
    # windowing happens in trace time, before scaling
    s = load_trace(path, start_s=40, duration_s=80, time_scale=2)
    assert s["arrival_s"].to_pylist() == [0.0, 146.0]
    expect_error(path, "no requests in the window", start_s=1000)
    expect_error(path, "max_requests", max_requests=0)
    expect_error(path, "duration_s", duration_s=-5)


def test_scale_and_window_functions_directly() -> None:
    t = own_table().sort_by("arrival_s")
    assert scale_times(t, time_scale=2)["think_s"].to_pylist() == [0.0, 0.0, 4.0]
    assert window(t, start_s=1.5)["arrival_s"].to_pylist() == [0.5, 2.0]


def test_app_override(tmp_path: Path) -> None:
    path = write(tmp_path, "BurstGPT_1.csv", BURSTGPT)
    assert set(load_trace(path, app="summarization")["app"].to_pylist()) == {"summarization"}
    expect_error(path, "app", app="bad app!")


def test_large_azure_is_vectorized_and_fast(tmp_path: Path) -> None:
    import time

    n = 200_000
    base = np.datetime64("2023-11-16T18:15:46.0000000", "ns")
    stamps = (base + np.arange(n) * np.timedelta64(1234567, "ns")).astype(str)
    body = "\n".join(f"{s.replace('T', ' ')[:27]},{i % 4000},{i % 700}"
                     for i, s in enumerate(stamps))
    path = write(tmp_path, "AzureLLMInferenceTrace_code.csv",
                 "TIMESTAMP,ContextTokens,GeneratedTokens\n" + body + "\n")
    t0 = time.perf_counter()
    t = load_trace(path)
    assert time.perf_counter() - t0 < 5.0
    assert t.num_rows == n
    assert t["arrival_s"][n - 1].as_py() == pytest.approx((n - 1) * 1.234567e-3)


# ----------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("a.csv", "", "the file is empty"),
        ("a.csv", "\n\n", "the file is empty"),
        ("AzureLLMInferenceTrace_conv.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n",
         "no requests"),
        ("a.csv", "foo,bar\n1,2\n", ":1: cannot tell the trace format"),
        ("m.jsonl", '{"x": 1}\n', ":1: JSON lines with keys"),
        ("m.jsonl", "{not json\n", ":1: not valid JSON"),
    ],
)
def test_empty_and_unknown(tmp_path: Path, name: str, text: str, match: str) -> None:
    path = write(tmp_path, name, text)
    msg = expect_error(path, match)
    assert str(path) in msg


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    path = write(tmp_path, "v.csv", VIDUR)
    msg = expect_error(path, "unknown trace format", format="sharegpt")
    assert all(f in msg for f in FORMATS)
    expect_error(tmp_path / "nope.csv", "no such file")
    expect_error(tmp_path, "not a file")


def test_missing_column(tmp_path: Path) -> None:
    path = write(tmp_path, "AzureLLMInferenceTrace_conv.csv",
                 "TIMESTAMP,ContextTokens\n2023-11-16 18:15:46.6805900,374\n")
    msg = expect_error(path, ":1: the header has no 'GeneratedTokens' column", format="azure")
    assert "fix the header" in msg
    path = write(tmp_path, "b.csv", "Timestamp,Model,Request tokens\n1,ChatGPT,3\n")
    expect_error(path, ":1: the header has no 'Response tokens' column", format="burstgpt")


@pytest.mark.parametrize(
    ("bad_row", "match"),
    [
        ("2023-11-16 18:15:47.1,abc,3", "column 'ContextTokens' is 'abc', not a whole number"),
        ("2023-11-16 18:15:47.1,-5,3", "column 'ContextTokens' is -5, a negative token count"),
        ("2023-11-16 18:15:47.1,5,-3", "column 'GeneratedTokens' is -3, a negative"),
        ("2023-11-16 18:15:47.1,5", "2 field(s), the header has 3"),
        ("2023-11-16 18:15:47.1,,3", "column 'ContextTokens' is empty"),
        ("2023-13-16 18:15:47.1,5,3", "column 'TIMESTAMP' is '2023-13-16 18:15:47.1', not a"),
        ("yesterday,5,3", "column 'TIMESTAMP' is 'yesterday', not a timestamp"),
        ("2023-11-16 18:15:47.1+00:00,5,3", "some timestamps have a UTC offset"),
        ("2023-11-16 18:15:47.1,5.5,3", "is '5.5', not a whole number"),
    ],
)
def test_azure_bad_rows_name_the_line(tmp_path: Path, bad_row: str, match: str) -> None:
    lines = AZURE_2023.splitlines()
    lines.insert(3, bad_row)  # becomes line 4 (the header is line 1)
    path = write(tmp_path, "AzureLLMInferenceTrace_conv.csv", "\n".join(lines) + "\n")
    msg = expect_error(path, match)
    assert f"{path}:4:" in msg


def test_blank_lines_do_not_shift_line_numbers(tmp_path: Path) -> None:
    text = VIDUR.replace("0.25,200,20\n", "\n0.25,200,20\n\n1,x,3\n")
    path = write(tmp_path, "v.csv", text)
    expect_error(path, f"{path}:6: column 'num_prefill_tokens' is 'x'")


@pytest.mark.parametrize(
    ("bad_row", "match"),
    [
        ("soon,ChatGPT,3,4,7,API log", "column 'Timestamp' is 'soon', not a finite number"),
        ("nan,ChatGPT,3,4,7,API log", "not a finite number of seconds"),
        ("9,ChatGPT,3,-4,-1,API log", "column 'Response tokens' is -4"),
    ],
)
def test_burstgpt_bad_rows(tmp_path: Path, bad_row: str, match: str) -> None:
    path = write(tmp_path, "BurstGPT_1.csv", BURSTGPT + bad_row + "\n")
    msg = expect_error(path, match)
    assert f"{path}:6:" in msg


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ('{"timestamp": "x", "input_length": 1, "output_length": 2}', "'timestamp' is 'x'"),
        ('{"timestamp": 5, "output_length": 2}', "'input_length' is missing"),
        ('{"timestamp": 5, "input_length": -1, "output_length": 2}', "is -1, negative"),
        ('{"timestamp": 5, "input_length": 1.5, "output_length": 2}', "1.5, not a whole"),
        ('{"timestamp": 5, "input_length": 1, "output_length": 2, "hash_ids": ["a"]}',
         "'hash_ids' must be a list of whole numbers"),
        ('{"timestamp": 5, "input_length": 1, "output_length": 2, "hash_ids": 7}',
         "'hash_ids' must be a list"),
        ('{"timestamp": 5, "input_length": 1, "output_length": 2', "not valid JSON"),
        ("[1, 2, 3]", "expected a JSON object"),
    ],
)
def test_mooncake_bad_lines(tmp_path: Path, bad: str, match: str) -> None:
    text = mooncake_lines(MOONCAKE[:2]) + "\n" + bad + "\n" + mooncake_lines(MOONCAKE[2:])
    path = write(tmp_path, "trace.jsonl", text)
    msg = expect_error(path, match, format="mooncake")
    assert f"{path}:4:" in msg


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ('{"arrival_s": 1, "input_tokens": 2}', "'output_tokens' is missing"),
        ('{"arrival_s": 1, "input_tokens": 2, "output_tokens": 3, "app": 5}', "not a string"),
        ('{"arrival_s": 1, "input_tokens": "2", "output_tokens": 3}', "'input_tokens' is '2'"),
        ('{"arrival_s": 1, "input_tokens": 2, "output_tokens": 3, "turn": -1}', "negative"),
    ],
)
def test_own_jsonl_bad_lines(tmp_path: Path, bad: str, match: str) -> None:
    good = '{"arrival_s": 0, "input_tokens": 2, "output_tokens": 3}\n'
    path = write(tmp_path, "w.jsonl", good + good + bad + "\n")
    msg = expect_error(path, match, format="jsonl")
    assert f"{path}:3:" in msg


def test_bad_parquet(tmp_path: Path) -> None:
    path = write(tmp_path, "w.parquet", "PAR1 not really")
    expect_error(path, "not a readable Parquet file")


def test_nothing_is_evaluated(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    path = write(tmp_path, "BurstGPT_1.csv", BURSTGPT + f"{payload},ChatGPT,1,1,2,API log\n")
    expect_error(path, ":6: column 'Timestamp'")
    jpath = write(tmp_path, "t.jsonl",
                  json.dumps({"timestamp": payload, "input_length": 1, "output_length": 1}) + "\n")
    expect_error(jpath, ":1: 'timestamp'")
    assert not marker.exists()
