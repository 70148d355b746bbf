"""The wgmma kernel compiled offline for sm_90 (no GPU needed): the weights must reach the
tensor cores from registers. Shared memory is for x (written by TMA, read by the MMA), so
no thread stores to or loads from it between the first and the last MMA of the loop."""
from __future__ import annotations

import re

import offline_sass
import pytest

pytest.importorskip("triton.experimental.gluon._runtime")


def _sass(bm: int, codes: int, split: bool, lut: bool = False, mmas: int = 2, accs: int = 1, x16: bool = False,
          red: int = 4, cluster: int = 1, meet_async: bool = False, stages: int = 3, maxnreg: int | None = None,
          one_chunk: bool = False) -> str:
    return offline_sass.sass(__file__, bm=bm, codes=codes, split=split, lut=lut, mmas=mmas, accs=accs, x16=x16,
                             red=red, cluster=cluster, meet_async=meet_async, stages=stages, maxnreg=maxnreg,
                             one_chunk=one_chunk)


def _compile(bm: int, codes: int, split: bool, lut: bool = False, mmas: int = 2, accs: int = 1,
             x16: bool = False, red: int = 4, cluster: int = 1, meet_async: bool = False, stages: int = 3,
             maxnreg: int | None = None, one_chunk: bool = False) -> str:
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon import _runtime as runtime
    from triton.runtime.jit import mangle_type

    from lowbit.kernels.triton import wgmma

    kernel = wgmma.int4_wgmma_kernel
    desc = wgmma.x_descriptor(torch.empty(512, 4096, dtype=torch.float16), bm, codes)
    ptrs = dict(qw_ptr="*i32", s_ptr="*fp16", z_ptr="*fp16", lanes_ptr="*i32", bias_ptr="*fp16", y_ptr="*fp16",
                ws_ptr="*fp16" if red == 8 else "*fp32", cnt_ptr="*i32")
    ints = dict.fromkeys(["M", "N", "KC", "G", "stride_ym", "chunks_per_split", "splits"], "i32")
    cx = dict(BN=64, BNW=64, BM=bm, GS=64 if lut else 128, STAGES=stages, CODES=codes, MMAS=mmas, ACCS=accs, X16=x16, SPLIT_K=split, PDL=True,
              HAS_ZERO=not lut, HAS_BIAS=False, HALF_MATH=True, LUT=lut, RED=red, CLUSTER=cluster,
              MEET_ASYNC=meet_async, ONE_CHUNK=one_chunk, num_warps=4)
    sig = {"x_desc": mangle_type(desc), **ptrs, **ints, **dict.fromkeys(cx, "constexpr")}
    attrs = {(kernel.arg_names.index(n),): [["tt.divisibility", 16]]
             for n in list(ptrs) + ["N", "KC", "G", "stride_ym"]}
    src = runtime.GluonASTSource(fn=kernel, signature=sig, attrs=attrs,
                                 constexprs={(kernel.arg_names.index(k),): v for k, v in cx.items()})
    options = dict(num_warps=4, **({} if maxnreg is None else dict(maxnreg=maxnreg)))
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options).asm["sass"]


@pytest.mark.parametrize("bm,codes,split,lut,mmas,accs,x16", [
    (16, 4, True, False, 2, 1, False), (128, 2, False, False, 2, 1, False), (16, 4, True, True, 2, 1, False),
    (16, 4, False, False, 3, 4, False), (16, 8, True, True, 1, 2, False),  # steps into 4 / 2 accumulators in turn
    (16, 8, True, False, 1, 2, True),  # odd positions as 16 times the weight
])
def test_wgmma_takes_the_weights_from_registers(bm, codes, split, lut, mmas, accs, x16):
    """int4 and code books (lut: the decode shuffles registers between lanes, no memory)."""
    sass = _sass(bm, codes, split, lut, mmas, accs, x16)
    mmas = re.findall(rf"HGMMA\.64x{bm}x16\.F32 R\d+, (\S+),", sass)
    # A chunk is 8 code positions of two k16 MMAs each; the loop body is emitted once.
    assert len(mmas) == 16
    assert all(a.startswith("R") for a in mmas)  # the A operand is registers, not a shared-memory descriptor
    ops = re.findall(r"\b(HGMMA|STS|LDS|LDSM)\b", sass)
    first, last = ops.index("HGMMA"), len(ops) - 1 - ops[::-1].index("HGMMA")
    assert not [op for op in ops[first:last] if op != "HGMMA"]


