"""A real `lowbit serve` process, talked to with the official openai client."""
import concurrent.futures
import importlib.util
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch

import lowbit

API_KEY = "test-key-7"  # as tests/serve/conftest.py starts the server
MODEL_NAME = "tiny-rtn"

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def client(server):
    assert (server.api_key, server.model_name) == (API_KEY, MODEL_NAME)
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def local(serve_model_dir):
    """The same checkpoint loaded in this process: the ground truth for greedy answers."""
    return lowbit.load(serve_model_dir, device="cpu")


def _greedy(model, ids, n):
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(ids):].tolist()


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == [MODEL_NAME]
    health = server.health()
    assert health["status"] == "ok" and health["max_batch_size"] == 4 and health["max_model_len"] == 200


def test_completion_matches_local_greedy_generation(client, local):
    prompt = "The quick brown fox"
    r = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=8, temperature=0)
    ids = local.tokenizer(prompt)["input_ids"]
    expected = _greedy(local, ids, 8)
    assert r.choices[0].text == local.tokenizer.decode(expected, skip_special_tokens=True)
    assert r.choices[0].finish_reason == ("stop" if len(expected) < 8 else "length")
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), len(expected))
    assert r.usage.total_tokens == len(ids) + len(expected)


def test_chat_uses_the_chat_template(client, local):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "def f(x):"}]
    r = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=6, temperature=0)
    text = local.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.endswith("<s>assistant\n")
    ids = local.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert r.usage.prompt_tokens == len(ids)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == local.tokenizer.decode(_greedy(local, ids, 6), skip_special_tokens=True)


def test_streaming_gives_the_same_text_in_pieces(client):
    kw = dict(model=MODEL_NAME, max_tokens=10, temperature=0)
    whole = client.completions.create(prompt="Quantization maps", **kw).choices[0].text
    chunks = list(client.completions.create(prompt="Quantization maps", stream=True, **kw))
    assert "".join(c.choices[0].text for c in chunks) == whole
    assert chunks[-1].choices[0].finish_reason in ("stop", "length") and len(chunks) > 2

    messages = [{"role": "user", "content": "hello"}]
    whole = client.chat.completions.create(messages=messages, **kw).choices[0].message.content
    chunks = list(client.chat.completions.create(messages=messages, stream=True,
                                                 stream_options={"include_usage": True}, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1


def test_sampling_settings_are_honoured(client):
    kw = dict(model=MODEL_NAME, prompt="The lazy dog", max_tokens=12, temperature=1.0, top_p=0.9)
    a = client.completions.create(seed=3, **kw).choices[0].text
    assert client.completions.create(seed=3, **kw).choices[0].text == a
    assert any(client.completions.create(seed=s, **kw).choices[0].text != a for s in (4, 5, 6))
    greedy = client.completions.create(model=MODEL_NAME, prompt="The lazy dog", max_tokens=12, temperature=0)
    text = greedy.choices[0].text
    stop = text[4:7]
    cut = client.completions.create(model=MODEL_NAME, prompt="The lazy dog", max_tokens=12, temperature=0,
                                    stop=[stop, "never-there"])
    assert cut.choices[0].text == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"


def test_api_key_is_required(server):
    wrong = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="API key"):
        wrong.models.list()
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"model": MODEL_NAME, "messages": []})
    assert r.status_code == 401 and "Authorization: Bearer" in r.json()["error"]["message"]
    assert httpx.get(f"{server.url}/health").status_code == 200  # open for load balancers


LONG_PROMPT = "The quick brown fox jumps over the lazy dog. " * 40


@pytest.mark.parametrize("change, message", [
    ({"model": "gpt-4"}, "model 'gpt-4' is not served here; this server serves 'tiny-rtn'"),
    ({"max_tokens": 0}, "max_tokens must be at least 1, got 0"),
    ({"max_tokens": 1000}, "max_tokens 1000 is too large: the prompt has 5 tokens and the limit (--max-model-len) "
                           "is 200, so at most 195 new tokens fit"),
    ({"prompt": LONG_PROMPT}, "(--max-model-len) is 200 tokens"),
    ({"temperature": -0.5}, "temperature must be between 0 and 2, got -0.5"),
    ({"top_p": 0}, "top_p must be greater than 0 and at most 1, got 0"),
    ({"top_p": "high"}, "top_p: Input should be a valid number"),
    ({"n": 3}, "n is not supported"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "at most 4"),
    ({"presence_penalty": 0.5}, "presence_penalty is not supported"),
])
def test_bad_requests_get_400_with_a_clear_message(client, change, message):
    body = {"model": MODEL_NAME, "prompt": "The quick brown", "max_tokens": 4, **change}
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(**body)
    assert message in e.value.response.json()["error"]["message"]


