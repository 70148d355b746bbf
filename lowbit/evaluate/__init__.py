"""Measuring what quantization lost and gained: perplexity, speed, memory.

Python API (each also a CLI subcommand):
- ``perplexity(model, tokenizer, text_or_dataset, seq_len=2048, ...)`` -> PerplexityResult
  (``lowbit eval``; protocol in ``lowbit.evaluate.perplexity``'s docstring);
- ``load_text(name_or_path, split="test", data_dir=None)`` -> str (wikitext2, pydocs, files).
"""
from .perplexity import PerplexityResult, perplexity
from .texts import load_text

__all__ = ["PerplexityResult", "perplexity", "load_text"]
