"""Tiny random models built from configs, with a tiny byte-level tokenizer: no downloads.

``build(arch)`` returns (model, tokenizer); ``save(arch, folder)`` writes a Hugging Face
folder that ``lowbit.load`` and ``lowbit quantize`` take.
"""
from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 320
_TEXT = (
    "The quick brown fox jumps over the lazy dog. Quantization maps weights to a few bits. "
    "def f(x):\n    return x * 2\n" * 4
)

# Each: (config class, model class, extra config fields). Sizes are small but not all powers
# of two (hidden 96 = 3 x 32) so that ragged groups and packing edges are exercised.
_COMMON = dict(hidden_size=96, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
               vocab_size=VOCAB, max_position_embeddings=256)


def _configs():
    import transformers as tf

    return {
        "llama": (tf.LlamaConfig, dict(_COMMON, num_key_value_heads=2, tie_word_embeddings=True)),  # tied, like the demo
        "mistral": (tf.MistralConfig, dict(_COMMON, num_key_value_heads=2)),
        "qwen2": (tf.Qwen2Config, dict(_COMMON, num_key_value_heads=2)),
        "qwen3": (tf.Qwen3Config, dict(_COMMON, num_key_value_heads=2, head_dim=24)),
        "gemma": (tf.GemmaConfig, dict(_COMMON, num_key_value_heads=2, head_dim=24)),
        "gemma2": (tf.Gemma2Config, dict(_COMMON, num_key_value_heads=2, head_dim=24)),
        "gemma3_text": (tf.Gemma3TextConfig, dict(_COMMON, num_key_value_heads=2, head_dim=24)),
        "phi3": (tf.Phi3Config, dict(_COMMON, num_key_value_heads=4, pad_token_id=0, bos_token_id=1, eos_token_id=2)),
        "opt": (tf.OPTConfig, dict(hidden_size=96, ffn_dim=160, num_hidden_layers=2, num_attention_heads=4,
                                   vocab_size=VOCAB, max_position_embeddings=256, word_embed_proj_dim=96)),
    }


ARCHS = tuple(_configs())


def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([_TEXT], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def build(arch: str = "llama", seed: int = 0):
    """(model in fp32 eval mode, tokenizer) of a tiny random model of ``arch``."""
    from transformers import AutoModelForCausalLM

    config_cls, fields = _configs()[arch]
    torch.manual_seed(seed)
    config = config_cls(**fields)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    return model, tokenizer()


def save(arch: str, folder: Path, seed: int = 0) -> Path:
    model, tok = build(arch, seed)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
