"""bench: medians and spreads that agree with their runs; peak memory; bad arguments."""
import pytest
import torch

import tiny
from lowbit.errors import LowbitError
from lowbit.evaluate.memory import PeakMemory, memory_footprint, storage_bytes
from lowbit.evaluate.speed import Stat, bench, format_bench


def test_stat():
    s = Stat.of([3.0, 1.0, 2.0, 10.0])
    assert (s.median, s.min, s.max) == (2.5, 1.0, 10.0)
    assert s.spread_pct() == pytest.approx(360.0)


def test_bench_tiny():
    model, _ = tiny.build("llama")
    results = bench(model, [1, 2], prompt_len=16, new_tokens=4, repeats=3, warmup=1, progress=False)
    assert [r.batch_size for r in results] == [1, 2]
    for r in results:
        assert len(r.ttft_s.runs) == 3 and r.ttft_s.min <= r.ttft_s.median <= r.ttft_s.max
        # every throughput is derived from its own run's time
        assert sorted(r.prefill_tok_s.runs) == pytest.approx(sorted(r.batch_size * 16 / t for t in r.ttft_s.runs))
        assert r.decode_tok_s.median > 0
        assert r.weight_bytes == memory_footprint(model) and r.peak_bytes > r.weight_bytes
        assert r.dtype == "float32" and r.device == "cpu"
    table = format_bench(results)
    assert "decode tok/s" in table and "median [min-max] of 3 runs" in table


def test_bench_static_decoder_runs_the_same_generation():
    """static=True times StaticDecoder: a result per batch size, marked as such, and its
    prefill is the timed forward of the prompt (TTFT)."""
    from lowbit.evaluate.static_decode import StaticDecoder

    model, _ = tiny.build("llama")
    results = bench(model, [1, 2], prompt_len=16, new_tokens=4, repeats=2, warmup=1, progress=False, static=True)
    assert [(r.batch_size, r.decoder) for r in results] == [(1, "static"), (2, "static")]
    assert all(r.decode_tok_s.median > 0 and len(r.ttft_s.runs) == 2 for r in results)
    assert "static KV cache" in format_bench(results)
    dec = StaticDecoder(model, max_len=20)
    tokens, _ = dec.generate(torch.randint(3, 300, (1, 16)), 4)
    assert tokens.shape == (1, 20) and dec.prefill_seconds > 0
    with pytest.raises(LowbitError, match="bench it without static decoding"):
        bench(tiny.build("opt")[0], [1], prompt_len=8, new_tokens=4, progress=False, static=True)


def test_bench_errors():
    model, _ = tiny.build("llama")
    with pytest.raises(LowbitError, match="above the model's maximum of 256"):
        bench(model, [1], prompt_len=250, new_tokens=10, progress=False)
    with pytest.raises(LowbitError, match="new-tokens"):
        bench(model, [1], prompt_len=8, new_tokens=1, progress=False)
    with pytest.raises(LowbitError, match="batch sizes"):
        bench(model, [0], prompt_len=8, new_tokens=4, progress=False)


def _current_rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def test_peak_memory_sees_an_allocation():
    import mmap

    # Compare with the RSS inside the block (earlier tests free memory at unpredictable times),
    # and take fresh pages from the kernel: a malloc'd tensor may reuse pages already resident.
    with PeakMemory("cpu") as peak:
        start = _current_rss()
        size = 64 * 2**20
        buf = mmap.mmap(-1, size)
        buf[::4096] = b"\x01" * (size // 4096)  # touch every page
        buf.close()
    assert peak.bytes - start > 48 * 2**20 or peak.kind.endswith("lifetime)")


def test_storage_bytes_counts_floats_at_16_bits():
    model, _ = tiny.build("llama")  # all float32: half the footprint
    fp32_bytes = memory_footprint(model)
    assert storage_bytes(model) * 2 == fp32_bytes
    model.register_buffer("codes", torch.zeros(1000, dtype=torch.int32))  # integers count as stored
    assert storage_bytes(model) == fp32_bytes // 2 + 4000
