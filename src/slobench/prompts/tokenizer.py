"""Tokenizers: how many tokens a prompt is, counted the way the server counts it.

- :class:`BuiltinTokenizer`: deterministic, no files; the engine emulator's own tokenizer. One
  token per word or punctuation mark (``\\w+`` or a single non-space character), ids from a stable
  hash into a 128k vocabulary. Not a real BPE, but exact and reproducible.
- :class:`HFTokenizer`: a Hugging Face ``tokenizer.json`` (file or folder), with the chat template
  from ``tokenizer_config.json`` / ``chat_template.jinja`` when there is one. Templates are
  rendered in Jinja's immutable sandbox: a template is data, never trusted code.
- :func:`load_tokenizer` resolves ``--tokenizer``: ``builtin``, a path, or a model id looked up
  in the local Hugging Face cache only (offline-safe: nothing is downloaded).

Counting rules (as vLLM counts): a completions prompt is encoded with the tokenizer's special
tokens (e.g. BOS); a chat request is rendered with the chat template (``add_generation_prompt``)
and encoded without adding special tokens again (the template writes them).
"""

from __future__ import annotations

import json
import os
import re
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from slobench.errors import UserError

VOCAB_SIZE = 128_256
_TOKEN = re.compile(r"\w+|[^\w\s]")

Message = Mapping[str, Any]


@runtime_checkable
class Tokenizer(Protocol):
    name: str

    def encode(self, text: str, *, special: bool = True) -> list[int]: ...

    def count(self, text: str, *, special: bool = True) -> int: ...

    def render_chat(self, messages: Sequence[Message]) -> str: ...

    def count_chat(self, messages: Sequence[Message]) -> int: ...


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: only text counts here
        return "".join(p.get("text", "") for p in content
                       if isinstance(p, dict) and p.get("type") == "text")
    return ""


class BuiltinTokenizer:
    """One token per word or punctuation mark; chat = the message texts joined by newlines (as
    the emulator reads them), no template tokens."""

    name = "builtin"

    def tokenize(self, text: str) -> list[str]:
        return _TOKEN.findall(text)

    def encode(self, text: str, *, special: bool = True) -> list[int]:
        return [zlib.crc32(t.encode()) % VOCAB_SIZE for t in _TOKEN.findall(text)]

    def count(self, text: str, *, special: bool = True) -> int:
        return len(_TOKEN.findall(text))

    def render_chat(self, messages: Sequence[Message]) -> str:
        return "\n".join(_text_of(m.get("content")) for m in messages)

    def count_chat(self, messages: Sequence[Message]) -> int:
        return self.count(self.render_chat(messages))


def _token_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _raise_exception(message: str) -> None:
    raise UserError(f"chat template: {message}")


class HFTokenizer:
    """A Hugging Face fast tokenizer (``tokenizer.json``) and its chat template."""

    def __init__(self, path: str | Path, *, name: str | None = None) -> None:
        try:
            from tokenizers import Tokenizer as _Tok
        except ImportError:  # pragma: no cover - a declared dependency
            raise UserError("the 'tokenizers' package is missing; pip install tokenizers") from None
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        folder = file.parent
        if not file.is_file():
            raise UserError(f"{file}: no tokenizer.json there; give the file or the folder "
                            "that holds it")
        try:
            self._tok = _Tok.from_file(str(file))
        except Exception as exc:  # the Rust side raises plain Exception subclasses
            raise UserError(f"{file}: not a valid tokenizer.json ({exc})") from None
        self.name = name or str(file)
        self.path = file
        config = _read_json(folder / "tokenizer_config.json")
        self.bos_token = _token_text(config.get("bos_token"))
        self.eos_token = _token_text(config.get("eos_token"))
        self.chat_template = _chat_template(folder, config)
        self._template: Any = None

    def encode(self, text: str, *, special: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=special).ids

    def count_batch(self, texts: Sequence[str], *, special: bool = True) -> list[int]:
        return [len(e.ids) for e in self._tok.encode_batch(list(texts),
                                                            add_special_tokens=special)]

    def count(self, text: str, *, special: bool = True) -> int:
        return len(self._tok.encode(text, add_special_tokens=special).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def render_chat(self, messages: Sequence[Message]) -> str:
        if self.chat_template is None:  # no template: the server would refuse or fall back
            return "\n".join(_text_of(m.get("content")) for m in messages)
        if self._template is None:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = _raise_exception
            try:
                self._template = env.from_string(self.chat_template)
            except Exception as exc:
                raise UserError(f"{self.path.parent}: the chat template does not parse "
                                f"({exc})") from None
        try:
            return self._template.render(messages=list(messages), add_generation_prompt=True,
                                         bos_token=self.bos_token or "",
                                         eos_token=self.eos_token or "")
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"{self.path.parent}: the chat template failed ({exc})") from None

    def count_chat(self, messages: Sequence[Message]) -> int:
        return self.count(self.render_chat(messages), special=False)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not readable JSON ({exc})") from None
    return data if isinstance(data, dict) else {}


