"""Prompt datasets: real conversations and prompt lists, as a Workload or as prompt text.

Formats (docs/prompts.md, "Datasets"):

``sharegpt``  conversations, ShareGPT style: a JSON array of
              ``{"id": ..., "conversations": [{"from": "human", "value": "..."},
              {"from": "gpt", "value": "..."}, ...]}``; the OpenAI-style variant
              ``{"messages": [{"role": "user", "content": "..."}, ...]}`` too, and the same
              records one per line (JSON lines).
``jsonl``     prompts, one JSON object per line: ``{"prompt": "...", "output_tokens": 200}``
              (``text`` may stand for ``prompt``, ``max_tokens`` for ``output_tokens``).

Files are read as a stream, one record at a time (a JSON array is cut into its elements by a
small scanner, each element parsed by orjson), so a file of hundreds of MB never sits in memory
as Python objects, and a workload of N requests reads only as far as it needs. Nothing read from
a file is ever evaluated. A record of the wrong *shape* (not an object, no conversation list,
a message without a role or text, wrong types) stops the reading with one error line naming the
file, the line and the record; a record of the right shape without a usable exchange (empty,
an unknown role, no human turn answered) is skipped and counted in :class:`DatasetStats`.

:func:`dataset_workload` makes every conversation a session: turn k sends the k-th user message
(the runner puts the earlier prompts and the server's own answers before it), ``input_tokens`` is
the whole context as the server sees it (the dataset's user messages and answers up to turn k)
and ``output_tokens`` the length of the dataset's answer: the real lengths.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
import pyarrow as pa

from slobench.errors import UserError
from slobench.prompts.tokenizer import BuiltinTokenizer, HFTokenizer, Tokenizer, load_tokenizer
from slobench.schema import WORKLOAD_SCHEMA, conform_workload
from slobench.workload.arrivals import RateFunction, arrival_times, as_rate_function
from slobench.workload.lengths import LengthDist, as_length_dist
from slobench.workload.synthetic import _normalize_mix, _request_ids, parse_app_mix

FORMATS = ("auto", "sharegpt", "jsonl")
# Output length of a prompt record that gives none (the synthetic default of run/generate).
DEFAULT_OUTPUT_TOKENS = "lognormal:mean=128,cv=0.6,max=1024"
# Text taken from a dataset used as a --prompt-corpus: ample for windows, bounded in memory.
CORPUS_MAX_CHARS = 4_000_000

_USER = frozenset({"human", "user"})
_ASSISTANT = frozenset({"gpt", "assistant", "chatgpt", "bard", "bing", "model", "bot"})
_SYSTEM = frozenset({"system"})
_SHAREGPT_FORM = ('{"conversations": [{"from": "human", "value": "..."}, '
                  '{"from": "gpt", "value": "..."}]}')
_PROMPT_FORM = '{"prompt": "...", "output_tokens": 128}'

_CHUNK = 1 << 22
_BOM = b"\xef\xbb\xbf"
_WS = re.compile(rb"[ \t\r\n]*")
_STRUCT = re.compile(rb'[\[\]{}"]')
_STRING_END = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # the rest of a string
_SCALAR = re.compile(rb"[^,\]\s]*")


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Turn:
    """One exchange: the user's message, and the dataset's answer (ShareGPT) or a given output
    length (prompt records); neither means the length comes from a default distribution."""

    user: str
    answer: str | None = None
    output_tokens: int | None = None


@dataclass(frozen=True)
class Conversation:
    turns: tuple[Turn, ...]
    id: str = ""


@dataclass
class DatasetStats:
    """What reading (and making a workload) saw: records read, conversations kept, skips by
    reason; ``sessions``/``requests`` used by :func:`dataset_workload`, and whether the data
    ran out before the asked-for duration or request count."""

    records: int = 0
    conversations: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    sessions: int = 0
    requests: int = 0
    ran_out: bool = False

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def describe(self) -> str:
        text = f"{self.conversations:,} usable of {self.records:,} records read"
        if self.skipped:
            parts = sorted(self.skipped.items(), key=lambda kv: -kv[1])
            text += "; skipped: " + ", ".join(f"{n:,} {why}" for why, n in parts)
        return text

    def as_dict(self) -> dict[str, Any]:
        return {"records": self.records, "conversations": self.conversations,
                "skipped": dict(self.skipped), "sessions": self.sessions,
                "requests": self.requests, "ran_out": self.ran_out}


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def _text(value: object, where: str, name: str) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        # OpenAI content parts: only the text parts are prompt text
        return "".join(p["text"] for p in value if isinstance(p, dict)
                       and p.get("type") == "text" and isinstance(p.get("text"), str))
    raise UserError(f"{where}: '{name}' is {_kind(value)}, not a string (or a list of content "
                    "parts); fix that record")


def _join(texts: Sequence[str]) -> str:
    return "\n\n".join(t for t in texts if t.strip())


def _conversation(obj: object, where: str, stats: DatasetStats) -> Conversation | None:
    """A ShareGPT record as a Conversation, or None (skipped, counted in ``stats``)."""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a conversation object like {_SHAREGPT_FORM}, found "
                        f"{_kind(obj)}; fix that record")
    key = "conversations" if "conversations" in obj else "messages" if "messages" in obj else ""
    if not key:
        keys = ", ".join(sorted(map(str, obj))[:8]) or "none"
        raise UserError(f"{where}: no 'conversations' (or 'messages') list (keys: {keys}); "
                        f"ShareGPT records look like {_SHAREGPT_FORM}")
    msgs = obj[key]
    if not isinstance(msgs, list):
        raise UserError(f"{where}: '{key}' is {_kind(msgs)}, not a list of messages; fix that "
                        "record")
    merged: list[list[Any]] = []  # [role, [texts]]: same-role runs merged, system folded in
    system: list[str] = []
    for j, m in enumerate(msgs):
        at = f"{where}: {key}[{j}]"
        if not isinstance(m, dict):
            raise UserError(f"{at} is {_kind(m)}, not a message like "
                            '{"from": "human", "value": "..."}; fix that record')
        role_key = "from" if "from" in m else "role" if "role" in m else ""
        text_key = "value" if "value" in m else "content" if "content" in m else ""
        if not role_key or not text_key:
            missing = "'from' (or 'role')" if not role_key else "'value' (or 'content')"
            raise UserError(f"{at} has no {missing}; messages look like "
                            '{"from": "human", "value": "..."}')
        role = m[role_key]
        if not isinstance(role, str):
            raise UserError(f"{at}: '{role_key}' is {_kind(role)}, not a role name like "
                            "'human' or 'gpt'; fix that record")
        text = _text(m[text_key], at, text_key)
        r = role.strip().lower()
        if r in _SYSTEM:  # the runner sends user messages only: the next one carries it
            system.append(text)
            continue
        if r in _USER:
            kind = "user"
            text, system = _join([*system, text]), []
        elif r in _ASSISTANT:
            kind = "assistant"
        else:
            stats.skip(f"with role '{role[:24]}'")
            return None
        if merged and merged[-1][0] == kind:
            merged[-1][1].append(text)
        else:
            merged.append([kind, [text]])
    while merged and merged[0][0] == "assistant":  # the server cannot be made to speak first
        merged.pop(0)
    turns = []
    for k in range(0, len(merged) - 1, 2):
        user, answer = _join(merged[k][1]), _join(merged[k + 1][1])
        if not user or not answer:
            break
        turns.append(Turn(user, answer))
    if not turns:
        stats.skip("empty" if not msgs else "without an answered human turn")
        return None
    ident = obj.get("id")
    return Conversation(tuple(turns), str(ident) if isinstance(ident, (str, int)) else "")


def _prompt(obj: object, where: str, stats: DatasetStats) -> Conversation | None:
    """A prompt record as a one-turn Conversation, or None (empty prompt, counted)."""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a prompt object like {_PROMPT_FORM}, found "
                        f"{_kind(obj)}; fix that line")
    key = "prompt" if "prompt" in obj else "text" if "text" in obj else ""
    if not key:
        keys = ", ".join(sorted(map(str, obj))[:8]) or "none"
        raise UserError(f"{where}: no 'prompt' (or 'text') (keys: {keys}); every record "
                        f"needs one, like {_PROMPT_FORM}")
    text = obj[key]
    if not isinstance(text, str):
        raise UserError(f"{where}: '{key}' is {_kind(text)}, not a string; fix that line")
    out = None
    for name in ("output_tokens", "max_tokens"):
        value = obj.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{where}: '{name}' is {value!r}, not a whole number of tokens "
                            ">= 1; fix that line")
        out = value
        break
    if not text.strip():
        stats.skip("with an empty prompt")
        return None
    ident = obj.get("id")
    return Conversation((Turn(text, None, out),), str(ident) if isinstance(ident, (str, int))
                        else "")


def _record_format(obj: object, where: str) -> str:
    if isinstance(obj, dict):
        if "conversations" in obj or "messages" in obj:
            return "sharegpt"
        if "prompt" in obj or "text" in obj:
            return "jsonl"
        keys = "keys: " + (", ".join(sorted(map(str, obj))[:8]) or "none")
    else:
        keys = _kind(obj)
    raise UserError(f"{where}: cannot tell the dataset format from this record ({keys}); "
                    f"expected ShareGPT ({_SHAREGPT_FORM}) or prompts ({_PROMPT_FORM})")


# ----------------------------------------------------------------------------- reading


class _Buffer:
    """A binary file read in chunks, with the line number of any position."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.buf = b""
        self.eof = False
        self._lpos = 0
        self._line = 1

    def more(self, keep: int) -> int | None:
        """Drop the bytes before ``keep`` and append the next chunk: how far every position
        moved back, or None at the end of the file."""
        if self.eof:
            return None
        chunk = self.fh.read(_CHUNK)
        if not chunk:
            self.eof = True
            return None
        self.line_at(keep)
        self.buf = self.buf[keep:] + chunk
        self._lpos -= keep
        return keep

    def line_at(self, pos: int) -> int:
        if pos >= self._lpos:
            self._line += self.buf.count(b"\n", self._lpos, pos)
        else:
            self._line -= self.buf.count(b"\n", pos, self._lpos)
        self._lpos = pos
        return self._line


