"""A real llama.cpp server for the integration tests (tests/test_llama_cpp.py; docs/engines.md).

- :func:`llama_dir` / :func:`server_binary`: where ``scripts/build-llama-server.sh`` keeps the
  native ``llama-server`` it builds from the llama-cpp-python sdist, and the vocab-only GGUF files
  of real tokenizers that come with that source.
- :func:`write_tiny_model`: a llama-architecture GGUF with random weights and tiny dimensions that
  embeds one of those real vocabularies (Qwen2's by default: byte-level BPE, control tokens and a
  ChatML chat template), so the server tokenizes and templates exactly like a real Qwen2 model.
- :func:`write_hf_tokenizer`: the same vocabulary as a Hugging Face ``tokenizer.json`` (plus a
  ``tokenizer_config.json`` carrying the chat template), for slobench's ``--tokenizer FILE``.
- :class:`LlamaServer`: starts ``llama-server`` on a free 127.0.0.1 port, waits for ``/health``,
  stops it on exit.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO / "scripts" / "build-llama-server.sh"
VOCAB = "qwen2"

# The pre-tokenizer regex llama.cpp applies for tokenizer.ggml.pre == "qwen2"
# (src/llama-vocab.cpp, LLAMA_VOCAB_PRE_TYPE_QWEN2); Qwen2's own tokenizer.json uses the same one.
QWEN2_SPLIT = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|"
               r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED = 1, 3, 4


def llama_dir() -> Path:
    """The build cache of this checkout's pinned version (the script says where)."""
    out = subprocess.run(["bash", str(BUILD_SCRIPT), "--print-dir"], capture_output=True,
                         text=True, check=True)
    return Path(out.stdout.strip())


def server_binary() -> Path | None:
    """The built ``llama-server``, or None when ``scripts/build-llama-server.sh`` has not run."""
    d = llama_dir()
    binary = d / "bin" / "llama-server"
    return binary if binary.is_file() and (d / "READY").is_file() else None


def vocab_file(name: str = VOCAB) -> Path:
    return llama_dir() / "models" / f"ggml-vocab-{name}.gguf"