def _chat_template(folder: Path, config: Mapping[str, Any]) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if template is None:
        template = _read_json(folder / "chat_template.json").get("chat_template")
    if isinstance(template, list):  # named templates: the "default" one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) else None


def hf_cache_dirs() -> list[Path]:
    """Where the Hugging Face hub cache may be, in the order huggingface_hub looks."""
    dirs = []
    if os.environ.get("HF_HUB_CACHE"):
        dirs.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        dirs.append(Path(os.environ["HF_HOME"]) / "hub")
    xdg = os.environ.get("XDG_CACHE_HOME")
    dirs.append((Path(xdg) if xdg else Path.home() / ".cache") / "huggingface" / "hub")
    return dirs


def find_in_hf_cache(model_id: str) -> Path | None:
    """The snapshot folder of ``model_id`` holding a tokenizer.json (the ``main`` ref first)."""
    folder_name = "models--" + model_id.replace("/", "--")
    for cache in hf_cache_dirs():
        repo = cache / folder_name
        snapshots = repo / "snapshots"
        if not snapshots.is_dir():
            continue
        ref = repo / "refs" / "main"
        candidates = []
        if ref.is_file():
            candidates.append(snapshots / ref.read_text(encoding="utf-8").strip())
        candidates += sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
        for snap in candidates:
            if (snap / "tokenizer.json").is_file():
                return snap
    return None


def load_tokenizer(spec: str | Path | None) -> Tokenizer:
    """``None``/``builtin`` → the built-in tokenizer; a path to a tokenizer.json or its folder;
    or a Hugging Face model id (``org/name``) found in the local cache."""
    if spec is None or str(spec) == "builtin":
        return BuiltinTokenizer()
    path = Path(spec).expanduser()
    if path.exists():
        return HFTokenizer(path)
    text = str(spec)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", text):
        snap = find_in_hf_cache(text)
        if snap is not None:
            return HFTokenizer(snap, name=text)
        looked = ", ".join(str(d) for d in hf_cache_dirs())
        raise UserError(
            f"--tokenizer {text}: not in the local Hugging Face cache (looked in {looked}); "
            f"slobench never downloads. Fetch it once with `huggingface-cli download {text} "
            "tokenizer.json tokenizer_config.json`, or give the path of a tokenizer.json"
        )
    raise UserError(f"--tokenizer {text}: no such file or folder; give 'builtin', a "
                    "tokenizer.json path, or a Hugging Face model id (org/name) in the local cache")


# The tokenize endpoints slobench speaks (the engine presets name each engine's dialect):
#   vllm      POST /tokenize {"prompt"| "messages", "add_special_tokens"} -> {"count", "tokens"}
#             (vLLM, SGLang and the built-in emulator)
#   llamacpp  POST /tokenize {"content", "add_special"} -> {"tokens"}; chat rendered first by
#             POST /apply-template {"messages"} -> {"prompt"}
#   tgi       POST /tokenize {"inputs"} -> [{"id", "text", ...}, ...];
#             chat: POST /chat_tokenize {"model", "messages"} -> {"tokenize_response": [...]}
#   trtllm    POST /_internal/tokenize {"prompt"} -> {"count"}; text only
TOKENIZE_DIALECTS = ("vllm", "llamacpp", "tgi", "trtllm")
CHAT_DIALECTS = frozenset({"vllm", "llamacpp", "tgi"})


