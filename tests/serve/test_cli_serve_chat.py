"""`lowbit serve` refuses to start with the reason; `lowbit chat` talks to a local model or a server."""
import io
import shutil
import socket

import openai
import torch

import lowbit
from lowbit.cli import main


def test_serve_refuses_a_model_that_cannot_load(tiny_llama_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama_dir, broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)  # a truncated download
    assert main(["serve", str(broken), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot load {broken}:") and "\n" == err[-1] and err.count("\n") == 1

    assert main(["serve", str(tmp_path / "missing"), "--port", "0"]) == 2
    assert "does not exist" in capsys.readouterr().err

    (broken / "config.json").write_text("{not json")
    assert main(["serve", str(broken), "--port", "0"]) == 2
    assert "error:" in capsys.readouterr().err


def test_serve_refuses_a_busy_port_and_bad_settings(tiny_llama_dir, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", str(tiny_llama_dir), "--port", str(port)]) == 2
        assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    for flags, message in [(["--max-batch-size", "0"], "--max-batch-size 0 must be at least 1"),
                           (["--max-model-len", "1"], "--max-model-len 1 must be at least 2"),
                           (["--port", "70000"], "not a port number")]:
        assert main(["serve", str(tiny_llama_dir), *flags]) == 2
        assert message in capsys.readouterr().err


def _chat(monkeypatch, capsys, argv, lines):
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(line + "\n" for line in lines)))
    assert main(["chat", *argv]) == 0
    return capsys.readouterr().out


def _expected_answer(model_dir, user, n):
    model = lowbit.load(model_dir, device="cpu")
    tok = model.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, pad_token_id=0)
    return tok.decode(out[0, len(ids):], skip_special_tokens=True)


def test_chat_with_a_local_model(serve_model_dir, monkeypatch, capsys):
    expected = _expected_answer(serve_model_dir, "def f(x):", 6)
    out = _chat(monkeypatch, capsys, [str(serve_model_dir), "--temperature", "0", "--max-tokens", "6"],
                ["def f(x):", "/reset", "def f(x):", "/quit", "never read"])
    assert out == f"assistant> {expected}\n" * 2  # /reset: the same first turn again


def test_chat_with_a_running_server(server, serve_model_dir, monkeypatch, capsys):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=0)
    reply = client.chat.completions.create(model=server.model_name, messages=[{"role": "user", "content": "hello"}],
                                           max_tokens=5, temperature=0).choices[0].message.content
    out = _chat(monkeypatch, capsys, [server.url, "--api-key", server.api_key, "--temperature", "0",
                                      "--max-tokens", "5"], ["hello", "again"])
    assert out.startswith(f"assistant> {reply}\nassistant> ")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["chat", server.url, "--api-key", "wrong"]) == 2  # the server refuses and chat says why
    assert "refused (401): missing or wrong API key" in capsys.readouterr().err
