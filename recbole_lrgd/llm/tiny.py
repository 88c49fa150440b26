"""Tiny random LLaMA models with a byte-level tokenizer, built offline.

For tests and device checks: nothing is downloaded, and any size of the LLaMA family can be built
(``llama_size="smollm2-135m"`` has the default LLM's shapes, for speed measurements).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_tokenizer(chat_template: bool = True) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for special in ("<pad>", "<eos>", "<|user|>", "<|assistant|>", "<|end|>"):
        vocab[special] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   additional_special_tokens=["<|user|>", "<|assistant|>", "<|end|>"],
                                   chat_template=CHAT_TEMPLATE if chat_template else None)


SIZES = {
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3),
}


def make_tiny_llama(vocab_size: int, seed: int = 0, llama_size: str = "tiny") -> LlamaForCausalLM:
    """A randomly initialised LlamaForCausalLM of one of ``SIZES``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, max_position_embeddings=4096, pad_token_id=0, bos_token_id=None,
                      eos_token_id=None, **SIZES[llama_size])
    return LlamaForCausalLM(cfg).eval()


def save_tiny_llm(path: str, llama_size: str = "tiny", seed: int = 0) -> str:
    """Save a random model and its tokenizer to ``path`` (loadable by ``llm_path``); returns ``path``."""
    tok = make_tokenizer()
    make_tiny_llama(len(tok), seed, llama_size).save_pretrained(path)
    tok.save_pretrained(path)
    return path
