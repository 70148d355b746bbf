"""StaticDecoder: the static-cache forward equals the transformers forward; greedy tokens too."""
from __future__ import annotations

import pytest
import torch

import tiny
from lowbit.errors import LowbitError
from lowbit.evaluate.static_decode import StaticDecoder


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_logits_match_transformers(arch):
    model, _ = tiny.build(arch)
    ids = torch.randint(3, tiny.VOCAB, (1, 12), generator=torch.Generator().manual_seed(0))
    dec = StaticDecoder(model, max_len=32)
    ours = torch.cat([dec.forward(ids[:, :8], torch.arange(8)),  # prefill, then one token at a time
                      *[dec.forward(ids[:, i:i + 1], torch.tensor([i])) for i in range(8, 12)]], dim=1)
    with torch.no_grad():
        ref = model(ids).logits
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_greedy_tokens_match_generate():
    model, _ = tiny.build("llama")
    prompt = torch.randint(3, tiny.VOCAB, (1, 6), generator=torch.Generator().manual_seed(1))
    tokens, seconds = StaticDecoder(model, max_len=32).generate(prompt, new_tokens=10)
    with torch.no_grad():
        ref = model.generate(prompt, max_new_tokens=10, do_sample=False, min_new_tokens=10)
    assert torch.equal(tokens, ref) and seconds >= 0


def test_refuses_what_it_cannot_run():
    with pytest.raises(LowbitError, match="static decoding supports"):
        StaticDecoder(tiny.build("opt")[0], max_len=16)
    dec = StaticDecoder(tiny.build("llama")[0], max_len=16)
    with pytest.raises(LowbitError, match="does not fit"):
        dec.generate(torch.ones(1, 10, dtype=torch.long), new_tokens=10)
