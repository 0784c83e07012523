"""Prompt datasets: ShareGPT conversations and JSONL prompts as Workloads (sessions, real
lengths counted with the built-in tokenizer and with one trained here), strict errors that name
file, line and record, streaming across chunk boundaries, and datasets as a prompt corpus."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

import slobench.prompts.datasets as ds
from slobench.errors import UserError
from slobench.prompts.datasets import (
    Conversation,
    Turn,
    dataset_text,
    dataset_workload,
    read_dataset,
    read_prompt_jsonl,
    read_sharegpt,
)
from slobench.prompts.synth import PromptSynthesizer, corpus_files, read_corpus
from slobench.prompts.tokenizer import BuiltinTokenizer, HFTokenizer
from slobench.schema import WORKLOAD_SCHEMA, conform_workload, session_links

TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n"
            "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def chat(*pairs: str, key: str = "conversations") -> dict[str, Any]:
    """A ShareGPT record alternating human and gpt messages."""
    roles = ("human", "gpt")
    return {"id": "x", key: [{"from": roles[i % 2], "value": v} for i, v in enumerate(pairs)]}


CONVS = [
    chat("Hello there, how are you today?", "I am fine, thank you for asking!",
         "Tell me a joke about cats.", "Why did the cat sit on the computer? To watch the mouse.",
         "Another one, please.", "What do you call a pile of cats? A meow-ntain."),
    {"id": "empty", "conversations": []},
    chat("What is two plus two?", "Four."),
    {"id": "gpt-first", "conversations": [{"from": "gpt", "value": "Hi, I start."}]},
    chat("Name a colour.", "Blue.", "And a fruit?", "A pear."),
]


def write_json(path: Path, data: Any, indent: int | None = 2) -> Path:
    path.write_text(json.dumps(data, indent=indent, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture
def sharegpt(tmp_path: Path) -> Path:
    return write_json(tmp_path / "sharegpt.json", CONVS)


@pytest.fixture(scope="module")
def hf(tmp_path_factory: pytest.TempPathFactory) -> HFTokenizer:
    """A small byte-level BPE with a chat template, trained on the shipped corpus."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=2000,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<s>", "</s>", "<|user|>", "<|assistant|>"])
    tok.train_from_iterator([read_corpus()], trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    folder = tmp_path_factory.mktemp("tok")
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "chat_template": TEMPLATE}))
    return HFTokenizer(folder)


def rows(table) -> list[dict[str, Any]]:
    return table.to_pylist()


def sessions_of(table) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(rows(table), key=lambda r: (r["session_id"], r["turn"])):
        out.setdefault(r["session_id"], []).append(r)
    return out


# ----------------------------------------------------------------------------- ShareGPT


def test_sharegpt_conversations_become_sessions(sharegpt):
    data = read_sharegpt(sharegpt)
    table = dataset_workload(data, rate=4, seed=3)
    assert table.schema == WORKLOAD_SCHEMA
    conform_workload(table)
    assert data.stats.records == 5 and data.stats.conversations == 3
    assert data.stats.skipped == {"empty": 1, "without an answered human turn": 1}
    assert (data.stats.sessions, data.stats.requests, data.stats.ran_out) == (3, 6, False)
    sess = sessions_of(table)
    assert [len(s) for s in sess.values()] == [3, 1, 2]
    first = sess["r000000"]
    assert [r["prompt"] for r in first] == ["Hello there, how are you today?",
                                            "Tell me a joke about cats.", "Another one, please."]
    assert [r["request_id"] for r in first] == ["r000000", "r000000.t1", "r000000.t2"]
    assert all(r["arrival_s"] == first[0]["arrival_s"] and r["think_s"] == 0 for r in first)
    prev, _ = session_links(table)
    assert ((prev >= 0) == (table["turn"].to_numpy() > 0)).all()
    assert np.all(np.diff(table["arrival_s"].to_numpy()) >= 0)


def _contexts(turns: list[tuple[str, str]]) -> list[list[dict[str, str]]]:
    out, msgs = [], []
    for user, answer in turns:
        msgs.append({"role": "user", "content": user})
        out.append(list(msgs))
        msgs.append({"role": "assistant", "content": answer})
    return out


