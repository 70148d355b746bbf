"""Split-K inside a thread-block cluster (Hopper): the K splits of one output tile meet in
distributed shared memory instead of global atomics (Gluon).

A kernel is launched in clusters of S CTAs along the grid's first axis (``launch``): the CTAs
of a cluster are consecutive there, and ``rank()`` is a CTA's place in its cluster, its K
split. The meeting is a reduce-scatter: the tile's rows are cut into S slices of R = rows / S;
after a first ``sync()`` (every CTA is done with the shared memory it reuses), CTA r stores
slice j of its partial tile into slot r of CTA j's shared memory (``scatter``: remote stores,
which do not wait for a reply), a second ``sync()`` makes the stores visible, and CTA j adds
its S slots (``gather_sum``: local loads) and writes rows [j R, (j + 1) R) of y. No workspace,
no ticket, no read back over global memory (at M = 16 the global split-K meeting costs 1-2.6 us
a call, ``benchmarks/splitk_cost.py``).

The second meeting (``arm``, ``deliver``, ``collect_sum``; ``WgmmaConfig.meet_async``) needs
one cluster barrier, passed long before the meeting, and no fence: each CTA's slots lie past
the compiler's shared memory (``launch``'s ``extra_shared``: an mbarrier, then one tile of
float32), so nothing waits for them to be free; the mbarrier is armed for a whole tile of
bytes at the kernel's start, the barrier then only says that every CTA's is armed; each CTA
sends its slices with ``st.async``, which counts their bytes on the receiver's mbarrier (with
release semantics at cluster scope), and only the receiver waits, for its own bytes.

Why by hand: Triton 3.6 launches clusters only for kernels compiled for several CTAs a program
(``num_ctas``), whose layouts it then spreads over the CTAs, and its Hopper MMA lowering rejects
such layouts. So the kernel is compiled for one CTA, and ``launch`` asks Triton's launcher for
the cluster (the ``num_ctas`` of the compiled kernel's launch metadata: the launcher then
multiplies the grid's first axis by S and sets the cluster dimension), with the scheduling
policy changed from spreading a cluster's CTAs one an SM to load balancing (``_load_balanced``:
clusters of 8 measured a quarter faster). Gluon has no
shared-memory address (3.6) and no cluster-memory ops, so both meetings are PTX on Triton's
dynamic shared memory (``global_smem``): the first from offset 0, reused after the kernel's
last use of its own buffers (every TMA copy waited for, every MMA retired, its barriers
invalidated); the second past the end, found from ``%dynamic_smem_size``.
"""
from __future__ import annotations

import logging

import triton

log = logging.getLogger(__name__)
_WARNED = False

try:  # Gluon: Triton >= 3.5, with the API of 3.6
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.runtime.jit import constexpr_function

    AVAILABLE = True
except ImportError:  # pragma: no cover - older Triton: split-K meets in global memory
    AVAILABLE = False

#: Cluster sizes the meeting takes (16 is "non-portable" on Hopper; Triton's launcher allows it).
SIZES = (2, 4, 8, 16)