def test_malformed_json_and_bad_messages_get_400(server, client):
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    r = httpx.post(f"{server.url}/v1/chat/completions", content=b'{"model": "tiny-rtn", "messages": [', headers=headers)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(f"{server.url}/v1/completions", content=b"[1, 2]", headers=headers)
    assert r.status_code == 400 and "must be a JSON object" in r.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model=MODEL_NAME, messages=[])
    with pytest.raises(openai.BadRequestError, match=r"prompt has \d+ tokens, but this server's limit"):
        client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": LONG_PROMPT}])


PROMPTS = ["The quick brown fox", "def f(x):", "Quantization maps weights", "a", "lazy dog jumps over", "return x"]


def test_concurrent_greedy_answers_equal_sequential_ones(client, server):
    def ask(prompt):
        return client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=12, temperature=0).choices[0].text

    sequential = [ask(p) for p in PROMPTS]
    steps = server.health()["steps"]
    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
        concurrent_ = list(pool.map(ask, PROMPTS))
    assert concurrent_ == sequential
    assert len(set(sequential)) == len(PROMPTS)
    assert server.health()["steps"] - steps < 13 * len(PROMPTS)  # they were batched, not run one by one


KILLED_CLIENT = textwrap.dedent("""
    import sys, openai
    client = openai.OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0)
    for chunk in client.chat.completions.create(model=sys.argv[3], messages=[{"role": "user", "content": "go"}],
                                                max_tokens=180, temperature=0, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            print("streaming", flush=True)
            sys.stdin.read()  # hold the stream open, unread, until the test kills this process
""")


def test_a_client_killed_mid_stream_does_not_disturb_others(client, server):
    messages = [{"role": "user", "content": "lazy dog"}]

    def ask():
        return client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=40, temperature=0)

    alone = ask().choices[0].message.content
    before = server.health()["finished"]
    killed = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, f"{server.url}/v1", API_KEY, MODEL_NAME],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            assert killed.stdout.readline().strip() == "streaming"
            other = pool.submit(ask)
            deadline = time.time() + 20
            while server.health()["running"] < 2 and time.time() < deadline:  # both share the batch now
                time.sleep(0.01)
            killed.kill()  # SIGKILL mid-stream: the socket closes without a goodbye
            assert other.result(60).choices[0].message.content == alone
    finally:
        killed.kill()
        killed.wait(10)
    deadline = time.time() + 20
    while server.health()["finished"].get("cancelled", 0) == before.get("cancelled", 0) and time.time() < deadline:
        time.sleep(0.05)
    health = server.health()
    assert health["finished"].get("cancelled", 0) == before.get("cancelled", 0) + 1  # freed, not run to the end
    assert sum(health["finished"].values()) == sum(before.values()) + 2  # the killed one and `other`
    assert health["running"] == 0
    assert ask().choices[0].message.content == alone


def test_a_client_that_gives_up_on_a_plain_request_frees_its_slot(server):
    cancelled = server.health()["finished"].get("cancelled", 0)
    body = {"model": MODEL_NAME, "prompt": "The quick", "max_tokens": 190, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"},
                   timeout=httpx.Timeout(10, read=0.3))
    deadline = time.time() + 20
    while server.health()["finished"].get("cancelled", 0) == cancelled and time.time() < deadline:
        time.sleep(0.05)
    assert server.health()["finished"].get("cancelled", 0) == cancelled + 1


def test_load_test_script_runs_without_errors(server):
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_load.py"
    spec = importlib.util.spec_from_file_location("serve_load", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    import asyncio

    figures = asyncio.run(bench.load_test(server.url, MODEL_NAME, API_KEY, requests=40, concurrency=8,
                                          max_tokens=8, time_limit=60))
    assert figures["errors"] == 0 and figures["ok"] == 40, figures["first_errors"]
    assert 0 < figures["p50_s"] <= figures["p95_s"]
