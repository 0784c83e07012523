"""Token-exact prompt synthesis from real text.

A prompt of exactly ``n`` tokens (for the chosen tokenizer) is cut from a text corpus: the corpus
is normalised to single-space separated *pieces* (``" word"``), each piece's token count is known,
and because common tokenizers never merge across a space before a word (byte-level BPE, Metaspace,
the built-in one), the count of a run of pieces is the sum of their counts. A prompt is then a
slice of one long string (fast: no per-word work), topped up with one-token filler words, and
checked by re-tokenizing (:meth:`PromptSynthesizer.exact` fixes the rare miss).

Content rules:
- **Unique per request.** Every prompt's unshared part starts with a few *salt* words drawn from
  a hash of (nonce, request id), so unrelated requests share no leading block (no accidental
  prefix-cache hits, also across runs: the nonce defaults to the run id).
- **Deterministic per prefix block.** A request with ``prefix_blocks`` [h0, h1, ...] starts with
  one block of exactly ``block_tokens`` tokens per hash, its text a function of the hash alone
  (salt words, then a corpus window chosen by the hash), so requests sharing leading hashes send
  identical leading token sequences, block by block. The rest of the prompt is unique.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from slobench.errors import UserError
from slobench.prompts.tokenizer import BuiltinTokenizer, HFTokenizer, Tokenizer

SALT_WORDS = 4  # ~1000 one-token words each: 10^12 combinations, no accidental shared start
BLOCK_CACHE = 4096
_PIECE = re.compile(r"\S+")
_M64 = (1 << 64) - 1


def _mix(key: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def _next(x: int) -> int:  # splitmix64 step: a cheap stream of numbers from one hash
    x = (x + 0x9E3779B97F4A7C15) & _M64
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


DATASET_SUFFIXES = (".json", ".jsonl")  # ShareGPT / prompt datasets (prompts.datasets)


def corpus_files(path: str | Path | None = None) -> list[Path]:
    """The ``.txt`` files of a corpus folder (default: the one shipped in the package), or the
    one file given: a ``.txt`` file, or a ShareGPT ``.json`` / prompts ``.jsonl`` dataset."""
    root = Path(path) if path is not None else Path(str(resources.files("slobench.prompts")
                                                         / "corpus"))
    if root.is_file():
        return [root]
    files = sorted(root.glob("*.txt")) if root.is_dir() else []
    if not files:
        raise UserError(f"{root}: no .txt files to take prompt text from; give a folder of "
                        "plain-text files, a single .txt file, or a ShareGPT .json / prompts "
                        ".jsonl dataset")
    return files


def read_corpus(path: str | Path | None = None) -> str:
    """The corpus text; from a dataset file, its message texts (lengths still come from the
    workload: this is only where the words come from)."""
    texts = []
    for f in corpus_files(path):
        if f.suffix.lower() in DATASET_SUFFIXES:
            from slobench.prompts.datasets import dataset_text

            texts.append(dataset_text(f))
            continue
        try:
            texts.append(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{f}: cannot read it as UTF-8 text ({exc})") from None
    return "\n".join(texts)


@dataclass
class SynthStats:
    """What :meth:`PromptSynthesizer.exact` saw: prompts checked, how many needed fixing, how
    many still missed, and how many were sent unchecked (the manifest reports these)."""

    checked: int = 0
    fixed: int = 0
    missed: int = 0
    max_abs_error: int = 0
    unchecked: int = 0  # built just in time, with no slack to re-tokenize

    def as_dict(self) -> dict[str, int]:
        return {"checked": self.checked, "fixed": self.fixed, "missed": self.missed,
                "max_abs_error": self.max_abs_error, "unchecked": self.unchecked}


@dataclass
class PromptSynthesizer:
    """Prompts of exact token counts for ``tokenizer`` from ``corpus`` (text).

    ``chat``: counts are for a single user message under the tokenizer's chat template (the
    template's own tokens are subtracted); otherwise for a completions prompt (special tokens
    such as BOS included)."""

    tokenizer: Tokenizer
    corpus: str
    block_tokens: int = 512
    nonce: str = ""
    chat: bool = False
    stats: SynthStats = field(default_factory=SynthStats)

    def __post_init__(self) -> None:
        if self.block_tokens < SALT_WORDS + 1:
            raise UserError(f"prefix block size {self.block_tokens} is too small; use at least "
                            f"{SALT_WORDS + 1} tokens")
        words = _PIECE.findall(self.corpus)
        if len(words) < 50:
            raise UserError("the prompt corpus is too small (fewer than 50 words)")
        pieces = [" " + w for w in words]
        counts = self._piece_counts(pieces)
        keep = counts > 0
        pieces = [p for p, k in zip(pieces, keep, strict=True) if k]
        counts = counts[keep]
        self._stream = "".join(pieces)
        self._starts = np.zeros(len(pieces) + 1, dtype=np.int64)
        np.cumsum([len(p) for p in pieces], out=self._starts[1:])
        self._cum = np.zeros(len(pieces) + 1, dtype=np.int64)
        np.cumsum(counts, out=self._cum[1:])
        self._n = len(pieces)
        self._total = int(self._cum[-1])
        fillers = sorted({p for p, c in zip(pieces, counts, strict=True)
                          if c == 1 and p[1:].isalpha()})
        if len(fillers) < 16:
            raise UserError("the prompt corpus has too few one-token words to pad with")
        self._fillers = fillers
        self.overhead = self._overhead()
        self._blocks: OrderedDict[int, str] = OrderedDict()

    # -- calibration -------------------------------------------------------------------------

    def _piece_counts(self, pieces: list[str]) -> np.ndarray:
        uniq = sorted(set(pieces))
        tok = self.tokenizer
        counts = getattr(tok, "count_batch", None)
        if counts is not None:
            lens = list(counts(uniq, special=False))
        else:
            lens = [tok.count(p, special=False) for p in uniq]
        by_piece = dict(zip(uniq, lens, strict=True))
        return np.array([by_piece[p] for p in pieces], dtype=np.int64)

    def _overhead(self) -> int:
        """Tokens the request adds around the text (BOS; the chat template's tokens)."""
        sample = self._stream[: int(self._starts[min(40, self._n)])]
        body = self.tokenizer.count(sample, special=False)
        if self.chat:
            total = self.tokenizer.count_chat([{"role": "user", "content": sample}])
        else:
            total = self.tokenizer.count(sample, special=True)
        return max(total - body, 0)

    def wrap(self, text: str) -> str | list[dict[str, str]]:
        return [{"role": "user", "content": text}] if self.chat else text

    def count(self, text: str) -> int:
        """The server-side count of ``text`` sent as this synthesizer's request kind."""
        if self.chat:
            return self.tokenizer.count_chat([{"role": "user", "content": text}])
        return self.tokenizer.count(text, special=True)

    # -- pieces ------------------------------------------------------------------------------

    def _salt(self, h: int) -> tuple[str, int]:
        words = []
        for _ in range(SALT_WORDS):
            h = _next(h)
            words.append(self._fillers[h % len(self._fillers)])
        return "".join(words), _next(h)

    def _window(self, h: int, n: int) -> str:
        """Exactly ``n`` tokens of corpus text starting at a place chosen by ``h``."""
        parts = []
        pos = _next(h) % self._n
        cum, starts = self._cum, self._starts
        while n > 0:
            base = int(cum[pos])
            end = int(np.searchsorted(cum, base + n, side="right")) - 1  # most pieces that fit
            if end > pos:
                parts.append(self._stream[starts[pos]:starts[end]])
                n -= int(cum[end]) - base
                pos = end
            if n == 0:
                break
            if pos == self._n:  # ran off the end: go on from the beginning
                pos = 0
                continue
            for _ in range(n):  # the next piece is longer than what is left: one-token words
                h = _next(h)
                parts.append(self._fillers[h % len(self._fillers)])
            n = 0
        return "".join(parts)

    def block(self, block_hash: int) -> str:
        """The text of one prefix block: exactly ``block_tokens`` tokens, a function of the hash
        (and the nonce) alone."""
        text = self._blocks.get(block_hash)
        if text is not None:
            self._blocks.move_to_end(block_hash)
            return text
        h = _mix(f"{self.nonce}\x00block\x00{block_hash}".encode())
        salt, h = self._salt(h)
        text = salt + self._window(h, self.block_tokens - SALT_WORDS)
        self._blocks[block_hash] = text
        if len(self._blocks) > BLOCK_CACHE:
            self._blocks.popitem(last=False)
        return text

    # -- prompts -----------------------------------------------------------------------------

    def text(self, request_id: str, n_tokens: int,
             prefix_blocks: Sequence[int] = ()) -> str:
        """The prompt text for a request of ``n_tokens`` input tokens (as the server counts
        them, overhead included). Exact when the tokenizer adds counts of pieces; see
        :meth:`exact`."""
        return self.body(request_id, int(n_tokens) - self.overhead, prefix_blocks)

    def body(self, request_id: str, n_tokens: int, prefix_blocks: Sequence[int] = ()) -> str:
        """``n_tokens`` (at least 1) tokens of text: the prefix blocks, then unique text."""
        body = max(int(n_tokens), 1)
        n_blocks = min(len(prefix_blocks), body // self.block_tokens)
        parts = [self.block(int(b)) for b in prefix_blocks[:n_blocks]]
        rest = body - n_blocks * self.block_tokens
        if rest > 0:
            h = _mix(f"{self.nonce}\x00req\x00{request_id}".encode())
            if rest > SALT_WORDS:
                salt, h = self._salt(h)
                parts.append(salt + self._window(h, rest - SALT_WORDS))
            else:
                parts.append(self._window(h, rest))
        return "".join(parts)

    def exact(self, request_id: str, n_tokens: int, prefix_blocks: Sequence[int] = (),
              tries: int = 4) -> str:
        """:meth:`text`, re-tokenized and topped up or trimmed at the end until the count is
        exact (the prefix blocks are never touched). Counts go to ``stats``."""
        return self.fit(request_id, self.text(request_id, n_tokens, prefix_blocks), n_tokens,
                        tries)

    def fit(self, request_id: str, text: str, n_tokens: int, tries: int = 4) -> str:
        """The re-tokenizing half of :meth:`exact` for a ``text`` from :meth:`text`. Safe to run
        on a worker thread while the event loop goes on (the client does so for big prompts):
        it touches only the tokenizer and the ``stats`` counters."""
        count = self.count
        tok = self.tokenizer
        if isinstance(tok, BuiltinTokenizer) and len(text) > _SLICE_CHARS:
            count = _sliced_count  # one long regex scan would hold the GIL throughout
        elif isinstance(tok, HFTokenizer):
            count = self._count_releasing_gil
        return self._fit(request_id, text, max(int(n_tokens), 1), count, tries)

    def _count_releasing_gil(self, text: str) -> int:
        """:meth:`count` for a HF tokenizer through its batch call, which (unlike ``encode``)
        lets other threads run while it tokenizes."""
        tok: HFTokenizer = self.tokenizer  # type: ignore[assignment]
        if self.chat:
            return tok.count_batch([tok.render_chat([{"role": "user", "content": text}])],
                                   special=False)[0]
        return tok.count_batch([text], special=True)[0]

    def follow_up(self, request_id: str, n_tokens: int,
                  history: list[dict[str, str]] | str, *, off_loop: bool = False
                  ) -> list[dict[str, str]] | str:
        """A session's next turn: ``history`` (the earlier messages and the server's actual
        answers; for completions, that text) plus a new user message sized so the whole
        request is ``n_tokens`` tokens. When the history alone is already longer, the new
        message is one token and the miss is counted in ``stats``.

        ``off_loop``: called on a worker thread (the client does so for long histories); the
        built-in and HF tokenizers then count in ways that let the event loop's thread run."""
        probe = self.body(request_id + "~probe", 8)
        tok = self.tokenizer
        count_text, count_chat = self._counters(off_loop)
        if isinstance(history, str):
            def render(msg: str) -> str:
                return history + "\n" + msg  # type: ignore[operator]

            def count(msg: str) -> int:
                return count_text(render(msg), True)
        else:
            def render(msg: str) -> list[dict[str, str]]:  # type: ignore[misc]
                return [*history, {"role": "user", "content": msg}]  # type: ignore[misc]

            def count(msg: str) -> int:  # images are counted by the caller
                return count_chat(_text_only(render(msg)))  # type: ignore[arg-type]
        fixed = count(probe) - tok.count(probe, special=False)
        msg = self.body(request_id, int(n_tokens) - fixed)
        return render(self._fit(request_id, msg, max(int(n_tokens), 1), count))

    def _counters(self, off_loop: bool) -> tuple[Callable[[str, bool], int],
                                                 Callable[[list[dict[str, Any]]], int]]:
        """(count of a text, with or without special tokens; count of chat messages). Off the
        loop, the built-in and HF tokenizers count in ways that let other threads run: slices,
        and the HF batch call, which releases the GIL (``encode`` does not)."""
        tok = self.tokenizer
        if off_loop and isinstance(tok, HFTokenizer):
            def text_count(text: str, special: bool) -> int:
                return tok.count_batch([text], special=special)[0]
        elif off_loop and isinstance(tok, BuiltinTokenizer):
            def text_count(text: str, special: bool) -> int:
                return _sliced_count(text) if len(text) > _SLICE_CHARS else tok.count(text)
        else:
            def text_count(text: str, special: bool) -> int:
                return tok.count(text, special=special)

            return text_count, tok.count_chat

        def chat_count(messages: list[dict[str, Any]]) -> int:
            return text_count(tok.render_chat(messages), False)

        return text_count, chat_count

    def _fit(self, request_id: str, text: str, want: int, count: Callable[[str], int],
             tries: int = 4) -> str:
        """Top up or trim ``text`` at its end until ``count(text) == want``."""
        got = count(text)
        self.stats.checked += 1
        if got == want:
            return text
        first_error = abs(got - want)
        for _ in range(tries):
            if got < want:
                h = _mix(f"{self.nonce}\x00pad\x00{request_id}\x00{got}".encode())
                pad = []
                for _ in range(want - got):
                    h = _next(h)
                    pad.append(self._fillers[h % len(self._fillers)])
                text += "".join(pad)
            else:
                cut = text.rsplit(" ", max(got - want, 1))[0]
                if len(cut) == 0:
                    break
                text = cut
            got = count(text)
            if got == want:
                self.stats.fixed += 1
                return text
        self.stats.missed += 1
        self.stats.max_abs_error = max(self.stats.max_abs_error, abs(got - want), first_error)
        return text


_SLICE_CHARS = 1 << 15
_BUILTIN = BuiltinTokenizer()


def _sliced_count(text: str) -> int:
    """The built-in tokenizer's count of ``text`` (as a completions prompt or a single chat
    message: the same), in slices cut at spaces, which no token spans, letting other threads
    (the event loop) run between slices."""
    total, start, n = 0, 0, len(text)
    while start < n:
        cut = text.find(" ", start + _SLICE_CHARS)
        end = n if cut < 0 else cut
        total += _BUILTIN.count(text[start:end])
        start = end
        # hand the GIL over: a real sleep, since after sleep(0) this thread can take the GIL
        # back before the loop's thread is scheduled (measured on a busy machine, Python
        # 3.10: the loop held up 0.36 s by a 1M-token count; 6-9 ms with this)
        time.sleep(0.0001)
    return total


def _text_only(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Messages with image parts dropped and text parts joined, for counting text tokens."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content
                              if isinstance(p, dict) and p.get("type") == "text")
        out.append({"role": m.get("role", "user"), "content": content or ""})
    return out


def make_synthesizer(tokenizer: str | Path | Tokenizer | None = None,
                     corpus: str | Path | None = None, *, block_tokens: int = 512,
                     nonce: str = "", chat: bool = False) -> PromptSynthesizer:
    """A synthesizer from CLI-style options: a tokenizer spec (see ``load_tokenizer``; default
    the built-in one) and a corpus folder or file (default: the shipped one)."""
    from slobench.prompts.tokenizer import load_tokenizer

    tok = tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)
    return PromptSynthesizer(tok, read_corpus(corpus), block_tokens=block_tokens, nonce=nonce,
                             chat=chat)