def launch(kernel, grid: tuple[int, int, int], ctas: int, *args, extra_shared: int = 0, **kwargs) -> bool:
    """Launch Gluon ``kernel`` over ``grid`` with every program a cluster of ``ctas`` CTAs along
    the first axis (grid[0] * ctas CTAs there), with ``extra_shared`` bytes of dynamic shared
    memory past the compiler's own (``meeting_bytes``); False, with nothing launched (and one
    warning a process), where this Triton's compiled kernel is not the 3.6 one this relies on."""
    global _WARNED
    compiled = kernel.warmup(*args, grid=grid, **kwargs)
    if hasattr(compiled, "result"):  # asynchronous compilation
        compiled = compiled.result()
    meta = getattr(compiled, "packed_metadata", None)
    if not (isinstance(meta, tuple) and len(meta) == 3) or getattr(compiled.metadata, "global_scratch_size", 0):
        # (the launcher sizes a global scratch buffer by the compiled CTA count: none may exist)
        if not _WARNED:
            _WARNED = True
            log.warning("triton %s: no cluster launch for %s; its K splits meet in global memory",
                        triton.__version__, getattr(compiled, "name", "the kernel"))
        return False
    num_warps, num_ctas, shared = meta
    if num_ctas != ctas:  # this compiled kernel (one per CLUSTER value) is always launched so
        if extra_shared:  # the meeting's region starts 16-byte aligned past the compiler's
            shared = -(-shared // 16) * 16 + extra_shared
            compiled.metadata = compiled.metadata._replace(shared=shared)
        compiled.packed_metadata = (num_warps, ctas, shared)
        _load_balanced(compiled)
    kernel[grid](*args, **kwargs)
    return True


def meeting_bytes(rows: int, cols: int) -> int:
    """Shared memory the st.async meeting of float32 [rows, cols] tiles takes past the
    compiler's (``launch``'s ``extra_shared``): its mbarrier (16 bytes, keeping the slots
    16-byte aligned) and the slots, one tile."""
    return 16 + rows * cols * 4


def _load_balanced(compiled) -> None:
    """Give ``compiled`` a launcher that asks the hardware to load-balance a cluster's CTAs over
    the SMs (CU_CLUSTER_SCHEDULING_POLICY_LOAD_BALANCING) where Triton's asks to spread them one
    an SM: clusters of 8 then measured 8.8 -> 6.5 us on 4096x4096 M = 16 (s15 run 7,
    ``benchmarks/results/h100_wgmma_cluster_policy_s15.txt``). Triton 3.6 writes the policy into
    the C source of each kernel's launcher (``make_launcher``); on a Triton without that
    function the launcher keeps its own policy."""
    try:
        from triton.backends.nvidia import driver as nvidia
        from triton.runtime.driver import driver
    except ImportError:  # pragma: no cover - no CUDA backend
        return
    make = getattr(nvidia, "make_launcher", None)
    if make is None:
        return

    def balanced(*a, **kw):
        return make(*a, **kw).replace("CU_CLUSTER_SCHEDULING_POLICY_SPREAD",
                                      "CU_CLUSTER_SCHEDULING_POLICY_LOAD_BALANCING")

    nvidia.make_launcher = balanced
    try:
        if compiled.module is None:  # not loaded yet: load it with this launcher
            compiled._init_handles()
        else:  # (loaded for its compiled shared memory: load it again for the launch's, which
            # may need the opt-in above 48 KB)
            compiled._run = driver.active.launcher_cls(compiled.src, compiled.metadata)
            device = driver.active.get_current_device()
            compiled.module, compiled.function, *_ = driver.active.utils.load_binary(
                compiled.name, compiled.kernel, compiled.metadata.shared, device)
    finally:
        nvidia.make_launcher = make


if AVAILABLE:
    #: Wait until every thread of the cluster has arrived, its shared-memory stores visible to
    #: the cluster (``.aligned``: every thread of the CTA executes it). The release costs a
    #: gpu-scope fence (MEMBAR.ALL.GPU in the SASS).
    _SYNC = gl.constexpr("barrier.cluster.arrive.release.aligned; barrier.cluster.wait.acquire.aligned; "
                         "mov.b32 $0, 0;")
    #: The same without ordering this thread's memory accesses (no fence).
    _SYNC_RELAXED = gl.constexpr("barrier.cluster.arrive.relaxed.aligned; barrier.cluster.wait.aligned; "
                                 "mov.b32 $0, 0;")
    #: Store float32 $3 at byte offset $1 of CTA $2's dynamic shared memory (in this cluster).
    _ST_REMOTE = gl.constexpr("{ .reg .b32 a, b; mov.u32 a, global_smem; add.u32 a, a, $1; "
                              "mapa.shared::cluster.u32 b, a, $2; st.shared::cluster.f32 [b], $3; mov.b32 $0, 0; }")
    #: Load the float32 at byte offset $1 of this CTA's dynamic shared memory.
    _LD = gl.constexpr("{ .reg .b32 a; mov.u32 a, global_smem; add.u32 a, a, $1; ld.shared.f32 $0, [a]; }")

    @gluon.jit
    def rank():
        """This CTA's index in its cluster (int32 scalar)."""
        return gl.inline_asm_elementwise("mov.u32 $0, %cluster_ctarank;", "=r", [], dtype=gl.int32, is_pure=True,
                                         pack=1)

    @gluon.jit
    def _each_thread(asm: gl.constexpr, num_warps: gl.constexpr):
        """Run ``asm`` (no operands, result $0 unused) once in every thread of the CTA."""
        L: gl.constexpr = gl.BlockedLayout([1], [32], [num_warps], [0])
        gl.inline_asm_elementwise(asm, "=r,r", [gl.arange(0, 32 * num_warps, layout=L)], dtype=gl.int32,
                                  is_pure=False, pack=1)

    @gluon.jit
    def sync(num_warps: gl.constexpr, RELEASE: gl.constexpr):
        """A cluster-wide barrier, every thread once; RELEASE: this thread's shared-memory stores
        before it are visible to the cluster after it (else it only orders execution)."""
        if RELEASE:
            _each_thread(_SYNC, num_warps)
        else:
            _each_thread(_SYNC_RELAXED, num_warps)

    @gluon.jit
    def scatter(tile, r, c, me, R: gl.constexpr, C: gl.constexpr):
        """Store float32 ``tile`` [S * R, C] (any layout; r, c: each element's row and column,
        broadcastable to it) as S slices of R rows: slice j into slot ``me`` of CTA j's shared
        memory, column-major ([S slots, C, R] float32 from offset 0: y's rows are
        the tile's columns, so its reads and y's writes both run along r)."""
        dest = r // R
        off = ((me * C + c) * R + r % R) * 4
        gl.inline_asm_elementwise(_ST_REMOTE, "=r,r,r,f", [off, dest, tile], dtype=gl.int32, is_pure=False, pack=1)

    @gluon.jit
    def gather_sum(r, c, R: gl.constexpr, C: gl.constexpr, CTAS: gl.constexpr):
        """The sum over this CTA's CTAS slots, in rank order, of element (r, c) of its slice
        (r < R; int32, broadcastable to one shape), float32."""
        return _sum_slots(_LD, (c * R + r) * 4, R, C, CTAS)

    @gluon.jit
    def _sum_slots(ld: gl.constexpr, off, R: gl.constexpr, C: gl.constexpr, CTAS: gl.constexpr):
        """The sum, in rank order, of the float32 at byte ``off`` of each of CTAS slots of R * C
        (``ld``: PTX loading the float32 at byte offset $1 of the slots into $0)."""
        total = gl.inline_asm_elementwise(ld, "=f,r", [off], dtype=gl.float32, is_pure=False, pack=1)
        for j in gl.static_range(1, CTAS):
            total += gl.inline_asm_elementwise(ld, "=f,r", [off + j * (R * C * 4)], dtype=gl.float32, is_pure=False,
                                               pack=1)
        return total

    @constexpr_function
    def _base_asm(extra):
        """PTX putting the address of the meeting's region (the last ``extra`` bytes of the
        dynamic shared memory: an mbarrier, then the slots from byte 16) in register ``base``."""
        return ("mov.u32 base, global_smem; mov.u32 dyn, %dynamic_smem_size; add.u32 base, base, dyn; "
                f"sub.u32 base, base, {extra};")

    @constexpr_function
    def _arm_asm(extra, nbytes):
        """Thread 0 initializes the mbarrier and arms it for ``nbytes``; every thread arrives
        at the cluster barrier."""
        return ("{ .reg .b32 base, dyn, tid; .reg .pred p; " + _base_asm(extra) +
                " mov.u32 tid, %tid.x; setp.eq.u32 p, tid, 0; "
                "@p mbarrier.init.shared::cta.b64 [base], 1; "
                f"@p mbarrier.arrive.expect_tx.shared::cta.b64 _, [base], {nbytes}; "
                "@p fence.mbarrier_init.release.cluster; "
                "barrier.cluster.arrive.relaxed; mov.b32 $0, 0; }")

    @constexpr_function
    def _st_async_asm(extra):
        """Send float32 $3 to byte $1 of CTA $2's region, counted on that CTA's mbarrier."""
        return ("{ .reg .b32 base, dyn, a, b, m; " + _base_asm(extra) +
                " add.u32 a, base, $1; mapa.shared::cluster.u32 b, a, $2; mapa.shared::cluster.u32 m, base, $2; "
                "st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [b], $3, [m]; mov.b32 $0, 0; }")

    @constexpr_function
    def _wait_asm(extra):
        """Wait for the first phase of this CTA's mbarrier (every byte of its slots arrived)."""
        return ("{ .reg .b32 base, dyn; .reg .pred p; " + _base_asm(extra) +
                " WAIT: mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [base], 0; "
                "@!p bra WAIT; mov.b32 $0, 0; }")

    @constexpr_function
    def _ld_asm(extra):
        """Load the float32 at byte $1 of this CTA's region."""
        return "{ .reg .b32 base, dyn, a; " + _base_asm(extra) + " add.u32 a, base, $1; ld.shared.f32 $0, [a]; }"

    _meeting_bytes = constexpr_function(meeting_bytes)

    @gluon.jit
    def arm(ROWS: gl.constexpr, COLS: gl.constexpr, num_warps: gl.constexpr):
        """Open the meeting of float32 [ROWS, COLS] tiles: the mbarrier of this CTA's slots
        expects a whole tile of bytes (every CTA's slice for this CTA), and this CTA arrives at
        the cluster barrier that ``deliver`` waits for (its mbarrier is initialized by then).
        Call early: the barrier is then long complete when the sums are delivered."""
        EXTRA: gl.constexpr = _meeting_bytes(ROWS, COLS)
        _each_thread(_arm_asm(EXTRA, ROWS * COLS * 4), num_warps)

    @gluon.jit
    def deliver(tile, r, c, me, R: gl.constexpr, C: gl.constexpr, CTAS: gl.constexpr, num_warps: gl.constexpr):
        """Send float32 ``tile`` [S * R, C] (any layout; r, c: each element's row and column,
        broadcastable to it) as S slices of R rows: slice j into slot ``me`` of CTA j's slots
        (column-major [S slots, C, R]), each store counting its bytes on CTA j's mbarrier
        (``st.async``: nothing waits for a reply, and no fence)."""
        EXTRA: gl.constexpr = _meeting_bytes(CTAS * R, C)
        _each_thread("barrier.cluster.wait; mov.b32 $0, 0;", num_warps)  # every mbarrier armed
        off = 16 + ((me * C + c) * R + r % R) * 4
        gl.inline_asm_elementwise(_st_async_asm(EXTRA), "=r,r,r,f", [off, r // R, tile], dtype=gl.int32,
                                  is_pure=False, pack=1)

    @gluon.jit
    def collect_sum(r, c, R: gl.constexpr, C: gl.constexpr, CTAS: gl.constexpr, num_warps: gl.constexpr):
        """Wait until every CTA's slice has arrived in this CTA's slots, then their sum in rank
        order, element (r, c) of the slice (r < R; int32, broadcastable to one shape), float32."""
        EXTRA: gl.constexpr = _meeting_bytes(CTAS * R, C)
        _each_thread(_wait_asm(EXTRA), num_warps)
        return _sum_slots(_ld_asm(EXTRA), 16 + (c * R + r) * 4, R, C, CTAS)

    @constexpr_function
    def slice_layout(rows, cols, num_warps):
        """A blocked layout for one CTA's slice [rows, cols] of a tile (threads along the rows
        first: the slots' column-major order, and y's contiguous dimension)."""
        tr = min(32, rows)
        return gl.BlockedLayout([1, 1], [tr, 32 // tr], [1, num_warps], [0, 1])
