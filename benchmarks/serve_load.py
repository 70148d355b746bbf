"""Load test of `lowbit serve` over loopback: N chat requests at concurrency C.

Starts a server on 127.0.0.1 (a free port) for --model, or uses a running one at --url
(loopback addresses only), sends the requests with the official openai client and prints
requests/s, latency percentiles, tokens/s and errors. Bounded in count (--requests) and
time (--time-limit): requests still open at the limit count as errors.

    python benchmarks/serve_load.py --model outputs/demo-rtn-w4g64 --requests 200 --concurrency 16
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import httpx

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
TOPICS = ["the sea", "a robot", "winter", "coffee", "a library", "trains", "the moon", "gardens",
          "bicycles", "rain", "mountains", "a cat", "music", "bread", "the city", "stars"]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


async def load_test(base_url: str, model: str, api_key: str | None = None, requests: int = 200,
                    concurrency: int = 16, max_tokens: int = 32, time_limit: float = 600.0) -> dict:
    """Send ``requests`` chat completions, at most ``concurrency`` at a time; returns the figures."""
    import openai

    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=api_key or "none", max_retries=0,
                                timeout=time_limit)
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    tokens: list[int] = []
    errors: list[str] = []

    async def one(i: int) -> None:
        async with gate:
            start = time.perf_counter()
            try:
                r = await client.chat.completions.create(
                    model=model, max_tokens=max_tokens, temperature=0.7, seed=i,
                    messages=[{"role": "user", "content": f"Write one sentence about {TOPICS[i % len(TOPICS)]}."}])
                latencies.append(time.perf_counter() - start)
                tokens.append(r.usage.completion_tokens)
            except Exception as e:  # every failure is counted and reported, none stops the run
                errors.append(f"{type(e).__name__}: {e}")

    start = time.perf_counter()
    tasks = [asyncio.ensure_future(one(i)) for i in range(requests)]
    done, pending = await asyncio.wait(tasks, timeout=time_limit)
    for t in pending:
        t.cancel()
    errors += ["not finished within --time-limit"] * len(pending)
    wall = time.perf_counter() - start
    await client.close()
    return {"requests": requests, "concurrency": concurrency, "max_tokens": max_tokens, "ok": len(latencies),
            "errors": len(errors), "first_errors": errors[:3], "wall_s": round(wall, 2),
            "requests_per_s": round(len(latencies) / wall, 2),
            "p50_s": round(percentile(latencies, 50), 3) if latencies else None,
            "p95_s": round(percentile(latencies, 95), 3) if latencies else None,
            "completion_tokens_per_s": round(sum(tokens) / wall, 1)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, extra: list[str], log: Path, timeout: float = 300) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "lowbit", "serve", model, "--host", "127.0.0.1", "--port", str(port), "--quiet",
           *extra]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"the server did not start within {timeout} s:\n{log.read_text()}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model to serve (started here on a free loopback port)")
    p.add_argument("--url", help="a running server instead (loopback only), e.g. http://127.0.0.1:8000")
    p.add_argument("--model-name", help="model name to send (default: what the server lists)")
    p.add_argument("--api-key", default=os.environ.get("LOWBIT_API_KEY"))
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-batch-size", type=int, default=16, help="server's batch size when started here")
    p.add_argument("--threads", type=int, default=None, help="server's --threads when started here")
    p.add_argument("--time-limit", type=float, default=600, help="seconds for all requests (default: 600)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON line")
    args = p.parse_args(argv)
    if bool(args.model) == bool(args.url):
        p.error("give --model (start a server here) or --url (a running one), not both")
    if not 1 <= args.requests <= 10_000 or not 1 <= args.concurrency <= 256:
        p.error("--requests must be 1..10000 and --concurrency 1..256")
    proc = None
    log = Path(tempfile.mkstemp(suffix=".log", prefix="serve_load_")[1])
    try:
        if args.url:
            if urllib.parse.urlparse(args.url).hostname not in LOOPBACK:
                p.error(f"--url {args.url} is not a loopback address: this benchmark only talks to this machine")
            url = args.url.rstrip("/")
        else:
            extra = ["--max-batch-size", str(args.max_batch_size), "--max-queue", str(max(64, args.requests))]
            extra += ["--threads", str(args.threads)] if args.threads else []
            proc, url = start_server(args.model, extra, log)
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        name = args.model_name or httpx.get(f"{url}/v1/models", headers=headers, timeout=10).json()["data"][0]["id"]
        figures = asyncio.run(load_test(url, name, args.api_key, args.requests, args.concurrency, args.max_tokens,
                                        args.time_limit))
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
    if figures["errors"] == 0:
        log.unlink(missing_ok=True)
    else:
        print(f"server log: {log}", file=sys.stderr)
    if args.json:
        print(json.dumps(figures))
    else:
        print(f"{'requests':>8} {'conc':>5} {'ok':>5} {'errors':>6} {'wall s':>7} {'req/s':>6} {'p50 s':>6} "
              f"{'p95 s':>6} {'tok/s':>6}")
        print(f"{figures['requests']:>8} {figures['concurrency']:>5} {figures['ok']:>5} {figures['errors']:>6} "
              f"{figures['wall_s']:>7} {figures['requests_per_s']:>6} {figures['p50_s']:>6} {figures['p95_s']:>6} "
              f"{figures['completion_tokens_per_s']:>6}")
        for e in figures["first_errors"]:
            print("error:", e)
    return 0 if figures["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
