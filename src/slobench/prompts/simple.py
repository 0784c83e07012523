"""Minimal prompt text until token-exact synthesis lands: about one token per word.

Each prompt starts with its request id so no two requests share a leading block by accident
(synthetic prompts that all begin alike hit the prefix cache and flatter the server).
"""

from __future__ import annotations

import zlib

import numpy as np

# Short, common English words: one token each in the usual BPE vocabularies (with leading space).
_WORDS = (
    "the", "of", "and", "to", "in", "is", "was", "he", "for", "it", "with", "as", "his", "on",
    "be", "at", "by", "had", "are", "but", "from", "or", "have", "an", "they", "which", "one",
    "you", "were", "her", "all", "she", "there", "would", "their", "we", "him", "been", "has",
    "when", "who", "will", "more", "no", "if", "out", "so", "said", "what", "up", "its", "about",
    "into", "than", "them", "can", "only", "other", "new", "some", "could", "time", "these",
    "two", "may", "then", "do", "first", "any", "my", "now", "such", "like", "our", "over", "man",
    "me", "even", "most", "made", "after", "also", "did", "many", "before", "must", "through",
    "back", "years", "where", "much", "your", "way", "well", "down", "should", "because", "each",
    "just", "those", "people", "how", "too", "little", "state", "good", "very", "make", "world",
    "still", "own", "see", "men", "work", "long", "get", "here", "between", "both", "life",
    "being", "under", "never", "day", "same", "another", "know", "while", "last", "might", "us",
    "great", "old", "year", "off", "come", "since", "against", "go", "came", "right", "used",
    "take", "three",
)
_VOCAB = np.array(_WORDS)


def simple_prompt(request_id: str, n_tokens: int, seed: int = 0) -> str:
    """About ``n_tokens`` tokens of word salad, unique to ``request_id`` from its first word."""
    n_tokens = max(int(n_tokens), 1)
    rng = np.random.default_rng([seed, zlib.crc32(request_id.encode())])
    body = _VOCAB[rng.integers(0, len(_VOCAB), size=max(n_tokens - 1, 0))]
    return request_id + (" " + " ".join(body) if len(body) else "")