@pytest.mark.parametrize("which", ["builtin", "hf"])
def test_input_tokens_are_the_whole_context_output_tokens_the_answer(sharegpt, hf, which):
    tok = BuiltinTokenizer() if which == "builtin" else hf
    table = dataset_workload(read_sharegpt(sharegpt), tok, rate=10)
    pairs = {0: CONVS[0]["conversations"], 1: CONVS[2]["conversations"],
             2: CONVS[4]["conversations"]}
    for j, session in enumerate(sessions_of(table).values()):
        msgs = pairs[j]
        turns = [(msgs[i]["value"], msgs[i + 1]["value"]) for i in range(0, len(msgs), 2)]
        contexts = _contexts(turns)
        for r in session:
            k = r["turn"]
            assert r["input_tokens"] == tok.count_chat(contexts[k])
            assert r["output_tokens"] == tok.count(turns[k][1], special=False)
    if which == "hf":  # the template's tokens are in the count
        r0 = rows(table)[0]
        assert r0["input_tokens"] > hf.count(r0["prompt"], special=False)


@pytest.mark.parametrize("which", ["builtin", "hf"])
def test_completions_counts_follow_the_runners_text(sharegpt, hf, which):
    tok = BuiltinTokenizer() if which == "builtin" else hf
    table = dataset_workload(read_sharegpt(sharegpt), tok, chat=False, rate=10)
    msgs = CONVS[0]["conversations"]
    u = [m["value"] for m in msgs[0::2]]
    a = [m["value"] for m in msgs[1::2]]
    texts = [u[0], u[0] + a[0] + "\n" + u[1], u[0] + a[0] + "\n" + u[1] + a[1] + "\n" + u[2]]
    got = sessions_of(table)["r000000"]
    assert [r["input_tokens"] for r in got] == [tok.count(t, special=True) for t in texts]


def test_messages_variant_system_merging_and_roles(tmp_path):
    data = [
        {"messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Part one."},
            {"role": "user", "content": [{"type": "text", "text": "Part two."},
                                         {"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "assistant", "content": "Done."},
            {"role": "assistant", "content": "Really done."},
            {"role": "user", "content": "Unanswered."},
        ]},
        {"conversations": [{"from": "human", "value": "Q"}, {"from": "tool", "value": "x"}]},
        {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "  "},
                           {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}]},
    ]
    d = read_dataset(write_json(tmp_path / "m.json", data))
    convs = list(d)
    assert d.format == "sharegpt"
    assert convs == [Conversation((Turn("You are terse.\n\nPart one.\n\nPart two.",
                                        "Done.\n\nReally done."),))]
    assert d.stats.skipped == {"with role 'tool'": 1, "without an answered human turn": 1}


def test_single_turn_requests_cut_and_ran_out(sharegpt):
    table = dataset_workload(read_sharegpt(sharegpt), multi_turn=False, rate=10)
    assert table["turn"].to_pylist() == [0, 0, 0]
    data = read_sharegpt(sharegpt)
    table = dataset_workload(data, max_requests=4, rate=10)
    assert table.num_rows == 4 and data.stats.sessions == 2 and not data.stats.ran_out
    assert [len(s) for s in sessions_of(table).values()] == [3, 1]  # the last session is cut
    data = read_sharegpt(sharegpt)
    table = dataset_workload(data, max_requests=50, rate=10)
    assert table.num_rows == 6 and data.stats.ran_out  # never repeated


def test_arrivals_think_time_duration_apps_and_context_limit(tmp_path):
    convs = [chat(f"question {i} a", "answer a", f"question {i} b", "answer b") for i in range(40)]
    path = write_json(tmp_path / "c.json", convs)
    table = dataset_workload(read_sharegpt(path), process="constant", rate=2.0, think_s=0.25,
                             duration_s=5.0, apps="chatbot:1,coding:1", seed=1)
    starts = sorted(r["arrival_s"] for r in rows(table) if r["turn"] == 0)
    assert starts == pytest.approx([i * 0.5 for i in range(10)])
    for session in sessions_of(table).values():
        t0 = session[0]["arrival_s"]
        assert [r["arrival_s"] for r in session] == pytest.approx(
            [t0 + 0.25 * r["turn"] for r in session])
        assert [r["think_s"] for r in session] == [0.0, 0.25][:len(session)]
        assert len({r["app"] for r in session}) == 1
    assert max(table["arrival_s"].to_pylist()) < 5.0
    assert set(table["app"].to_pylist()) == {"chatbot", "coding"}
    again = dataset_workload(read_sharegpt(path), process="constant", rate=2.0, think_s=0.25,
                             duration_s=5.0, apps="chatbot:1,coding:1", seed=1)
    assert again.equals(table)
    # a context limit ends each session before the turn that would not fit
    data = read_sharegpt(path)
    limited = dataset_workload(data, rate=100, max_context_tokens=8)
    assert set(limited["turn"].to_pylist()) == {0}
    data = read_sharegpt(path)
    with pytest.raises(UserError, match="no usable conversations"):
        dataset_workload(data, rate=100, max_context_tokens=2)
    assert data.stats.skipped == {"longer than 2 context tokens": 40}