def _shifts_between_mmas(sass: str) -> int:
    ops = re.findall(r"\b(HGMMA|SHF)\.", sass)
    first, last = ops.index("HGMMA"), len(ops) - 1 - ops[::-1].index("HGMMA")
    return ops[first:last].count("SHF")


def test_x16_decode_shifts_a_pair_register_once_not_each_code_position():
    """x16: codes 0-1 (4-5) are masked where they lie, codes 2-3 (6-7) after one byte shift of
    the pair: two shifts per two words, where a shift per code position (6 of 8) was."""
    old = _shifts_between_mmas(_sass(16, 8, True, False, 1, 2, False))
    new = _shifts_between_mmas(_sass(16, 8, True, False, 1, 2, True))
    assert new <= 16 < old  # 8 pair registers a thread a chunk (64 x 32 words over 128 threads, pairs of 2)


def test_half_sums_add_eight_fp16_sums_an_atomic_and_read_them_back_in_one_load():
    """The split-K meeting in fp16: one 16-byte vector atomic of 8 sums (float32: of 4)."""
    f32, f16 = _sass(16, 4, True, red=4), _sass(16, 4, True, red=8)
    assert re.findall(r"REDG\.E\.ADD\.F32x4\S*", f32) and not re.findall(r"REDG\S*F16", f32)
    assert re.findall(r"REDG\.E\.ADD\.F16x8\S*", f16) and not re.findall(r"REDG\S*F32", f16)
    assert re.findall(r"LDG\.E\.128\.STRONG\.GPU", f16)  # the last split's read back


def test_last_split_writes_the_output_before_resetting_the_ticket_and_fences_nothing():
    """The global meeting's last program: after its ticket (whose acquire orders the reads),
    it reads the sums, writes y, and leaves zeros and a zero ticket with relaxed stores: no
    fence (MEMBAR) and no wait for the reset, which cost two L2 round trips before y."""
    tail = offline_sass.after_ticket(_sass(16, 8, True, mmas=3, accs=4, x16=True))
    assert not [op for op in tail if op.startswith("MEMBAR")]
    assert tail[-1] == "ATOMG.E.EXCH"  # the reset is the last memory operation: nothing waits on it
    reads = [i for i, op in enumerate(tail) if op.startswith("LDG.E") and "STRONG.GPU" in op]
    stores = [i for i, op in enumerate(tail) if op.startswith("STG")]
    assert reads and stores and max(reads) < min(stores)


def test_cluster_splits_meet_in_shared_memory_without_global_atomics():
    """Split-K in a cluster: two cluster barriers, only the second with a fence (MEMBAR); between
    them the partial tile is stored to the cluster's shared memory (generic ``ST.E`` through
    the shared window), after them summed from this CTA's own (``LDS``); no atomics, no ticket."""
    sass = _sass(16, 4, False, accs=2, mmas=1, cluster=2)
    ops = re.findall(r"\b(UCGABAR_ARV|UCGABAR_WAIT|MEMBAR\.\S+|ST\.E|LDS|RED\S*|ATOM\S*)[ ;]", sass)
    arrive = [i for i, op in enumerate(ops) if op == "UCGABAR_ARV"]
    assert len(arrive) == 2
    between = ops[arrive[0] + 1:arrive[1]]
    assert between.count("ST.E") == 8  # a [64, 16] tile over 128 threads
    assert [op for op in ops[:arrive[0]] if op.startswith("MEMBAR")] == []
    assert "MEMBAR.ALL.GPU" in between  # the second barrier's release
    assert ops[arrive[1] + 1:].count("LDS") == 8  # 2 slots of [32, 16] over 128 threads
    assert not [op for op in ops if op.startswith(("RED", "ATOM"))]


