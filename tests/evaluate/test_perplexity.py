"""Perplexity: the GPTQ protocol and the sliding window against independent plain-torch loops."""
import math

import pytest
import torch
import torch.nn.functional as F

import tiny
from lowbit.errors import LowbitError
from lowbit.evaluate import perplexity
from lowbit.evaluate.perplexity import plan_windows, token_ids

TEXT = " ".join(f"word{i % 37} and more text number {i}." for i in range(25))


@pytest.fixture(scope="module")
def tiny_model():
    return tiny.build("llama")


def reference_gptq(model, ids: torch.Tensor, seq_len: int, n: int) -> tuple[float, int]:
    """GPTQ's loop, written out: non-overlapping windows, mean NLL over every predicted token."""
    nlls = []
    with torch.no_grad():
        for i in range(n):
            x = ids[i * seq_len:(i + 1) * seq_len].unsqueeze(0)  # [1, L]
            logp = torch.log_softmax(model(x).logits.double(), dim=-1)  # [1, L, V]
            nlls.append(-logp[0, :-1].gather(-1, x[0, 1:, None]).squeeze(-1))  # [L-1]
    nll = torch.cat(nlls)
    return math.exp(nll.mean().item()), nll.numel()


def reference_sliding(model, ids: torch.Tensor, seq_len: int, stride: int) -> tuple[float, int]:
    """The transformers-docs loop: labels of already-scored tokens masked with -100."""
    total, count, prev_end = 0.0, 0, 0
    with torch.no_grad():
        for begin in range(0, ids.numel() - seq_len + 1, stride):
            end = begin + seq_len
            x = ids[begin:end].unsqueeze(0)
            labels = x.clone()
            labels[:, :-(end - prev_end)] = -100
            logits = model(x).logits.double()
            target = labels[:, 1:]
            total += F.cross_entropy(logits[0, :-1], target[0], ignore_index=-100, reduction="sum").item()
            count += int((target != -100).sum())
            prev_end = end
    return math.exp(total / count), count


def test_plan_windows():
    assert [(w.begin, w.score_from) for w in plan_windows(10, 4)] == [(0, 1), (4, 1)]  # tail of 2 dropped
    assert [(w.begin, w.score_from) for w in plan_windows(10, 4, 2)] == [(0, 1), (2, 2), (4, 2), (6, 2)]
    assert plan_windows(10, 4, 4) == plan_windows(10, 4)
    assert plan_windows(3, 4) == []


def test_gptq_protocol_matches_reference(tiny_model):
    model, tok = tiny_model
    ids = token_ids(tok, TEXT)
    r = perplexity(model, tok, TEXT, seq_len=64, progress=False)
    n = ids.numel() // 64
    ref, count = reference_gptq(model, ids, 64, n)
    assert r.windows == n and r.tokens == count == n * 63 and r.seq_len == 64
    assert r.perplexity == pytest.approx(ref, rel=1e-6)
    assert r.nll == pytest.approx(math.log(ref), rel=1e-6)
    # batching windows changes nothing; max_windows takes a prefix
    assert perplexity(model, tok, TEXT, seq_len=64, batch_size=3, progress=False).perplexity == pytest.approx(ref, rel=1e-5)
    r2 = perplexity(model, tok, TEXT, seq_len=64, max_windows=2, progress=False)
    assert r2.windows == 2 and r2.perplexity == pytest.approx(reference_gptq(model, ids, 64, 2)[0], rel=1e-6)


def test_sliding_window_matches_reference(tiny_model):
    model, tok = tiny_model
    ids = token_ids(tok, TEXT)
    r = perplexity(model, tok, ids, seq_len=64, stride=24, progress=False)
    ref, count = reference_sliding(model, ids, 64, 24)
    assert r.tokens == count
    assert r.perplexity == pytest.approx(ref, rel=1e-6)
    # stride = seq_len is the default protocol exactly
    same = perplexity(model, tok, ids, seq_len=64, stride=64, progress=False)
    assert same.perplexity == pytest.approx(perplexity(model, tok, ids, seq_len=64, progress=False).perplexity, rel=1e-9)


def test_inputs_and_errors(tiny_model):
    model, tok = tiny_model
    docs = ["first document " * 30, "second one " * 30]
    a = perplexity(model, tok, docs, seq_len=32, progress=False)
    b = perplexity(model, tok, "\n\n".join(docs), seq_len=32, progress=False)
    assert a.to_dict() | {"seconds": 0} == b.to_dict() | {"seconds": 0}
    with pytest.raises(LowbitError, match="fewer than one window"):
        perplexity(model, tok, "too short", seq_len=64, progress=False)
    with pytest.raises(LowbitError, match="above the model's maximum of 256"):
        perplexity(model, tok, TEXT, seq_len=512, progress=False)
    with pytest.raises(LowbitError, match="stride"):
        perplexity(model, tok, TEXT, seq_len=64, stride=65, progress=False)
    with pytest.raises(LowbitError, match="max-windows"):
        perplexity(model, tok, TEXT, seq_len=64, max_windows=0, progress=False)


@pytest.mark.demo
def test_demo_wikitext2_matches_plain_torch(demo_dir, wikitext_dir):
    """The unquantized demo model on WikiText-2 test: lowbit == an independent loop, 1e-4 rel."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(demo_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(demo_dir)
    seq_len, n = 128, 2  # a few windows keep it cheap; the protocol does not depend on the length
    with open(wikitext_dir / "wikitext-2-test.txt", encoding="utf-8") as f:
        rows = [line if line.strip() else "" for line in f]  # the rows the hub's wikitext loader yields
    # Byte-level BPE splits words first, so a prefix ending at a line break tokenizes to a prefix
    # of the full stream: tokenizing 1.2 MB twice would only cost time.
    ids = tok("\n\n".join(rows[:400]), return_tensors="pt").input_ids[0]
    assert ids.numel() > seq_len * n + 100
    ref, count = reference_gptq(model, ids, seq_len, n)
    r = perplexity(model, tok, "wikitext2", seq_len=seq_len, max_windows=n, data_dir=wikitext_dir, progress=False)
    assert (r.windows, r.tokens) == (n, count)
    assert r.perplexity == pytest.approx(ref, rel=1e-4)
    assert 5 < r.perplexity < 100  # a real language model on real text