def read_vocab(path: Path) -> dict[str, Any]:
    """The ``tokenizer.*`` key/values of a GGUF file (values as plain Python)."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    return {key: field.contents() for key, field in reader.fields.items()
            if key.startswith("tokenizer.")}


def write_tiny_model(path: Path, vocab: dict[str, Any], *, n_embd: int = 64, n_layer: int = 2,
                     n_head: int = 4, n_ff: int = 128, n_ctx: int = 4096, seed: int = 0) -> Path:
    """A llama GGUF with random weights (f16 matrices, f32 norms; the output head tied to the
    token embeddings) and the given real vocabulary. About 20 MB with Qwen2's 152k tokens."""
    import gguf

    rng = np.random.default_rng(seed)
    n_vocab = len(vocab["tokenizer.ggml.tokens"])
    head_dim = n_embd // n_head
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("slobench-tiny-random")
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model(vocab["tokenizer.ggml.model"])
    w.add_tokenizer_pre(vocab["tokenizer.ggml.pre"])
    w.add_token_list(vocab["tokenizer.ggml.tokens"])
    w.add_token_types(vocab["tokenizer.ggml.token_type"])
    w.add_token_merges(vocab["tokenizer.ggml.merges"])
    w.add_bos_token_id(vocab["tokenizer.ggml.bos_token_id"])
    w.add_eos_token_id(vocab["tokenizer.ggml.eos_token_id"])
    w.add_add_bos_token(False)  # as Qwen2's tokenizer: no BOS
    if "tokenizer.chat_template" in vocab:
        w.add_chat_template(vocab["tokenizer.chat_template"])

    def mat(rows: int, cols: int, scale: float) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * scale).astype(np.float16)

    ones = np.ones(n_embd, dtype=np.float32)
    w.add_tensor("token_embd.weight", mat(n_vocab, n_embd, 0.5))
    w.add_tensor("output_norm.weight", ones)
    s = 1.0 / np.sqrt(n_embd)
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", ones)
        w.add_tensor(f"blk.{i}.attn_q.weight", mat(n_embd, n_embd, s))
        w.add_tensor(f"blk.{i}.attn_k.weight", mat(n_embd, n_embd, s))
        w.add_tensor(f"blk.{i}.attn_v.weight", mat(n_embd, n_embd, s))
        w.add_tensor(f"blk.{i}.attn_output.weight", mat(n_embd, n_embd, s))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", ones)
        w.add_tensor(f"blk.{i}.ffn_gate.weight", mat(n_ff, n_embd, s))
        w.add_tensor(f"blk.{i}.ffn_up.weight", mat(n_ff, n_embd, s))
        w.add_tensor(f"blk.{i}.ffn_down.weight", mat(n_embd, n_ff, 1.0 / np.sqrt(n_ff)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_hf_tokenizer(folder: Path, vocab: dict[str, Any]) -> Path:
    """The GGUF vocabulary as a Hugging Face ``tokenizer.json`` (byte-level BPE with the
    pre-tokenizer llama.cpp uses for it; control and user-defined tokens as added tokens, which
    both sides match anywhere in the text) and a ``tokenizer_config.json`` with the chat
    template. Returns the folder."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    if vocab["tokenizer.ggml.model"] != "gpt2" or vocab["tokenizer.ggml.pre"] != "qwen2":
        raise ValueError("only the qwen2 byte-level BPE vocabulary is converted here")
    tokens: list[str] = vocab["tokenizer.ggml.tokens"]
    types: list[int] = vocab["tokenizer.ggml.token_type"]
    merges = [tuple(m.split(" ", 1)) for m in vocab["tokenizer.ggml.merges"]]
    bpe_vocab = {t: i for i, (t, ty) in enumerate(zip(tokens, types, strict=True))
                 if ty == TOKEN_NORMAL}
    tok = Tokenizer(models.BPE(vocab=bpe_vocab, merges=merges, fuse_unk=False,
                               byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    # Added in id order, so each gets the id it has in the GGUF file.
    added = [(i, t, ty) for i, (t, ty) in enumerate(zip(tokens, types, strict=True))
             if ty in (TOKEN_CONTROL, TOKEN_USER_DEFINED)]
    for i, text, ty in added:
        at = AddedToken(text, special=ty == TOKEN_CONTROL, normalized=False)
        n = tok.add_special_tokens([at]) if ty == TOKEN_CONTROL else tok.add_tokens([at])
        if n != 1 or tok.token_to_id(text) != i:
            raise ValueError(f"added token {text!r} did not get id {i}")
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    eos = tokens[vocab["tokenizer.ggml.eos_token_id"]]
    config = {"eos_token": eos, "bos_token": None, "add_bos_token": False,
              "chat_template": vocab.get("tokenizer.chat_template")}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, body: dict[str, Any] | None = None, *, timeout: float = 30.0
              ) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


class LlamaServer:
    """``llama-server`` on 127.0.0.1 with ``slots`` parallel slots (continuous batching), a
    context of ``ctx_per_slot`` tokens per slot, and the Prometheus ``/metrics`` endpoint."""

    def __init__(self, binary: Path, model: Path, *, slots: int = 4, ctx_per_slot: int = 1024,
                 log: Path | None = None, threads: int = 2) -> None:
        self.binary, self.model, self.slots = binary, model, slots
        self.ctx = slots * ctx_per_slot
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = log or model.with_suffix(".server.log")
        self.threads = threads
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LlamaServer:
        cmd = [str(self.binary), "-m", str(self.model), "--host", "127.0.0.1",
               "--port", str(self.port), "-np", str(self.slots), "-c", str(self.ctx),
               "--metrics", "-t", str(self.threads), "-tb", str(self.threads),
               "--alias", "tiny-qwen2-vocab", "--no-warmup", "--seed", "1",
               "--temp", "0"]  # greedy: the same answers on every run
        env = {**os.environ, "LLAMA_ARG_HOST": "127.0.0.1"}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.proc.returncode}: "
                                   f"{self.log_tail()}")
            try:
                if http_json(self.base_url + "/health", timeout=2).get("status") == "ok":
                    return self
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.2)
        self.__exit__(None, None, None)
        raise RuntimeError(f"llama-server not healthy within 60 s: {self.log_tail()}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"

    def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        return http_json(self.base_url + "/tokenize",
                         {"content": text, "add_special": add_special})["tokens"]

    def metrics(self) -> str:
        with urllib.request.urlopen(self.base_url + "/metrics", timeout=10) as resp:
            return resp.read().decode()
