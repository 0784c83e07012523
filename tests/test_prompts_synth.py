"""Token-exact prompts: tokenizers trained inside the test (saved as tokenizer.json with a chat
template), exact counts from 1 to 32k tokens for completions and chat, prefix blocks that give
identical leading token sequences, and unrelated requests that share no leading block."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from slobench.errors import UserError
from slobench.prompts.synth import PromptSynthesizer, corpus_files, read_corpus
from slobench.prompts.tokenizer import BuiltinTokenizer, HFTokenizer, load_tokenizer

TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n"
            "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
LENGTHS = [*range(1, 300), 511, 512, 513, 1000, 2048, 4095, 8192, 16384, 32768]


def train(folder: Path, kind: str, text: str) -> Path:
    """A small BPE tokenizer of the given pre-tokenizer family, saved as a HF folder."""
    tok = Tokenizer(models.BPE())
    if kind == "metaspace":  # SentencePiece style (Llama 2, Mistral)
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        alphabet: list[str] = []
    else:
        level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=kind == "bytelevel")
        tok.pre_tokenizer = (level if kind == "bytelevel" else pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(LLAMA3_SPLIT), "isolated"), level]))
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=3000, initial_alphabet=alphabet,
                                  special_tokens=["<s>", "</s>", "<|user|>", "<|assistant|>"])
    tok.train_from_iterator([text], trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": {"content": "</s>"}, "chat_template": TEMPLATE}))
    return folder


@pytest.fixture(scope="module")
def corpus() -> str:
    return read_corpus()


@pytest.fixture(scope="module", params=["bytelevel", "llama3", "metaspace"])
def hf(request, tmp_path_factory, corpus) -> HFTokenizer:
    folder = train(tmp_path_factory.mktemp("tok") / request.param, request.param, corpus)
    return HFTokenizer(folder)


def test_shipped_corpus_is_real_text():
    files = corpus_files()
    assert len(files) >= 10
    words = read_corpus().split()
    assert len(words) > 15_000
    assert (files[0].parent / "LICENSE").is_file()


@pytest.mark.parametrize("chat", [False, True])
def test_exact_counts_from_1_to_32k(hf, corpus, chat):
    s = PromptSynthesizer(hf, corpus, block_tokens=64, nonce="t", chat=chat)
    assert s.overhead >= 1  # BOS; for chat, the template's tokens too
    for n in LENGTHS:
        if n <= s.overhead:
            continue  # a request cannot be shorter than what the server adds around the text
        text = s.text(f"r{n}", n)
        assert s.count(text) == n, (n, s.count(text))
        assert s.exact(f"r{n}", n) == text
    assert s.stats.missed == 0 and s.stats.fixed == 0


def test_chat_count_is_the_templates(hf, corpus):
    s = PromptSynthesizer(hf, corpus, chat=True)
    text = s.text("r1", 200)
    rendered = hf.render_chat([{"role": "user", "content": text}])
    assert rendered.startswith("<s><|user|>\n") and rendered.endswith("<|assistant|>\n")
    assert len(hf.encode(rendered, special=False)) == 200


def test_prefix_blocks_share_leading_tokens_exactly(hf, corpus):
    s = PromptSynthesizer(hf, corpus, block_tokens=128, nonce="run1")
    a = hf.encode(s.text("a", 1000, [11, 12, 13, 14]))
    b = hf.encode(s.text("b", 900, [11, 12, 99]))
    c = hf.encode(s.text("c", 1000, [11, 12, 13, 14, 15, 16, 17]))
    shared = s.overhead + 2 * 128
    assert a[:shared] == b[:shared]
    assert a[shared] != b[shared] or a[shared + 1:shared + 8] != b[shared + 1:shared + 8]
    assert a[: s.overhead + 4 * 128] == c[: s.overhead + 4 * 128]
    assert len(a) == 1000 and len(b) == 900 and len(c) == 1000


def test_unrelated_requests_share_no_leading_block(hf, corpus):
    s = PromptSynthesizer(hf, corpus, block_tokens=16, nonce="run1")
    firsts = set()
    for i in range(500):
        ids = hf.encode(s.text(f"req{i}", 300))
        firsts.add(tuple(ids[s.overhead:s.overhead + 16]))
    assert len(firsts) == 500
    # another run (nonce) sends different text for the same request ids
    other = PromptSynthesizer(hf, corpus, block_tokens=16, nonce="run2")
    assert other.text("req1", 300)[:200] != s.text("req1", 300)[:200]


def test_builtin_tokenizer_exact_and_fast(corpus):
    tok = BuiltinTokenizer()
    s = PromptSynthesizer(tok, corpus, block_tokens=512, nonce="x")
    for n in (1, 2, 3, 100, 513, 4096, 100_000):
        assert tok.count(s.text("r", n)) == n


def test_exact_fixes_a_tokenizer_that_does_not_add_up(corpus):
    class Merging(BuiltinTokenizer):
        """Counts 'the of' as one token: piece counts no longer add up."""

        def count(self, text: str, *, special: bool = True) -> int:
            return super().count(text) - text.count(" the of")

    s = PromptSynthesizer(Merging(), corpus, block_tokens=64)
    for i in range(200):
        text = s.exact(f"r{i}", 400)
        assert Merging().count(text) == 400 or s.stats.missed
    assert s.stats.missed == 0


def test_load_tokenizer_resolves_paths_and_cache(tmp_path, monkeypatch, corpus):
    assert load_tokenizer(None).name == "builtin"
    folder = train(tmp_path / "t", "bytelevel", corpus[:20000])
    assert isinstance(load_tokenizer(folder), HFTokenizer)
    assert isinstance(load_tokenizer(folder / "tokenizer.json"), HFTokenizer)
    cache = tmp_path / "hub"
    snap = cache / "models--acme--tiny" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "tokenizer.json").write_bytes((folder / "tokenizer.json").read_bytes())
    (cache / "models--acme--tiny" / "refs").mkdir()
    (cache / "models--acme--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    tok = load_tokenizer("acme/tiny")
    assert tok.name == "acme/tiny" and tok.count(" hello world") >= 2
    with pytest.raises(UserError, match="not in the local Hugging Face cache"):
        load_tokenizer("acme/absent")
    with pytest.raises(UserError, match="no such file"):
        load_tokenizer(str(tmp_path / "nope.json"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tokenizer.json").write_text("{not json")
    with pytest.raises(UserError, match=r"not a valid tokenizer\.json"):
        load_tokenizer(bad)


def test_hostile_chat_template_is_sandboxed(tmp_path, corpus):
    folder = train(tmp_path / "t", "bytelevel", corpus[:20000])
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="chat template failed"):
        HFTokenizer(folder).render_chat([{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("chat", [False, True])
def test_follow_up_keeps_history_and_hits_the_count(hf, corpus, chat):
    s = PromptSynthesizer(hf, corpus, block_tokens=64, nonce="t", chat=chat)
    first = s.exact("s0.t0", 300)
    answer = " The answer, as the server wrote it: forty-two."
    history = ([{"role": "user", "content": first}, {"role": "assistant", "content": answer}]
               if chat else first + answer)
    sent = s.follow_up("s0.t1", 600, history)
    if chat:
        assert sent[:2] == history and sent[2]["role"] == "user"
        assert hf.count_chat(sent) == 600
    else:
        assert sent.startswith(history)
        assert hf.count(sent) == 600
    # shorter than the history: one-token message, counted as a miss
    s.follow_up("s0.t2", 10, history)
    assert s.stats.missed == 1


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("which", ["hf", "builtin"])
def test_follow_up_off_the_loop_is_the_same_turn(hf, corpus, chat, which):
    # the client sizes long follow-ups on a thread with counts that release the GIL (HF batch
    # call, built-in in slices): the turn must be exactly the one sized on the loop
    tok = hf if which == "hf" else BuiltinTokenizer()
    s = PromptSynthesizer(tok, corpus, block_tokens=64, nonce="t", chat=chat)
    first = s.text("s0.t0", 12_000, ())  # longer than one 32k-character slice
    history = ([{"role": "user", "content": first}, {"role": "assistant", "content": "ok"}]
               if chat else first + " ok")
    on_loop = s.follow_up("s0.t1", 13_000, history)
    off_loop = s.follow_up("s0.t1", 13_000, history, off_loop=True)
    assert off_loop == on_loop
    count = tok.count_chat(off_loop) if chat else tok.count(off_loop)
    assert count == 13_000 and s.stats.missed == 0
