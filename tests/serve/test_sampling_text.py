"""Sampling (greedy, temperature, top-p, seeds) and streamed text with stop strings."""
import pytest
import torch

import tiny
from lowbit.serve.sampling import SamplingParams, sample, top_p_filter
from lowbit.serve.text import TextStream, held_back


def test_top_p_keeps_the_smallest_nucleus_and_renormalizes():
    probs = torch.tensor([0.1, 0.5, 0.15, 0.25])
    # Sorted: 0.5, 0.25, 0.15, 0.1; mass before each: 0, 0.5, 0.75, 0.9.
    assert torch.allclose(top_p_filter(probs, 0.7), torch.tensor([0, 0.5, 0, 0.25]) / 0.75)
    assert torch.allclose(top_p_filter(probs, 0.76), torch.tensor([0, 0.5, 0.15, 0.25]) / 0.9)
    assert torch.equal(top_p_filter(probs, 0.01), torch.tensor([0.0, 1.0, 0.0, 0.0]))  # the top token always stays
    assert torch.equal(top_p_filter(probs, 1.0), probs)


def test_greedy_is_argmax_and_seeds_reproduce_per_row():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    greedy = [SamplingParams(max_tokens=1, temperature=0.0)] * 3
    assert sample(logits, greedy, [None] * 3) == logits.argmax(-1).tolist()

    hot = [SamplingParams(max_tokens=1, temperature=1.5, top_p=0.9)] * 3

    def draws(seed):
        gens = [torch.Generator().manual_seed(seed + i) for i in range(3)]
        return [sample(logits, hot, gens) for _ in range(20)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


def test_top_p_sampling_never_leaves_the_nucleus():
    logits = torch.tensor([[4.0, 3.0, 0.0, -1.0, -2.0]])
    p = [SamplingParams(max_tokens=1, temperature=1.0, top_p=0.8)]
    gen = torch.Generator().manual_seed(0)
    seen = {sample(logits, p, [gen])[0] for _ in range(300)}
    assert seen == {0, 1}  # softmax mass of token 0 is 0.71 < 0.8, so token 1 joins; 0.97 covers it


def test_temperature_sharpens_and_flattens():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    gen = torch.Generator().manual_seed(0)

    def share_of_top(t):
        p = [SamplingParams(max_tokens=1, temperature=t)]
        return sum(sample(logits, p, [gen])[0] == 0 for _ in range(2000)) / 2000

    cold, warm = share_of_top(0.25), share_of_top(2.0)
    assert cold > 0.97  # softmax(8, 4, 0)[0] = 0.982
    assert 0.42 < warm < 0.58  # softmax(1, 0.5, 0)[0] = 0.506


@pytest.fixture(scope="module")
def tok():
    return tiny.tokenizer()


def _stream_all(tok, text, stop):
    ids = tok(text)["input_ids"]
    stream = TextStream(tok, [], stop)
    pieces, stopped = [], False
    for t in ids:
        piece, stopped = stream.add(t)
        pieces.append(piece)
        if stopped:
            break
    if not stopped:
        pieces.append(stream.flush())
    return pieces, stopped


def test_streamed_pieces_join_to_the_decoded_text(tok):
    text = "The quick brown fox jumps over the lazy dog. def f(x): return x * 2 é✓"
    pieces, stopped = _stream_all(tok, text, ())
    assert "".join(pieces) == tok.decode(tok(text)["input_ids"]) and not stopped
    assert all("\ufffd" not in p for p in pieces)  # split UTF-8 characters are held back, never streamed


def test_stop_string_cuts_the_text_and_is_never_streamed(tok):
    pieces, stopped = _stream_all(tok, "The quick brown fox jumps over the lazy dog.", ("fox j", "zzz"))
    assert stopped and "".join(pieces) == "The quick brown "
    assert not any("fox" in p for p in pieces)


def test_held_back_is_the_longest_suffix_that_starts_a_stop_string():
    assert held_back("hello wor", ("world",)) == 3
    assert held_back("hello", ("world", "lo!")) == 2
    assert held_back("hello", ("xyz",)) == 0
    assert held_back("ab", ("abc", "b")) == 2