# ----------------------------------------------------------------------------- JSONL prompts


def test_prompt_jsonl_lengths(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join([
        json.dumps({"prompt": "Summarize the French revolution.", "output_tokens": 300}),
        "",
        json.dumps({"text": "Write a haiku.", "max_tokens": 40}),
        json.dumps({"prompt": "No length here."}),
        json.dumps({"prompt": "   "}),
    ]) + "\n")
    data = read_prompt_jsonl(path)
    table = dataset_workload(data, rate=10, output_tokens=77)
    r = rows(table)
    assert [x["prompt"] for x in r] == ["Summarize the French revolution.", "Write a haiku.",
                                        "No length here."]
    assert [x["output_tokens"] for x in r] == [300, 40, 77]
    assert [x["input_tokens"] for x in r] == [5, 4, 4]
    assert data.stats.skipped == {"with an empty prompt": 1}
    assert read_dataset(path).format == "jsonl"


def test_sharegpt_as_json_lines(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in CONVS))
    assert read_dataset(path).format == "sharegpt"
    assert dataset_workload(read_dataset(path), rate=10).num_rows == 6


# ----------------------------------------------------------------------------- errors


BAD = [
    ("empty.json", "", ["empty.json: the file is empty"]),
    ("blank.json", "  \n\n ", ["blank.json: the file is empty"]),
    ("text.json", "hello", ["text.json:1: not JSON"]),
    ("obj.json", '{\n  "data": []\n}\n', ["obj.json:1: not valid JSON"]),
    ("badjson.json", '[\n {"conversations": []},\n {"conversations": [}\n]',
     ["badjson.json:3: record [1]: not valid JSON"]),
    ("cut.json", '[\n {"conversations": []},\n {"conversations": [', ["cut.json:3: record [1]",
                                                                      "cut off"]),
    ("nocomma.json", '[{"conversations": []}\n {"conversations": []}]',
     ["nocomma.json:2: expected ',' or ']' after record [0]"]),
    ("trailing.json", '[{"conversations": []},\n]', ["trailing.json:2:", "after the last record"]),
    ("junk.json", '[{"conversations": []}]\nxyz', ["junk.json:2: text after the closing"]),
    ("unclosed.json", '[{"conversations": []}', ["unclosed.json: the file ends before"]),
    ("number.json", '[\n 5\n]', ["number.json:2: record [0]: cannot tell the dataset format"]),
    ("notobj.json", '[\n {"conversations": []},\n 5\n]',
     ["notobj.json:3: record [1]: expected a conversation object"]),
    ("nokey.json", '[{"conversations": []}, {"id": 1, "turns": []}]',
     ["nokey.json:1: record [1]", "no 'conversations'", "keys: id, turns"]),
    ("wrongtype.json", '[\n{"conversations": []},\n{"conversations": {"a": 1}}]',
     ["wrongtype.json:3: record [1]: 'conversations' is an object, not a list"]),
    ("novalue.json", '[{"conversations": [{"from": "human"}]}]',
     ["novalue.json:1: record [0]: conversations[0] has no 'value'"]),
    ("norole.json", '[{"conversations": [{"value": "hi"}]}]', ["conversations[0] has no 'from'"]),
    ("intvalue.json", '[{"conversations": [{"from": "human", "value": 3}]}]',
     ["record [0]: conversations[0]: 'value' is a number, not a string"]),
    ("introle.json", '[{"conversations": [{"from": 1, "value": "x"}]}]',
     ["'from' is a number, not a role name"]),
    ("msgstr.json", '[{"conversations": ["hi"]}]', ["conversations[0] is a string, not a message"]),
    ("p.jsonl", '{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c"\n',
     ["p.jsonl:3: not valid JSON"]),
    ("q.jsonl", '{"prompt": "a"}\n\n{"output_tokens": 5}\n',
     ["q.jsonl:3: no 'prompt' (or 'text')"]),
    ("r.jsonl", '{"prompt": "a"}\n{"prompt": 5}\n', ["r.jsonl:2: 'prompt' is a number"]),
    ("s.jsonl", '{"prompt": "a", "output_tokens": -4}\n', ["s.jsonl:1: 'output_tokens' is -4"]),
    ("t.jsonl", '{"prompt": "a", "max_tokens": "many"}\n', ["t.jsonl:1: 'max_tokens' is 'many'"]),
    ("u.jsonl", '{"prompt": "a"}\n[1, 2]\n', ["u.jsonl:2: expected a prompt object"]),
    ("v.jsonl", '{"question": "a"}\n',
     ["v.jsonl:1: cannot tell the dataset format", "keys: question"]),
    ("nonutf8.json", b'[{"conversations": [{"from": "human", "value": "\xff"}]}]',
     ["nonutf8.json:1: record [0]: not valid JSON"]),
]


