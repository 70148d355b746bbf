"""Measuring what quantization lost and gained: perplexity, speed, memory, comparisons.

Python API (each also a CLI subcommand):
- ``perplexity(model, tokenizer, text_or_dataset, seq_len=2048, stride=None, max_windows=None)``
  -> PerplexityResult (``lowbit eval``; protocol in ``lowbit.evaluate.perplexity``'s docstring);
- ``bench(model, batch_sizes=(1,), prompt_len=512, new_tokens=128, repeats=5)`` -> [BenchResult]
  (``lowbit bench``): TTFT, prefill/decode tokens/s as median [min-max], peak memory;
- ``compare(base, methods=("fp16", "rtn"), ...)`` -> report dict, ``write_report(report, folder)``
  (``lowbit compare``): report.md, report.json, report.png;
- ``run_tasks(model, tokenizer, "hellaswag,arc_easy")`` through lm-eval-harness (an extra);
- ``load_text(name_or_path, split="test", data_dir=None)`` -> str (wikitext2, pydocs, files).
"""
from .compare import compare
from .perplexity import PerplexityResult, perplexity
from .report import write_report
from .speed import BenchResult, Stat, bench
from .tasks import run_tasks
from .texts import load_text

__all__ = ["PerplexityResult", "perplexity", "BenchResult", "Stat", "bench", "compare", "write_report",
           "run_tasks", "load_text"]
