"""Real `lowbit serve` processes on 127.0.0.1 for the serving tests.

``running_server`` starts one on a free port, waits for /health and always stops it (terminate,
then kill) when the block ends, also when a test fails; on Linux the child also dies with pytest.
"""
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

import tiny
from lowbit.cli import main

API_KEY = "test-key-7"
MODEL_NAME = "tiny-rtn"
# A minimal ChatML-like template, so that chat requests go through the real template path.
CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant\n{% endif %}")


def _die_with_parent():  # Linux: SIGTERM the server if pytest itself is killed
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    api_key = API_KEY
    model_name = MODEL_NAME

    def __init__(self, proc: subprocess.Popen, url: str, log: Path):
        self.proc, self.url, self.log = proc, url, log

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=5).json()


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextlib.contextmanager
def running_server(model: Path | str, log: Path, *args: str, env: dict | None = None, timeout: float = 60):
    port = free_port()
    cmd = [sys.executable, "-m", "lowbit", "serve", str(model), "--host", "127.0.0.1", "--port", str(port), *args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode}:\n{server.output()}")
            try:
                if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                pytest.fail(f"the server did not answer /health within {timeout} s:\n{server.output()}")
            time.sleep(0.2)
        yield server
    finally:
        stop(proc)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models run fastest on one thread, and far faster than on two when the cores are busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def start_server():
    """``start_server(model, log, *args, env=...)``: a context manager around a running server."""
    return running_server


@pytest.fixture(scope="session")
def serve_model_dir(tmp_path_factory) -> Path:
    """The tiny random Llama (weights scaled x8 so greedy text varies), with a chat template,
    quantized with RTN w4 g32 by `lowbit quantize`."""
    src = tmp_path_factory.mktemp("serve-src")
    model, tok = tiny.build("llama")
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(8)
    tok.chat_template = CHAT_TEMPLATE
    model.save_pretrained(src)
    tok.save_pretrained(src)
    out = tmp_path_factory.mktemp("serve") / "tiny-rtn"
    assert main(["quantize", "--model-path", str(src), "--output-dir", str(out), "--quantization-type", "rtn",
                 "--bits", "4", "--group-size", "32", "--quiet"]) == 0
    return out


@pytest.fixture(scope="session")
def server(serve_model_dir, tmp_path_factory):
    """One server for the session: API key from LOWBIT_API_KEY, batch 4, a short context."""
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    with running_server(serve_model_dir, log, "--max-batch-size", "4", "--max-model-len", "200", "--threads", "1",
                        "--served-model-name", MODEL_NAME, env={"LOWBIT_API_KEY": API_KEY}) as s:
        yield s
