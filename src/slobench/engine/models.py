"""Model catalog: the architecture numbers the step-time model (engine/costmodel.py) needs.

Every catalog entry copies the model's published Hugging Face ``config.json`` (cited by repo id:
``https://huggingface.co/<repo>/blob/main/config.json``); parameter counts are *derived* from
those shapes and checked against the published sizes in the tests. Any other decoder-only
transformer comes from its own ``config.json`` through :func:`load_hf_config` (read as plain JSON;
nothing in it is executed). Look models up with :func:`get_model` (forgiving names:
``llama-3.1-8b``, ``meta-llama/Llama-3.1-8B-Instruct``, ``qwen3-8b``) or do either with
:func:`resolve_model`. See docs/engine-model.md.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from slobench.errors import UserError, did_you_mean

__all__ = [
    "DTYPE_BYTES",
    "MODELS",
    "PUBLISHED_ACTIVE",
    "ModelSpec",
    "canonical_dtype",
    "dtype_bytes",
    "get_model",
    "load_hf_config",
    "model_names",
    "resolve_model",
]

# Bytes per element of a weight or KV-cache dtype. int4 (AWQ/GPTQ, group size 128) carries one
# fp16 scale per 128 weights: 0.5 + 2/128 bytes per weight.
DTYPE_BYTES: dict[str, float] = {
    "fp32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5 + 2 / 128,
}
_DTYPE_ALIASES: dict[str, str] = {
    "float32": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "auto": "bf16",
    "fp8e4m3": "fp8",
    "fp8e5m2": "fp8",
    "fp8e4m3fn": "fp8",
    "float8": "fp8",
    "w8a8": "int8",
    "awq": "int4",
    "gptq": "int4",
    "w4a16": "int4",
}


def canonical_dtype(name: str, what: str = "dtype") -> str:
    """The canonical dtype name (``bf16``, ``fp8``...) for a forgiving spelling."""
    key = re.sub(r"[^a-z0-9]", "", str(name).strip().lower())
    key = _DTYPE_ALIASES.get(key, key)
    if key not in DTYPE_BYTES:
        raise UserError(f"unknown {what} '{name}'; use one of {', '.join(DTYPE_BYTES)}")
    return key


def dtype_bytes(name: str, what: str = "dtype") -> float:
    """Bytes per element of a dtype given by a forgiving name (``bf16``, ``fp8_e4m3``, ``auto``)."""
    return DTYPE_BYTES[canonical_dtype(name, what)]


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer's shapes (Hugging Face ``config.json`` names in comments)."""

    name: str  # canonical catalog name (or the file's) e.g. "llama-3.1-8b"
    layers: int  # num_hidden_layers
    hidden: int  # hidden_size
    heads: int  # num_attention_heads
    kv_heads: int  # num_key_value_heads (GQA); = heads without it
    head_dim: int  # head_dim; hidden / heads without it
    intermediate: int  # intermediate_size (dense FFN width; an expert's width in Mixtral)
    vocab: int  # vocab_size
    experts: int = 0  # num_local_experts / num_experts; 0 = dense
    top_k: int = 0  # num_experts_per_tok
    expert_intermediate: int = 0  # moe_intermediate_size; 0 = intermediate
    shared_expert_intermediate: int = 0  # shared_expert_intermediate_size (Qwen2-MoE)
    tied_embeddings: bool = False  # tie_word_embeddings
    qkv_bias: bool = False  # Qwen2: biases on q/k/v projections
    qk_norm: bool = False  # Qwen3: RMSNorm on q and k (head_dim weights each)
    max_context: int = 0  # max_position_embeddings
    model_type: str = ""  # model_type
    published_params: float = 0.0  # published size in parameters (for checks), 0 = unknown
    source: str = ""  # where the numbers come from

    # ------------------------------------------------------------------ derived
    @property
    def is_moe(self) -> bool:
        return self.experts > 1

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def embedding_params(self) -> int:
        """Input embedding table (vocab x hidden)."""
        return self.vocab * self.hidden

    @property
    def lm_head_params(self) -> int:
        """The output projection's weights (the embedding table itself when tied)."""
        return self.vocab * self.hidden

    @property
    def attention_params_per_layer(self) -> int:
        h = self.hidden
        n = h * self.q_dim + 2 * h * self.kv_dim + self.q_dim * h
        if self.qkv_bias:
            n += self.q_dim + 2 * self.kv_dim
        if self.qk_norm:
            n += 2 * self.head_dim
        return n

    @property
    def expert_params(self) -> int:
        """One routed expert (gate, up and down projections)."""
        width = self.expert_intermediate or self.intermediate
        return 3 * self.hidden * width

    @property
    def dense_ffn_params_per_layer(self) -> int:
        """FFN weights every token goes through: the dense MLP, or router + shared expert."""
        if not self.is_moe:
            return 3 * self.hidden * self.intermediate
        n = self.hidden * self.experts  # router
        if self.shared_expert_intermediate:
            n += 3 * self.hidden * self.shared_expert_intermediate + self.hidden  # + its gate
        return n

    @property
    def norm_params_per_layer(self) -> int:
        return 2 * self.hidden

    @cached_property
    def params_per_layer(self) -> int:
        n = self.attention_params_per_layer + self.dense_ffn_params_per_layer
        n += self.norm_params_per_layer
        if self.is_moe:
            n += self.experts * self.expert_params
        return n

    @cached_property
    def total_params(self) -> int:
        """All parameters, as Hugging Face counts them (tied embeddings once)."""
        n = self.layers * self.params_per_layer + self.embedding_params + self.hidden
        if not self.tied_embeddings:
            n += self.lm_head_params
        return n

    @cached_property
    def routed_expert_params(self) -> int:
        """All routed experts' weights, all layers (0 for a dense model)."""
        return self.layers * self.experts * self.expert_params if self.is_moe else 0

    @cached_property
    def active_params(self) -> int:
        """Parameters one token goes through (MoE: only its top-k experts)."""
        if not self.is_moe:
            return self.total_params
        return self.total_params - self.layers * (self.experts - self.top_k) * self.expert_params

    @cached_property
    def layer_matmul_params(self) -> int:
        """Weights of the transformer layers' matrix multiplies (no norms, biases, embeddings)."""
        h = self.hidden
        n = h * self.q_dim + 2 * h * self.kv_dim + self.q_dim * h
        n += self.dense_ffn_params_per_layer
        return self.layers * n + self.routed_expert_params

    @cached_property
    def active_layer_matmul_params(self) -> int:
        """Layer matmul weights one token multiplies by (MoE: its top-k experts)."""
        if not self.is_moe:
            return self.layer_matmul_params
        return self.layer_matmul_params - self.layers * (self.experts - self.top_k) * (
            self.expert_params)

    def kv_bytes_per_token(self, kv_dtype: str = "bf16") -> float:
        """KV-cache bytes one token takes: 2 (K and V) x layers x KV heads x head dim x dtype."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes(kv_dtype, "KV dtype")

    def weight_bytes(self, weight_dtype: str = "bf16") -> float:
        """Bytes of all weights when the layers' matmuls are stored in ``weight_dtype``.

        Quantized checkpoints (fp8, int8, int4) quantize the transformer layers' linear weights;
        embeddings, the LM head, norms and biases stay in bf16 (as vLLM loads them).
        """
        b = dtype_bytes(weight_dtype, "weight dtype")
        other = self.total_params - self.layer_matmul_params
        return self.layer_matmul_params * b + other * 2.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(total_params=self.total_params, active_params=self.active_params,
                 kv_bytes_per_token_bf16=self.kv_bytes_per_token("bf16"))
        return d


# --------------------------------------------------------------------------- the catalog
# Each entry: the numbers of https://huggingface.co/<source>/blob/main/config.json.


def _hf(repo: str) -> str:
    return f"huggingface.co/{repo} config.json"


_CATALOG: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="llama-3.1-8b", model_type="llama", source=_hf("meta-llama/Llama-3.1-8B"),
        layers=32, hidden=4096, heads=32, kv_heads=8, head_dim=128, intermediate=14336,
        vocab=128256, tied_embeddings=False, max_context=131072,
        published_params=8.03e9,  # model card: 8B; safetensors 8,030,261,248
    ),
    ModelSpec(
        name="llama-3.1-70b", model_type="llama", source=_hf("meta-llama/Llama-3.1-70B"),
        layers=80, hidden=8192, heads=64, kv_heads=8, head_dim=128, intermediate=28672,
        vocab=128256, tied_embeddings=False, max_context=131072,
        published_params=70.6e9,  # model card: 70B; safetensors 70,553,706,496
    ),
    ModelSpec(
        name="qwen2.5-7b", model_type="qwen2", source=_hf("Qwen/Qwen2.5-7B"),
        layers=28, hidden=3584, heads=28, kv_heads=4, head_dim=128, intermediate=18944,
        vocab=152064, tied_embeddings=False, qkv_bias=True, max_context=131072,
        published_params=7.61e9,  # model card: "Number of Parameters: 7.61B"
    ),
    ModelSpec(
        name="qwen2.5-72b", model_type="qwen2", source=_hf("Qwen/Qwen2.5-72B"),
        layers=80, hidden=8192, heads=64, kv_heads=8, head_dim=128, intermediate=29568,
        vocab=152064, tied_embeddings=False, qkv_bias=True, max_context=131072,
        published_params=72.7e9,  # model card: "Number of Parameters: 72.7B"
    ),
    ModelSpec(
        name="qwen3-8b", model_type="qwen3", source=_hf("Qwen/Qwen3-8B"),
        layers=36, hidden=4096, heads=32, kv_heads=8, head_dim=128, intermediate=12288,
        vocab=151936, tied_embeddings=False, qk_norm=True, max_context=40960,
        published_params=8.2e9,  # model card: "Number of Parameters: 8.2B"
    ),
    ModelSpec(
        name="qwen3-32b", model_type="qwen3", source=_hf("Qwen/Qwen3-32B"),
        layers=64, hidden=5120, heads=64, kv_heads=8, head_dim=128, intermediate=25600,
        vocab=151936, tied_embeddings=False, qk_norm=True, max_context=40960,
        published_params=32.8e9,  # model card: "Number of Parameters: 32.8B"
    ),
    ModelSpec(
        name="qwen3-30b-a3b", model_type="qwen3_moe", source=_hf("Qwen/Qwen3-30B-A3B"),
        layers=48, hidden=2048, heads=32, kv_heads=4, head_dim=128, intermediate=6144,
        expert_intermediate=768, experts=128, top_k=8, vocab=151936, tied_embeddings=False,
        qk_norm=True, max_context=40960,
        published_params=30.5e9,  # model card: "30.5B in total and 3.3B activated"
    ),
    ModelSpec(
        name="mixtral-8x7b", model_type="mixtral", source=_hf("mistralai/Mixtral-8x7B-v0.1"),
        layers=32, hidden=4096, heads=32, kv_heads=8, head_dim=128, intermediate=14336,
        experts=8, top_k=2, vocab=32000, tied_embeddings=False, max_context=32768,
        published_params=46.7e9,  # Mistral AI: "46.7B total parameters, 12.9B per token"
    ),
    ModelSpec(
        name="deepseek-r1-distill-qwen-7b", model_type="qwen2",
        source=_hf("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"),
        layers=28, hidden=3584, heads=28, kv_heads=4, head_dim=128, intermediate=18944,
        vocab=152064, tied_embeddings=False, qkv_bias=True, max_context=131072,
        published_params=7.62e9,  # model page: 7.62B params (safetensors)
    ),
    ModelSpec(
        name="deepseek-r1-distill-llama-8b", model_type="llama",
        source=_hf("deepseek-ai/DeepSeek-R1-Distill-Llama-8B"),
        layers=32, hidden=4096, heads=32, kv_heads=8, head_dim=128, intermediate=14336,
        vocab=128256, tied_embeddings=False, max_context=131072,
        published_params=8.03e9,  # model page: 8.03B params (safetensors)
    ),
)

MODELS: dict[str, ModelSpec] = {m.name: m for m in _CATALOG}

# Published active parameters per token for the MoE entries (checked in the tests).
PUBLISHED_ACTIVE: dict[str, float] = {"mixtral-8x7b": 12.9e9, "qwen3-30b-a3b": 3.3e9}

_SUFFIXES = ("instruct", "chat", "base", "hf", "it")
_ALIASES: dict[str, str] = {
    "llama38b": "llama-3.1-8b",
    "llama370b": "llama-3.1-70b",
    "metallama318b": "llama-3.1-8b",
    "metallama3170b": "llama-3.1-70b",
    "metallama38b": "llama-3.1-8b",
    "metallama370b": "llama-3.1-70b",
    "mixtral": "mixtral-8x7b",
    "qwen257b": "qwen2.5-7b",
    "deepseekr1distillqwen": "deepseek-r1-distill-qwen-7b",
    "deepseekr1distillllama": "deepseek-r1-distill-llama-8b",
    "r1distillqwen7b": "deepseek-r1-distill-qwen-7b",
    "r1distillllama8b": "deepseek-r1-distill-llama-8b",
}


def _norm(name: str) -> str:
    text = name.strip().lower()
    if "/" in text:  # a Hugging Face repo id: drop the organisation
        text = text.rsplit("/", 1)[1]
    parts = re.split(r"[-_\s]+", text)
    while len(parts) > 1 and (parts[-1] in _SUFFIXES or re.fullmatch(r"v\d+(\.\d+)*",
                                                                     parts[-1])):
        parts.pop()
    return re.sub(r"[^a-z0-9]", "", "".join(parts))


_INDEX: dict[str, str] = {_norm(n): n for n in MODELS} | _ALIASES


def model_names() -> list[str]:
    """The catalog's canonical names, sorted."""
    return sorted(MODELS)