class ServerTokenizer:
    """The target server's own tokenizer, over HTTP (counts only).

    ``dialect`` is one of ``TOKENIZE_DIALECTS`` (the engine preset's), or None to detect it on
    first use (tried in the order vllm, llamacpp, tgi, trtllm). Many counts at once run on a small
    thread pool."""

    WORKERS = 16

    def __init__(self, base_url: str, model: str, *, headers: Mapping[str, str] | None = None,
                 timeout_s: float = 30.0, dialect: str | None = None) -> None:
        if dialect is not None and dialect not in TOKENIZE_DIALECTS:
            raise ValueError(f"unknown tokenize dialect {dialect!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = f"server:{self.base_url}"
        self._headers = {"Content-Type": "application/json", **dict(headers or {})}
        self._timeout = timeout_s
        self.dialect: str | None = dialect

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.base_url + path, data=json.dumps(body).encode(),
                                     headers=self._headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self._timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise _Refused(exc.code) from None
        except (OSError, ValueError) as exc:
            raise UserError(f"--tokenizer server: {self.base_url}{path} failed ({exc}); is the "
                            "server up?") from None

    def _detect(self) -> str:
        if self.dialect is None:
            refused: list[int] = []
            # llama.cpp answers a body without "content" with no tokens at all: not vLLM
            probes = (("vllm", lambda: self._vllm({"prompt": "hello world"}, True)),
                      ("llamacpp", lambda: self._llamacpp("hello world", True)),
                      ("tgi", lambda: self._tgi("hello world")),
                      ("trtllm", lambda: self._trtllm("hello world")))
            for dialect, probe in probes:
                try:
                    if probe() > 0:
                        self.dialect = dialect
                        break
                except _Refused as exc:
                    refused.append(exc.status)
            else:
                raise UserError(
                    f"--tokenizer server: {self.base_url} has no tokenize endpoint that slobench "
                    f"knows (HTTP {', '.join(map(str, refused)) or 'answers without tokens'}); "
                    "give a tokenizer.json instead")
        return self.dialect

    def check(self, *, chat: bool) -> None:
        """Fail now, in one line, when the server cannot count what the run will send."""
        dialect = self._detect()
        if chat and dialect not in CHAT_DIALECTS:
            raise UserError(
                f"--tokenizer server: {self.base_url}'s tokenize endpoint ({dialect}) takes text "
                "only, so chat prompts cannot be counted exactly; give the model's tokenizer "
                "(--tokenizer org/model from the local HF cache, or a tokenizer.json), or use "
                "--endpoint completions")

    def _vllm(self, body: dict[str, Any], special: bool, path: str = "/tokenize") -> int:
        data = self._post(path, {"model": self.model, "add_special_tokens": special, **body})
        if isinstance(data, dict):
            if isinstance(data.get("count"), int):
                return data["count"]
            if isinstance(data.get("tokens"), list):
                return len(data["tokens"])
        raise _Refused(200)

    def _llamacpp(self, text: str, special: bool) -> int:
        data = self._post("/tokenize", {"content": text, "add_special": special})
        if not isinstance(data, dict) or not isinstance(data.get("tokens"), list):
            raise _Refused(200)
        return len(data["tokens"])

    def _tgi(self, text: str) -> int:
        data = self._post("/tokenize", {"inputs": text})
        if not isinstance(data, list):
            raise _Refused(200)
        return len(data)

    def _trtllm(self, text: str) -> int:
        data = self._post("/_internal/tokenize", {"model": self.model, "prompt": text})
        if not isinstance(data, dict) or not isinstance(data.get("count"), int):
            raise _Refused(200)
        return data["count"]

    def count(self, text: str, *, special: bool = True) -> int:
        try:
            return self._count(text, special)
        except _Refused as exc:
            raise self._refused(exc) from None

    def _refused(self, exc: _Refused) -> UserError:
        return UserError(f"--tokenizer server: {self.base_url} refused a tokenize request "
                         f"(HTTP {exc.status}, {self.dialect} dialect); give a tokenizer.json "
                         "instead")

    def _count(self, text: str, special: bool) -> int:
        dialect = self._detect()
        if dialect == "vllm":
            return self._vllm({"prompt": text}, special)
        if dialect == "llamacpp":
            return self._llamacpp(text, special)
        if dialect == "tgi":  # TGI always adds the tokenizer's special tokens
            return self._tgi(text)
        return self._trtllm(text)

    def count_batch(self, texts: Sequence[str], *, special: bool = True) -> list[int]:
        from concurrent.futures import ThreadPoolExecutor

        self._detect()
        with ThreadPoolExecutor(self.WORKERS) as pool:
            return list(pool.map(lambda t: self.count(t, special=special), texts))

    def encode(self, text: str, *, special: bool = True) -> list[int]:
        raise UserError("--tokenizer server gives counts only")

    def render_chat(self, messages: Sequence[Message]) -> str:
        if self._detect() == "llamacpp":
            try:
                data = self._post("/apply-template", {"messages": list(messages)})
            except _Refused as exc:
                raise self._refused(exc) from None
            if isinstance(data, dict) and isinstance(data.get("prompt"), str):
                return data["prompt"]
        return "\n".join(_text_of(m.get("content")) for m in messages)

    def count_chat(self, messages: Sequence[Message]) -> int:
        try:
            return self._count_chat(messages)
        except _Refused as exc:
            raise self._refused(exc) from None

    def _count_chat(self, messages: Sequence[Message]) -> int:
        dialect = self._detect()
        if dialect == "vllm":
            return self._vllm({"messages": list(messages), "add_generation_prompt": True},
                              False)
        if dialect == "llamacpp":
            return self._llamacpp(self.render_chat(messages), False)
        if dialect == "tgi":
            data = self._post("/chat_tokenize", {"model": self.model,
                                                 "messages": list(messages)})
            if isinstance(data, dict) and isinstance(data.get("tokenize_response"), list):
                return len(data["tokenize_response"])
            raise UserError(f"--tokenizer server: {self.base_url}/chat_tokenize answered "
                            "without tokenize_response; give a tokenizer.json instead")
        self.check(chat=True)  # raises: a text-only endpoint
        return 0


class _Refused(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status