def _array_items(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(index, line, bytes) of each element of the JSON array that is the file."""
    with open(path, "rb") as fh:
        b = _Buffer(fh)
        b.more(0)
        pos = 3 if b.buf.startswith(_BOM) else 0

        def peek() -> bytes:  # skip whitespace: the next byte, or b"" at the end
            nonlocal pos
            while True:
                m = _WS.match(b.buf, pos)
                assert m is not None
                pos = m.end()
                if pos < len(b.buf):
                    return b.buf[pos:pos + 1]
                moved = b.more(pos)
                if moved is None:
                    return b""
                pos -= moved

        if peek() != b"[":
            raise UserError(f"{path}: not a JSON array of conversations; ShareGPT files look "
                            f"like [{_SHAREGPT_FORM}, ...]")
        pos += 1
        index = 0
        if peek() == b"]":
            pos += 1
        else:
            while True:
                start, line = pos, b.line_at(pos)
                first = b.buf[start:start + 1]
                p = start
                depth = 0
                while True:  # find the end of this element
                    if first in (b"{", b"["):
                        m = _STRUCT.search(b.buf, p)
                        if m is not None:
                            ch = m.group()
                            if ch == b'"':
                                s = _STRING_END.match(b.buf, m.end())
                                if s is not None:
                                    p = s.end()
                                    continue
                                p = m.start()  # the string goes on in the next chunk
                            else:
                                p = m.end()
                                depth += 1 if ch in (b"{", b"[") else -1
                                if depth == 0:
                                    break
                                continue
                        else:
                            p = len(b.buf)
                    elif first == b'"':
                        s = _STRING_END.match(b.buf, start + 1)
                        if s is not None:
                            p = s.end()
                            break
                    else:
                        s = _SCALAR.match(b.buf, start)
                        assert s is not None
                        if s.end() < len(b.buf) or b.eof:
                            p = max(s.end(), start + 1)
                            break
                    moved = b.more(start)
                    if moved is None:
                        raise UserError(f"{path}:{line}: record [{index}] is cut off: the file "
                                        "ends inside it; the file is incomplete")
                    start -= moved
                    p -= moved
                pos = p
                yield index, line, b.buf[start:p]
                index += 1
                c = peek()
                if c == b",":
                    pos += 1
                    if peek() == b"]":
                        raise UserError(f"{path}:{b.line_at(pos)}: a ',' after the last record "
                                        "of the array; remove it")
                    continue
                if c == b"]":
                    pos += 1
                    break
                if not c:
                    raise UserError(f"{path}: the file ends before the closing ']' of the "
                                    f"array (after record [{index - 1}]); the file is "
                                    "incomplete")
                raise UserError(f"{path}:{b.line_at(pos)}: expected ',' or ']' after record "
                                f"[{index - 1}], found {b.buf[pos:pos + 20]!r}; fix the JSON")
        if peek():
            raise UserError(f"{path}:{b.line_at(pos)}: text after the closing ']' of the "
                            "array; remove it")


def _decode(raw: bytes, path: Path, line: int, what: str) -> object:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        at = line + max(int(getattr(exc, "lineno", 1) or 1), 1) - 1
        raise UserError(f"{path}:{at}: {what}: not valid JSON ({exc.msg}); fix it") from None


def _container(path: Path) -> str:
    """``array`` (one JSON array) or ``lines`` (JSON lines), from the first byte."""
    if not path.exists():
        raise UserError(f"{path}: no such file; give a ShareGPT .json or a prompts .jsonl file")
    if not path.is_file():
        raise UserError(f"{path}: not a file; give a ShareGPT .json or a prompts .jsonl file")
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
        while head.strip() == b"" and len(head) == 1 << 16:  # a long run of whitespace
            head = fh.read(1 << 16)
    head = head.removeprefix(_BOM).lstrip()
    if not head:
        raise UserError(f"{path}: the file is empty; give a ShareGPT JSON array or JSON lines")
    if head[:1] == b"[":
        return "array"
    if head[:1] == b"{":
        return "lines"
    raise UserError(f"{path}:1: not JSON (starts with {head[:20]!r}); give a ShareGPT JSON "
                    f"array [{_SHAREGPT_FORM}, ...] or JSON lines like {_PROMPT_FORM}")


def _raw_records(path: Path, container: str) -> Iterator[tuple[str, object]]:
    """(where, parsed object) of each record; ``where`` is ``file:line`` (+ the record index
    in an array)."""
    if container == "array":
        for index, line, raw in _array_items(path):
            where = f"record [{index}]"
            yield f"{path}:{line}: {where}", _decode(raw, path, line, where)
        return
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if line_no == 1:
                raw = raw.removeprefix(_BOM)
            if not raw.strip():
                continue
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise UserError(f"{path}:{line_no}: not valid JSON ({exc.msg}); every line must "
                                "be one JSON object (JSON lines), or the file one JSON array"
                                ) from None
            yield f"{path}:{line_no}", obj


class Dataset:
    """The conversations of a dataset file, read lazily each time it is iterated (``stats``
    counts what the latest iteration saw). ``format``: ``sharegpt``, ``jsonl`` or ``auto``
    (from the first record's keys). The file's existence, container and format are checked
    at once; a bad record raises UserError when the iteration reaches it."""

    def __init__(self, path: str | Path, format: str = "auto") -> None:
        self.path = Path(path)
        if format not in FORMATS:
            raise UserError(f"--dataset-format {format!r}: use one of {', '.join(FORMATS)}")
        self.container = _container(self.path)
        if format == "auto":
            records = _raw_records(self.path, self.container)
            try:
                first = next(records, None)
            finally:
                records.close()  # the file, at once
            format = "sharegpt" if first is None else _record_format(first[1], first[0])
        self.format = format
        self.stats = DatasetStats()

    def __iter__(self) -> Iterator[Conversation]:
        self.stats = DatasetStats()  # now, so a caller can hold it before the first record
        return self._read(self.stats)

    def _read(self, stats: DatasetStats) -> Iterator[Conversation]:
        parse = _conversation if self.format == "sharegpt" else _prompt
        for where, obj in _raw_records(self.path, self.container):
            stats.records += 1
            conv = parse(obj, where, stats)
            if conv is not None:
                stats.conversations += 1
                yield conv

    def describe(self) -> str:
        return f"{self.path} ({self.format})"


def read_sharegpt(path: str | Path) -> Dataset:
    """A ShareGPT file (a JSON array, or JSON lines, of conversation records), read lazily."""
    return Dataset(path, "sharegpt")


def read_prompt_jsonl(path: str | Path) -> Dataset:
    """A prompts file (one ``{"prompt": ..., "output_tokens": ...}`` per line), read lazily."""
    return Dataset(path, "jsonl")


def read_dataset(path: str | Path, format: str = "auto") -> Dataset:
    """A dataset file in ``format`` (``auto``: told from the first record)."""
    return Dataset(path, format)


def dataset_text(path: str | Path, max_chars: int = CORPUS_MAX_CHARS) -> str:
    """All message texts of a dataset file (user messages and answers), one per line, up to
    about ``max_chars`` characters: a prompt corpus (``--prompt-corpus sharegpt.json``)."""
    parts: list[str] = []
    total = 0
    for conv in read_dataset(path):
        for turn in conv.turns:
            for text in (turn.user, turn.answer):
                if text:
                    parts.append(text)
                    total += len(text) + 1
        if total >= max_chars:
            break
    return "\n".join(parts)


# ----------------------------------------------------------------------------- workload


def _lengths(tok: Tokenizer, turns: Sequence[Turn], chat: bool
             ) -> tuple[list[int], list[int | None]]:
    """Input tokens of each turn (the context the server sees: earlier messages and the
    dataset's answers, then this turn's message, as the runner builds it), and the token count
    of each turn's answer (None where the dataset has none)."""
    answers = [None if t.answer is None else tok.count(t.answer, special=False) for t in turns]
    if chat and type(tok) is BuiltinTokenizer:
        # its chat is the texts joined by newlines and no token spans a newline: counts add up,
        # so each message is counted once instead of once per later turn
        total, ins = 0, []
        for turn, n_answer in zip(turns, answers, strict=True):
            n_user = tok.count(turn.user)
            ins.append(total + n_user)
            total += n_user + (n_answer or 0)
        return ins, answers
    if chat:
        msgs: list[dict[str, str]] = []
        contexts: list[list[dict[str, str]]] = []
        for turn in turns:
            msgs.append({"role": "user", "content": turn.user})
            contexts.append(list(msgs))
            msgs.append({"role": "assistant", "content": turn.answer or ""})
        if isinstance(tok, HFTokenizer) and len(contexts) > 1:  # the Rust side batches
            return tok.count_batch([tok.render_chat(c) for c in contexts], special=False), answers
        return [tok.count_chat(c) for c in contexts], answers
    # completions: the runner appends the answer to the prompt, then "\n" and the next message
    texts: list[str] = []
    history = ""
    for turn in turns:
        texts.append(history + "\n" + turn.user if texts else turn.user)
        history = texts[-1] + (turn.answer or "")
    return [tok.count(t, special=True) for t in texts], answers


def _whole(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UserError(f"{what} {value!r} must be a whole number >= 1")
    return int(value)


def dataset_workload(
    conversations: Iterable[Conversation],
    tokenizer: Tokenizer | str | Path | None = None,
    *,
    rate: RateFunction | str | float = 5.0,
    process: str = "poisson",
    cv: float = 1.0,
    seed: int = 0,
    max_requests: int | None = None,
    duration_s: float | None = None,
    multi_turn: bool = True,
    think_s: float = 0.0,
    apps: Mapping[str, float] | str = "chatbot",
    client_id: str = "dataset",
    chat: bool = True,
    output_tokens: LengthDist | str | int = DEFAULT_OUTPUT_TOKENS,
    max_context_tokens: int | None = None,
    stats: DatasetStats | None = None,
) -> pa.Table:
    """A Workload table (``schema.WORKLOAD_SCHEMA``) where every conversation is a session.

    Sessions start following ``process`` (poisson, gamma with ``cv``, constant) at ``rate``
    session starts per second (a number, a rate function or a ``--rate`` string), in dataset
    order, until ``duration_s`` or ``max_requests`` requests (the last session cut short to
    fit); with neither, every conversation is used once. Turn k (``multi_turn``; else the first
    only) has the k-th user message as ``prompt``, ``input_tokens`` = the count of the whole
    context (``tokenizer.count_chat`` of the user messages and the dataset's answers up to it;
    for ``chat=False`` the completions text the runner builds), ``output_tokens`` = the count of
    the dataset's answer (a prompt record's own ``output_tokens``, else a draw from
    ``output_tokens``), ``think_s`` after the turn before it (``arrival_s`` = the previous
    turn's + ``think_s``: the earliest send time). With ``max_context_tokens`` a session ends
    before the first turn whose input plus output would exceed it. Each session draws its app
    from ``apps``. ``stats`` (default: the dataset's own) also counts sessions, requests and
    whether the data ran out before the duration or request count did.
    """
    tok: Tokenizer = (tokenizer if isinstance(tokenizer, Tokenizer)
                      else BuiltinTokenizer() if tokenizer is None else load_tokenizer(tokenizer))
    rate_fn = as_rate_function(rate)
    if max_requests is not None:
        max_requests = _whole(max_requests, "--requests")
    if max_context_tokens is not None:
        max_context_tokens = _whole(max_context_tokens, "--max-context-tokens")
    think = float(think_s)
    if not math.isfinite(think) or think < 0:
        raise UserError(f"think time {think_s!r} must be a finite number of seconds >= 0")
    mix = (parse_app_mix(apps) if isinstance(apps, str)
           else _normalize_mix(apps, str(dict(apps))))
    out_dist = as_length_dist(output_tokens, what="--output-tokens")
    if not client_id:
        raise UserError("client id must not be empty")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"--seed {seed!r} must be a whole number >= 0")
    rng_arrivals, rng_apps, rng_out = (np.random.default_rng(s) for s in
                                       np.random.SeedSequence(int(seed)).spawn(3))
    it = iter(conversations)
    if stats is None:  # a Dataset makes its stats when the iteration starts
        stats = getattr(conversations, "stats", None) or DatasetStats()
    source = conversations.describe() if isinstance(conversations, Dataset) else "dataset"
    if duration_s is None and max_requests is None:
        pending: Iterable[Conversation] = list(it)
        n_starts = len(pending)  # type: ignore[arg-type]
        if n_starts == 0:
            raise UserError(f"{source}: no usable conversations ({stats.describe()}); give a "
                            "dataset with at least one answered human turn")
        starts = arrival_times(process, rate_fn, cv=cv, n=n_starts, rng=rng_arrivals)
    else:
        pending = it
        starts = arrival_times(process, rate_fn, cv=cv, n=max_requests, duration_s=duration_s,
                               rng=rng_arrivals)
        if len(starts) == 0:
            raise UserError(f"no session starts within {duration_s:g} s at "
                            f"{rate_fn.describe()}; raise the rate or the duration")
    names = list(mix)
    app_of = (np.zeros(len(starts), dtype=np.int64) if len(names) == 1 else
              rng_apps.choice(len(names), size=len(starts), p=[mix[a] for a in names]))

    session: list[int] = []
    turn_no: list[int] = []
    arrival: list[float] = []
    n_in: list[int] = []
    n_out: list[int] = []
    prompts: list[str] = []
    j = 0
    for conv in pending:
        room = None if max_requests is None else max_requests - len(session)
        if j >= len(starts) or room == 0:
            break
        turns = conv.turns if multi_turn else conv.turns[:1]
        turns = turns[:room] if room is not None else turns
        ins, answers = _lengths(tok, turns, chat)
        outs = []
        for turn, n_answer in zip(turns, answers, strict=True):
            if n_answer is not None:
                outs.append(n_answer)
            elif turn.output_tokens is not None:
                outs.append(int(turn.output_tokens))
            else:
                outs.append(max(int(out_dist.sample(1, rng_out)[0]), 1))
        keep = len(turns)
        if max_context_tokens is not None:
            keep = next((k for k in range(keep) if ins[k] + outs[k] > max_context_tokens), keep)
            if keep == 0:
                stats.skip(f"longer than {max_context_tokens} context tokens")
                continue
        t0 = float(starts[j])
        for k in range(keep):
            t = t0 + k * think
            if duration_s is not None and k and t >= duration_s:
                break  # due after the end: never sent
            session.append(j)
            turn_no.append(k)
            arrival.append(t)
            n_in.append(ins[k])
            n_out.append(outs[k])
            prompts.append(turns[k].user)
        j += 1
    stats.sessions, stats.requests = j, len(session)
    stats.ran_out = (j < len(starts) and (max_requests is None or len(session) < max_requests)
                     and not (duration_s is None and max_requests is None))
    if not session:
        raise UserError(f"{source}: no usable conversations ({stats.describe()}); give a "
                        "dataset with at least one answered human turn")
    return _table(session, turn_no, arrival, n_in, n_out, prompts, think, client_id,
                  [names[int(app_of[s])] for s in session], j)


def _table(session: list[int], turn_no: list[int], arrival: list[float], n_in: list[int],
           n_out: list[int], prompts: list[str], think: float, client_id: str,
           apps: list[str], n_sessions: int) -> pa.Table:
    sids = _request_ids(n_sessions).to_pylist()
    sess = [sids[s] for s in session]
    ids = [sid if k == 0 else f"{sid}.t{k}" for sid, k in zip(sess, turn_no, strict=True)]
    turns = np.asarray(turn_no, dtype=np.int32)
    n = len(ids)
    table = pa.Table.from_pydict({
        "request_id": pa.array(ids, pa.string()),
        "arrival_s": pa.array(np.asarray(arrival, dtype=np.float64)),
        "client_id": pa.array([client_id] * n, pa.string()),
        "app": pa.array(apps, pa.string()),
        "session_id": pa.array(sess, pa.string()),
        "turn": pa.array(turns),
        "think_s": pa.array(np.where(turns > 0, think, 0.0)),
        "input_tokens": pa.array(n_in, pa.int64()),
        "output_tokens": pa.array(n_out, pa.int64()),
        "reasoning_tokens": pa.array(np.zeros(n, dtype=np.int64)),
        "prefix_blocks": pa.array([[]] * n, pa.list_(pa.int64())),
        "image_tokens": pa.array([[]] * n, pa.list_(pa.int64())),
        "prompt": pa.array(prompts, pa.string()),
    }, schema=WORKLOAD_SCHEMA)
    order = np.argsort(table["arrival_s"].to_numpy(), kind="stable")
    if np.any(order[1:] < order[:-1]):
        table = table.take(pa.array(order))
    return conform_workload(table, "dataset workload")


__all__ = [
    "CORPUS_MAX_CHARS",
    "DEFAULT_OUTPUT_TOKENS",
    "FORMATS",
    "Conversation",
    "Dataset",
    "DatasetStats",
    "Turn",
    "dataset_text",
    "dataset_workload",
    "read_dataset",
    "read_prompt_jsonl",
    "read_sharegpt",
]
