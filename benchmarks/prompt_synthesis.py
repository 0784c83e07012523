"""How fast are token-exact prompts made, and how exact are they?

For prompts of 2,048 and 32,768 tokens, with the built-in tokenizer and with a byte-level BPE
tokenizer trained here on the shipped corpus (the `tokenizers` library; 16k vocabulary, saved
and reloaded as a tokenizer.json like a real model's), it times:

- ``text``: :meth:`PromptSynthesizer.text` (slicing the corpus; exact when piece counts add up);
- ``exact``: :meth:`PromptSynthesizer.exact` (the same, re-tokenized to check, fixed if needed);
- ``random ids`` (the common approach of other benchmark tools, e.g. a random-token dataset):
  draw N random token ids, decode them to text, and re-encode that text to see how long the
  prompt really is. Its share of prompts that come out at exactly N tokens is reported too.

Each case makes ``--prompts`` prompts (different request ids) after a warm-up; prompts per
second is the median of ``--repeats`` runs. Usage::

    python benchmarks/prompt_synthesis.py            # ~1 min
    python benchmarks/prompt_synthesis.py --quick

Prints a table and writes ``benchmarks/results/prompt_synthesis.json``; see docs/prompts.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from slobench.prompts.synth import PromptSynthesizer, SynthStats, read_corpus
from slobench.prompts.tokenizer import BuiltinTokenizer, HFTokenizer


def trained_tokenizer(corpus: str, folder: Path) -> HFTokenizer:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=16_000, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([corpus], trainer)
    tok.save(str(folder / "tokenizer.json"))
    return HFTokenizer(folder, name="byte-level BPE, 16k vocab (trained on the corpus)")


def timed(fn: Any, n: int, repeats: int) -> float:
    rates = []
    for r in range(repeats):
        t0 = time.perf_counter()
        for i in range(n):
            fn(f"req-{r}-{i}")
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


def random_ids_case(tok: HFTokenizer, length: int, n: int) -> tuple[float, float]:
    """Prompts per second and the share that re-encode to exactly ``length`` tokens."""
    rng = np.random.default_rng(0)
    vocab = tok._tok.get_vocab_size()
    exact = 0
    t0 = time.perf_counter()
    for _ in range(n):
        ids = rng.integers(2, vocab, size=length).tolist()
        text = tok.decode(ids)
        exact += tok.count(text, special=False) == length
    return n / (time.perf_counter() - t0), exact / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results"
                    / "prompt_synthesis.json")
    args = ap.parse_args()
    if args.quick:
        args.prompts, args.repeats = 300, 1
    corpus = read_corpus()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tokenizers = [BuiltinTokenizer(), trained_tokenizer(corpus, Path(tmp))]
        for tok in tokenizers:
            t0 = time.perf_counter()
            synth = PromptSynthesizer(tok, corpus, nonce="bench")
            setup_s = time.perf_counter() - t0
            for length in (2048, 32768):
                n = args.prompts if length <= 2048 else max(args.prompts // 16, 20)
                synth.text("warm", length)
                row: dict[str, Any] = {"tokenizer": tok.name, "tokens": length, "prompts": n,
                                       "setup_s": setup_s}
                row["text_per_s"] = timed(lambda rid, s=synth, ln=length: s.text(rid, ln), n,
                                          args.repeats)
                synth.stats = SynthStats()
                row["exact_per_s"] = timed(lambda rid, s=synth, ln=length: s.exact(rid, ln), n,
                                           args.repeats)
                row["exact_stats"] = synth.stats.as_dict()
                if isinstance(tok, HFTokenizer):
                    rate, share = random_ids_case(tok, length, max(n // 4, 10))
                    row["random_ids_per_s"] = rate
                    row["random_ids_exact_share"] = share
                results.append(row)
                print(f"{tok.name[:40]:40} {length:>6} tok: text {row['text_per_s']:>10,.0f}/s"
                      f"  exact {row['exact_per_s']:>8,.0f}/s"
                      + (f"  random-ids {row['random_ids_per_s']:>7,.0f}/s "
                         f"(exact {row['random_ids_exact_share']:.0%})"
                         if "random_ids_per_s" in row else ""), flush=True)
    report = {
        "benchmark": "prompt_synthesis",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": sys.version.split()[0]},
        "corpus_words": len(corpus.split()),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
