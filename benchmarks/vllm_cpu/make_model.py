"""A tiny random-weight Llama model for vLLM on a CPU: 2 layers, hidden 128, 2 heads of 64
(vLLM's CPU attention wants head_dim >= 64), with a byte-level BPE tokenizer trained here on
slobench's own prompt corpus and a plain chat template. Nothing is downloaded.

    python make_model.py OUT_DIR        (run with the vLLM venv's python: needs transformers)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def corpus_lines() -> list[str]:
    here = Path(__file__).resolve().parents[2] / "src" / "slobench" / "prompts" / "corpus"
    return [line for f in sorted(here.glob("*.txt")) for line in f.read_text().splitlines()
            if line.strip()]


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|begin|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(vocab_size=4096, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus_lines(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin|>",
                                   eos_token="<|end|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=128,
                         intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, head_dim=64, max_position_embeddings=4096,
                         bos_token_id=tok.token_to_id("<|begin|>"),
                         eos_token_id=tok.token_to_id("<|end|>"), torch_dtype="bfloat16")
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    print(f"model written to {out} (vocab {tok.get_vocab_size()})")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-llama"))