@pytest.mark.parametrize("name,content,needles", BAD, ids=[b[0] for b in BAD])
def test_malformed_files_give_one_clear_error(tmp_path, name, content, needles):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(UserError) as err:
        list(read_dataset(path))
    msg = str(err.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read_dataset(tmp_path / "nope.json")
    with pytest.raises(UserError, match="--dataset-format 'csv'"):
        read_dataset(tmp_path / "nope.json", "csv")
    path = write_json(tmp_path / "s.json", CONVS)
    with pytest.raises(UserError, match=r"s.json:2: record \[0\]: no 'prompt'"):
        list(read_prompt_jsonl(path))
    empty = write_json(tmp_path / "e.json", [])
    with pytest.raises(UserError, match=r"e.json \(sharegpt\): no usable conversations \(0 "):
        dataset_workload(read_dataset(empty), max_requests=3)


def test_streaming_across_tiny_chunks_gives_the_same_records(tmp_path, monkeypatch):
    tricky = [chat('He said "}]{[" and \\ left', "a\\\"b ünï 日本 \n\t end", key="conversations"),
              {"id": 7, "conversations": [{"from": "human", "value": "x" * 700},
                                          {"from": "gpt", "value": "[" * 100}]}]
    path = write_json(tmp_path / "t.json", tricky * 3)
    whole = list(read_dataset(path))
    assert len(whole) == 6 and whole[0].turns[0].user == 'He said "}]{[" and \\ left'
    for size in (1, 2, 7, 64):
        monkeypatch.setattr(ds, "_CHUNK", size)
        assert list(read_dataset(path)) == whole
    # and the line of an error is right however the file was cut
    lines = json.dumps(tricky, indent=2).splitlines()
    lines.insert(5, '  "oops": ,')
    bad = tmp_path / "bad.json"
    bad.write_text("\n".join(lines))
    for size in (3, 1 << 22):
        monkeypatch.setattr(ds, "_CHUNK", size)
        with pytest.raises(UserError, match=r"bad.json:6: record \[0\]: not valid JSON"):
            list(read_dataset(bad))


# ----------------------------------------------------------------------------- as a corpus


def test_dataset_as_prompt_corpus(tmp_path, hf):
    words = read_corpus().split()
    convs = [chat(" ".join(words[i:i + 40]), " ".join(words[i + 40:i + 80]))
             for i in range(0, 4000, 80)]
    path = write_json(tmp_path / "corpus.json", convs)
    assert corpus_files(path) == [path]
    text = read_corpus(path)
    assert text == dataset_text(path)
    assert text.split() == words[:4000]
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text("".join(json.dumps({"prompt": " ".join(words[i:i + 50])}) + "\n"
                             for i in range(0, 1000, 50)))
    assert read_corpus(jsonl).split() == words[:1000]
    vocab = set(words[:4000])
    for tok in (BuiltinTokenizer(), hf):
        synth = PromptSynthesizer(tok, text, block_tokens=64, nonce="n", chat=True)
        for n in (50, 300, 1000):
            prompt = synth.exact(f"r{n}", n)
            assert synth.count(prompt) == n
            assert sum(w in vocab for w in prompt.split()) / len(prompt.split()) > 0.95
    assert len(dataset_text(path, max_chars=100)) < 1000  # a bounded share of a large file
