"""The engine: batched greedy answers equal unbatched ones and transformers' generate;
limits, stop strings, cancellation and the bounded queue."""
import threading
import time

import pytest
import torch

import tiny
from lowbit.serve.engine import Engine, QueueFull, RequestError
from lowbit.serve.sampling import SamplingParams

GREEDY = dict(temperature=0.0)


def _model(arch):
    """A tiny random model whose weights are scaled up so that greedy text varies from token to
    token (at the default init a tied-embedding model just repeats its input token)."""
    model, tok = tiny.build(arch)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(8)
    return model, tok


def _prompts(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, tiny.VOCAB, (length,), generator=g).tolist() for length in (5, 17, 9, 30, 2, 12)[:n]]


def _hf_greedy(model, ids, n):
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(ids):].tolist()


def _run_staggered(engine, prompts, params, delay=0.002):
    """Submit from several threads, a little apart, so requests join a running batch."""
    done = {i: threading.Event() for i in range(len(prompts))}
    reqs = {}

    def go(i):
        time.sleep(delay * i)
        reqs[i] = engine.submit(prompts[i], params[i], lambda out, i=i: out.finish_reason and done[i].set())
        assert done[i].wait(60)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [reqs[i].generated for i in range(len(prompts))]


@pytest.mark.parametrize("arch", ["llama", "mistral"])  # mistral: sliding-window cache, step-level batching
def test_batched_greedy_equals_unbatched_and_transformers(arch):
    model, tok = _model(arch)
    prompts = _prompts()
    reference = [_hf_greedy(model, p, 12) for p in prompts]
    engine = Engine(model, tok, max_batch_size=4)
    engine.eos_ids = set()  # random weights: keep going to max_tokens
    try:
        params = [SamplingParams(max_tokens=12 - i, **GREEDY) for i in range(len(prompts))]  # rows leave at different steps
        alone = [engine.submit(p, SamplingParams(max_tokens=12, **GREEDY), lambda o: None) for p in prompts[:1]]
        while not alone[0].finished:
            time.sleep(0.01)
        assert alone[0].generated == reference[0]
        batched = _run_staggered(engine, prompts, params)
        assert batched == [r[: 12 - i] for i, r in enumerate(reference)]
        if arch == "llama":  # continuous batching really merged requests into running batches
            assert engine.steps < 1 + sum(12 - i for i in range(len(prompts)))
    finally:
        engine.close()


def test_seeded_sampling_does_not_depend_on_the_batch():
    model, tok = _model("llama")
    engine = Engine(model, tok, max_batch_size=8)
    engine.eos_ids = set()
    try:
        prompts = _prompts(4)
        params = [SamplingParams(max_tokens=10, temperature=0.9, top_p=0.9, seed=100 + i) for i in range(4)]
        solo = [_run_staggered(engine, [p], [q])[0] for p, q in zip(prompts, params)]
        together = _run_staggered(engine, prompts, params, delay=0)
        assert together == solo
        assert len({tuple(s) for s in solo}) == 4
    finally:
        engine.close()


def test_stop_strings_eos_and_usage():
    model, tok = _model("llama")
    engine = Engine(model, tok)
    try:
        ids = _prompts(1)[0]
        engine.eos_ids = set()
        text, final = engine.generate(ids, SamplingParams(max_tokens=12, **GREEDY))
        assert final.finish_reason == "length" and final.completion_tokens == 12 and final.prompt_tokens == len(ids)
        stop = text[3:6]
        cut, final = engine.generate(ids, SamplingParams(max_tokens=12, stop=(stop,), **GREEDY))
        assert final.finish_reason == "stop" and cut == text[: text.index(stop)]
        first = _hf_greedy(model, ids, 12)[4]
        engine.eos_ids = {first}  # the 5th token ends the answer: stop, 5 tokens counted
        _, final = engine.generate(ids, SamplingParams(max_tokens=12, **GREEDY))
        assert (final.finish_reason, final.completion_tokens) == ("stop", 5)
    finally:
        engine.close()


def test_length_limits_are_checked_with_clear_messages():
    model, tok = tiny.build("llama")
    engine = Engine(model, tok, max_model_len=32)
    with pytest.raises(RequestError, match="max_tokens must be at least 1"):
        engine.check(5, 0)
    with pytest.raises(RequestError, match="at most 27 new tokens fit"):
        engine.check(5, 28)
    with pytest.raises(RequestError, match=r"prompt has 40 tokens.*limit \(--max-model-len\) is 32"):
        engine.check(40, 1)
    with pytest.raises(RequestError, match="empty"):
        engine.check(0, 1)
    assert engine.check(5, None) == 27 and engine.check(5, 27) == 27


def test_cancel_frees_the_slot_and_a_full_queue_refuses():
    model, tok = tiny.build("llama")
    engine = Engine(model, tok, max_batch_size=1, max_queue=1)
    engine.eos_ids = set()
    try:
        events = []
        running = engine.submit([5, 6, 7], SamplingParams(max_tokens=200, **GREEDY), events.append)
        while not running.generated:  # admitted into the batch: the queue is empty again
            time.sleep(0.001)
        waiting = engine.submit([5, 6], SamplingParams(max_tokens=3, **GREEDY), events.append)
        with pytest.raises(QueueFull, match="--max-queue 1"):
            engine.submit([5], SamplingParams(max_tokens=3, **GREEDY), events.append)
        running.cancel()
        deadline = time.time() + 30
        while not waiting.finished and time.time() < deadline:
            time.sleep(0.01)
        assert waiting.finished and len(waiting.generated) == 3
        assert len(running.generated) < 200
        assert engine.stats()["finished"] == {"cancelled": 1, "length": 1}
    finally:
        engine.close()