def get_model(name: str) -> ModelSpec:
    """A catalog model by a forgiving name (``llama-3.1-8b``, ``meta-llama/Llama-3.1-8B-Instruct``,
    ``Qwen3-8B``, ``mixtral``)."""
    key = _norm(name)
    canonical = _INDEX.get(key)
    if canonical is None:
        hint = did_you_mean(key, _INDEX, cutoff=0.7)
        raise UserError(
            f"unknown model '{name}'; {hint}known models: {', '.join(model_names())}; "
            "or give the path of a Hugging Face config.json (or its folder)"
        )
    return MODELS[canonical]


# --------------------------------------------------------------------------- config.json


def _field(cfg: dict[str, Any], where: str, *names: str, default: Any = None,
           required: bool = True) -> Any:
    for n in names:
        if n in cfg and cfg[n] is not None:
            return cfg[n]
    if required and default is None:
        raise UserError(f"{where}: missing field '{names[0]}' (a decoder-only transformer's "
                        "config.json has it); add it or pick a catalog model")
    return default


def _int(value: Any, name: str, where: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{where}: field '{name}' must be a whole number >= {minimum}, "
                        f"not {value!r}")
    return value


def load_hf_config(path: str | Path, name: str | None = None) -> ModelSpec:
    """A ModelSpec from a Hugging Face ``config.json`` (or a folder holding one).

    Reads llama / qwen2 / qwen3 / qwen3_moe / mistral / mixtral field names; multimodal configs
    whose language model sits under ``text_config`` work too. The file is parsed as plain JSON:
    nothing in it is executed (``auto_map`` / remote code is ignored).
    """
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    where = f"model config '{p}'"
    if not p.is_file():
        raise UserError(f"{where} does not exist; give a Hugging Face config.json or the folder "
                        "that holds it")
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{where} is not valid JSON: {exc.msg} at line {exc.lineno} "
                        f"column {exc.colno}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{where} cannot be read: {exc}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{where} must hold a JSON object, not {type(raw).__name__}")
    cfg: dict[str, Any] = raw
    if "num_hidden_layers" not in cfg and isinstance(cfg.get("text_config"), dict):
        cfg = {**cfg["text_config"], "model_type": cfg["text_config"].get(
            "model_type", cfg.get("model_type", ""))}

    model_type = str(cfg.get("model_type", ""))
    if "kv_lora_rank" in cfg:
        raise UserError(f"{where}: multi-head latent attention (model_type '{model_type}', "
                        "DeepSeek-V2/V3 style) is not modelled yet; pick a catalog model")
    layers = _int(_field(cfg, where, "num_hidden_layers", "n_layer", "num_layers"),
                  "num_hidden_layers", where)
    hidden = _int(_field(cfg, where, "hidden_size", "n_embd", "d_model"), "hidden_size", where)
    heads = _int(_field(cfg, where, "num_attention_heads", "n_head"), "num_attention_heads",
                 where)
    kv_heads = _int(_field(cfg, where, "num_key_value_heads", default=heads),
                    "num_key_value_heads", where)
    if hidden % heads and "head_dim" not in cfg:
        raise UserError(f"{where}: hidden_size {hidden} is not a multiple of "
                        f"num_attention_heads {heads}; add a 'head_dim' field")
    head_dim = _int(_field(cfg, where, "head_dim", default=hidden // heads), "head_dim", where)
    if heads % kv_heads:
        raise UserError(f"{where}: num_attention_heads {heads} is not a multiple of "
                        f"num_key_value_heads {kv_heads}")
    vocab = _int(_field(cfg, where, "vocab_size"), "vocab_size", where)
    experts = _int(_field(cfg, where, "num_local_experts", "num_experts", "n_routed_experts",
                          default=0, required=False), "num_experts", where, minimum=0)
    top_k = 0
    expert_width = 0
    shared_width = 0
    if experts > 1:
        top_k = _int(_field(cfg, where, "num_experts_per_tok"), "num_experts_per_tok", where)
        if top_k > experts:
            raise UserError(f"{where}: num_experts_per_tok {top_k} exceeds the {experts} "
                            "experts")
        expert_width = _int(_field(cfg, where, "moe_intermediate_size", default=0,
                                   required=False), "moe_intermediate_size", where, minimum=0)
        shared_width = _int(_field(cfg, where, "shared_expert_intermediate_size", default=0,
                                   required=False), "shared_expert_intermediate_size", where,
                            minimum=0)
    intermediate_default = expert_width if expert_width else None
    intermediate = _int(_field(cfg, where, "intermediate_size", "n_inner", "ffn_dim",
                               default=intermediate_default), "intermediate_size", where)
    tied = bool(_field(cfg, where, "tie_word_embeddings", default=False, required=False))
    qkv_bias = bool(cfg.get("attention_bias", model_type in ("qwen2", "qwen2_moe")))
    qk_norm = model_type in ("qwen3", "qwen3_moe")
    max_ctx = cfg.get("max_position_embeddings", 0)
    max_ctx = max_ctx if isinstance(max_ctx, int) and not isinstance(max_ctx, bool) else 0
    label = name or _name_from(raw, p)
    return ModelSpec(
        name=label, layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads,
        head_dim=head_dim, intermediate=intermediate, vocab=vocab,
        experts=experts if experts > 1 else 0, top_k=top_k, expert_intermediate=expert_width,
        shared_expert_intermediate=shared_width, tied_embeddings=tied, qkv_bias=qkv_bias,
        qk_norm=qk_norm, max_context=max_ctx, model_type=model_type, source=str(p),
    )


def _name_from(cfg: dict[str, Any], path: Path) -> str:
    raw = cfg.get("_name_or_path")
    if isinstance(raw, str) and raw.strip():
        return raw.strip().rstrip("/").rsplit("/", 1)[-1]
    return path.parent.name or "custom-model"


def resolve_model(spec: str | Path | ModelSpec) -> ModelSpec:
    """A ModelSpec from a catalog name, or a path to a config.json (or a folder holding one)."""
    if isinstance(spec, ModelSpec):
        return spec
    text = str(spec)
    p = Path(text)
    if text.lower().endswith(".json") or p.is_dir() or p.is_file():
        return load_hf_config(p)
    return get_model(text)