def test_async_cluster_meeting_sends_with_st_async_and_needs_no_fence():
    """The st.async meeting: the one cluster barrier arrives before the loop and is waited for
    after it, then the partial tile goes out as ``STAS`` (bytes counted on the receiver's
    mbarrier), and the sums are read locally after a wait on this CTA's own mbarrier; no
    fence (MEMBAR), no atomics."""
    sass = _sass(16, 4, False, accs=2, mmas=1, cluster=2, meet_async=True)
    ops = re.findall(r"\b(UCGABAR_ARV|UCGABAR_WAIT|HGMMA\S*|MEMBAR\.\S+|STAS|LDS|SYNCS\.PHASECHK\S*|RED\S*|ATOM\S*)[ ;]",
                     sass)
    assert ops.count("UCGABAR_ARV") == 1 and ops.count("UCGABAR_WAIT") == 1
    arrive, wait = ops.index("UCGABAR_ARV"), ops.index("UCGABAR_WAIT")
    mmas = [i for i, op in enumerate(ops) if op.startswith("HGMMA")]
    assert arrive < mmas[0] and mmas[-1] < wait
    sends = [i for i, op in enumerate(ops) if op == "STAS"]
    assert len(sends) == 8 and wait < sends[0]  # a [64, 16] tile over 128 threads
    after = ops[sends[-1] + 1:]
    assert after[0].startswith("SYNCS.PHASECHK") and after.count("LDS") == 8
    assert not [op for op in ops if op.startswith(("MEMBAR", "RED", "ATOM"))]


@pytest.mark.parametrize("cluster,meet_async", [(1, False), (16, True)], ids=["global", "async"])
def test_predecode_decodes_before_the_pdl_wait_and_only_multiplies_after_it(cluster, meet_async):
    """``WgmmaConfig.predecode`` (a program's one chunk): every decode instruction (HADD2,
    HMUL2) before the PDL wait (ACQBULK), all 16 MMAs after it, with under 128 registers a
    thread (4 CTAs an SM) and nothing spilled; the loop's version decodes after the wait."""
    table = dict(bm=16, codes=8, split=cluster == 1, mmas=3, accs=4, x16=True, cluster=cluster, meet_async=meet_async)
    ahead, loop = _sass(**table, one_chunk=True), _sass(**table)
    ops = re.findall(r"\b(ACQBULK|HGMMA|HMUL2|HADD2|LDL|STL)\b", ahead)
    wait = ops.index("ACQBULK")
    assert ops[:wait].count("HMUL2") == 64 and ops[:wait].count("HADD2") >= 64  # 8 positions x 8 f16x2 a thread
    assert not {"HMUL2", "HADD2"} & set(ops[wait:]) and ops[wait:].count("HGMMA") == 16
    assert _registers(ahead) <= 128 and not {"LDL", "STL"} & set(ops)
    ops = re.findall(r"\b(ACQBULK|HMUL2)\b", loop)
    assert "HMUL2" not in ops[:ops.index("ACQBULK")]


def _registers(sass: str) -> int:
    """Registers a thread the SASS uses (its highest general register + 1)."""
    return 1 + max(int(r) for r in re.findall(r"\bR(\d+)\b", sass))


@pytest.mark.parametrize("cluster,meet_async", [(1, False), (16, True)], ids=["global", "async"])
def test_register_limit_fits_four_ctas_an_sm_without_spilling(cluster, meet_async):
    """4096x1024 M = 16's config (a chunk a CTA, four accumulators, three MMAs in flight): the
    compiler's choice takes more than 128 registers a thread (3 CTAs of 128 threads an SM);
    ``maxnreg=112`` fits 4 (2 calls' CTAs under PDL) with nothing spilled to local memory."""
    table = dict(bm=16, codes=8, split=cluster == 1, mmas=3, accs=4, x16=True, cluster=cluster, meet_async=meet_async)
    assert _registers(_sass(**table)) > 128
    limited = _sass(**table, maxnreg=112)
    assert _registers(limited) <= 112
    assert not re.findall(r"\b(LDL|STL)\b", limited)
