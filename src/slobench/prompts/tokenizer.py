"""The built-in deterministic tokenizer: for the engine emulator, and for users with no tokenizer.

One token per word or punctuation mark (``\\w+`` or a single non-space character), ids from a
stable hash into a 128k vocabulary. It is not a real BPE: it is exact and reproducible, so that a
prompt of N words is N tokens for both the prompt synthesizer and the emulator.
"""

from __future__ import annotations

import re
import zlib

VOCAB_SIZE = 128_256
_TOKEN = re.compile(r"\w+|[^\w\s]")


class BuiltinTokenizer:
    name = "builtin"

    def tokenize(self, text: str) -> list[str]:
        return _TOKEN.findall(text)

    def encode(self, text: str) -> list[int]:
        return [zlib.crc32(t.encode()) % VOCAB_SIZE for t in _TOKEN.findall(text)]

    def count(self, text: str) -> int:
        return sum(1 for _ in _TOKEN.finditer(text))
