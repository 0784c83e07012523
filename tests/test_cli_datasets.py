"""``--dataset`` and ``--prompt-corpus DATASET`` on the command line: generate from ShareGPT and
JSONL files, one-line errors for malformed files and conflicting options, and real runs against
the built-in emulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from slobench.cli.main import app
from slobench.prompts.synth import read_corpus
from slobench.prompts.tokenizer import BuiltinTokenizer
from slobench.schema import conform_workload

SLOBENCH = [sys.executable, "-m", "slobench"]


def slobench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SLOBENCH, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ), stdin=subprocess.DEVNULL)


def invoke(*args: str, cwd: Path) -> Any:
    """The CLI in this process (fast): exit code, stdout, stderr."""
    old = Path.cwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(app, list(args))
    finally:
        os.chdir(old)


def one_line_error(code: int, stderr: str, *needles: str) -> None:
    assert code != 0
    assert "Traceback" not in stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def conversations(n: int, turns: int = 3) -> list[dict[str, Any]]:
    words = read_corpus().split()
    out = []
    for i in range(n):
        msgs = []
        for k in range(turns):
            at = (i * turns + k) * 30
            msgs += [{"from": "human", "value": " ".join(words[at:at + 12]) + "?"},
                     {"from": "gpt", "value": " ".join(words[at + 12:at + 30]) + "."}]
        out.append({"id": f"c{i}", "conversations": msgs})
    return out


@pytest.fixture
def sharegpt(tmp_path: Path) -> Path:
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(conversations(8), indent=2))
    return path


def test_generate_from_sharegpt(tmp_path, sharegpt):
    proc = slobench("generate", "--dataset", "sharegpt.json", "--rate", "5", "-n", "10",
                    "-o", "w.parquet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "sessions" in proc.stdout and "Dataset: 4 sessions, 10 requests" in proc.stderr
    t = conform_workload(pq.read_table(tmp_path / "w.parquet"))
    assert t.num_rows == 10 and t["turn"].to_pylist().count(0) == 4
    rows = sorted(t.to_pylist(), key=lambda r: (r["session_id"], r["turn"]))
    first = json.loads(sharegpt.read_text())[0]["conversations"]
    tok = BuiltinTokenizer()
    assert [r["prompt"] for r in rows[:3]] == [m["value"] for m in first[0::2]]
    assert rows[2]["input_tokens"] == tok.count("\n".join(m["value"] for m in first[:5]))
    assert [r["output_tokens"] for r in rows[:3]] == [tok.count(m["value"])
                                                      for m in first[1::2]]
    # single turn, constant starts, a mix of apps
    res = invoke("generate", "--dataset", "sharegpt.json", "--single-turn", "--process",
                 "constant", "--rate", "2", "--apps", "chatbot:1,coding:1", "-o", "s.parquet",
                 "-q", cwd=tmp_path)
    assert res.exit_code == 0, res.stderr
    t = pq.read_table(tmp_path / "s.parquet")
    assert t["turn"].to_pylist() == [0] * 8
    assert t["arrival_s"].to_pylist() == pytest.approx([i / 2 for i in range(8)])
    assert set(t["app"].to_pylist()) <= {"chatbot", "coding"}


def test_generate_from_prompts_jsonl(tmp_path):
    (tmp_path / "p.jsonl").write_text(
        '{"prompt": "Write a poem about the sea.", "output_tokens": 64}\n'
        '{"text": "Explain gravity in one line.", "max_tokens": 20}\n'
        '{"prompt": "No length given here."}\n')
    res = invoke("generate", "--dataset", "p.jsonl", "--output-tokens", "33", "-o", "p.parquet",
                 "-q", "--endpoint", "completions", cwd=tmp_path)
    assert res.exit_code == 0, res.stderr
    rows = pq.read_table(tmp_path / "p.parquet").to_pylist()
    assert [r["output_tokens"] for r in rows] == [64, 20, 33]
    assert [r["input_tokens"] for r in rows] == [7, 6, 5]


BAD = [
    ("bad.json", '[\n  {"conversations": []},\n  {"conversations": [}\n]',
     ["bad.json:3: record [1]: not valid JSON"]),
    ("empty.json", "", ["empty.json: the file is empty"]),
    ("type.json", '[{"conversations": [{"from": "human", "value": ["x", 1]}]}]',
     ["type.json:1: record [0]: conversations[0]: 'value' is a list"]),
    ("field.json", '[{"conversations": [{"from": "human", "text": "x"}]}]',
     ["field.json:1: record [0]: conversations[0] has no 'value'"]),
    ("bad.jsonl", '{"prompt": "a"}\n{"prompt": "b", "output_tokens": 1.5}\n',
     ["bad.jsonl:2: 'output_tokens' is 1.5"]),
    ("missing.jsonl", '{"prompt": "a"}\n{"id": 3}\n', ["missing.jsonl:2: no 'prompt'"]),
]


@pytest.mark.parametrize("name,content,needles", BAD, ids=[b[0] for b in BAD])
def test_malformed_dataset_is_one_error_line(tmp_path, name, content, needles):
    (tmp_path / name).write_text(content)
    res = invoke("generate", "--dataset", name, "-o", "w.parquet", cwd=tmp_path)
    one_line_error(res.exit_code, res.stderr, *needles)
    assert not (tmp_path / "w.parquet").exists()


def test_malformed_dataset_in_a_real_process(tmp_path):
    (tmp_path / "bad.json").write_text('[\n  {"conversations": "nope"}\n]')
    proc = slobench("run", "--dataset", "bad.json", "-n", "3", "-q", cwd=tmp_path)
    one_line_error(proc.returncode, proc.stderr, "bad.json:2: record [0]: 'conversations' is "
                   "a string")
    assert not (tmp_path / "runs").exists()


CONFLICTS = [
    (["generate", "--dataset", "sharegpt.json", "--profile", "language"],
     "give --dataset or --profile, not both"),
    (["generate", "--dataset", "sharegpt.json", "--input-tokens", "100"],
     "--input-tokens: not with --dataset"),
    (["generate", "--dataset", "sharegpt.json", "--sessions", "auto"], "--sessions: not with"),
    (["generate", "--single-turn"], "--single-turn: only with --dataset"),
    (["generate", "--tokenizer", "builtin", "--rate", "3"], "--tokenizer: only with --dataset"),
    (["generate", "--dataset", "sharegpt.json", "--rate", "trace"], "needs --profile or --pool"),
    (["generate", "--dataset", "sharegpt.json", "--dataset-format", "csv"],
     "--dataset-format 'csv'"),
    (["generate", "--dataset", "sharegpt.json", "--dataset-format", "jsonl"],
     "sharegpt.json:2: record [0]: no 'prompt'"),
    (["generate", "--dataset", "missing.json"], "missing.json: no such file"),
    (["run", "--dataset", "sharegpt.json", "--workload", "w.parquet"],
     "give --dataset or --workload, not both"),
    (["run", "--dataset", "sharegpt.json", "--sessions", "chat"], "already are sessions"),
    (["run", "--single-turn"], "--single-turn need --dataset"),
    (["run", "--dataset", "sharegpt.json", "--tokenizer", "server"], "--tokenizer"),
]


@pytest.mark.parametrize("args,needle", CONFLICTS, ids=[" ".join(c[0][:3]) for c in CONFLICTS])
def test_option_conflicts_are_one_error_line(tmp_path, sharegpt, args, needle):
    if args[0] == "generate":
        args = [*args, "-o", "w.parquet"]
    res = invoke(*args, cwd=tmp_path)
    one_line_error(res.exit_code, res.stderr, needle)


def test_run_dataset_against_the_emulator(tmp_path, sharegpt):
    proc = slobench("run", "--dataset", "sharegpt.json", "--requests", "6", "--rate", "20",
                    "-q", "--out", "runs", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    records = pq.read_table(run / "records.parquet").to_pylist()
    assert len(records) == 6 and all(r["status"] == "ok" for r in records)
    workload = pq.read_table(run / "workload.parquet")
    assert workload.num_rows == 6 and max(workload["turn"].to_pylist()) == 2
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["workload"]["source"] == "dataset:sharegpt.json"
    assert manifest["config"]["workload_options"]["dataset_stats"]["requests"] == 6


def test_run_with_a_dataset_as_prompt_corpus(tmp_path, sharegpt):
    # lengths from the workload, text from the dataset (as with --profile language)
    proc = slobench("run", "--prompt-corpus", "sharegpt.json", "--requests", "4", "--rate", "20",
                    "--input-tokens", "300", "--output-tokens", "4", "-q", "--out", "runs",
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    records = pq.read_table(run / "records.parquet").to_pylist()
    assert len(records) == 4 and all(r["status"] == "ok" for r in records)
    manifest = json.loads((run / "manifest.json").read_text())
    assert "sharegpt.json" in json.dumps(manifest["config"])
    assert manifest["prompts"]["missed"] == 0
