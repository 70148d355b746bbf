"""Split-K inside a thread-block cluster (Hopper): the K splits of one output tile meet in
distributed shared memory instead of global atomics (Gluon).

A kernel is launched in clusters of S CTAs along the grid's first axis (``launch``): the
CTAs of a cluster are consecutive there, and ``rank()`` is a CTA's place in its cluster,
its K split. Each CTA leaves its partial tile, float32 [R, C] row-major, at the start of
its own shared memory; after ``sync()`` CTA r sums rows [r R / S, (r + 1) R / S) of all S
tiles by ``ld.shared::cluster`` and writes them out; a second ``sync()`` keeps every tile
alive until all are read. No workspace, no ticket, no second pass over global memory (on
the wide layers at M = 16 the atomics and read back of global split-K cost 1-2 us a call).

Why by hand: Triton 3.6 launches clusters only for kernels compiled for several CTAs a
program (``num_ctas``), whose layouts it then spreads over the CTAs, and its Hopper MMA
lowering rejects such layouts. So the kernel is compiled for one CTA, and ``launch`` asks
Triton's launcher for the cluster (the ``num_ctas`` of the compiled kernel's launch
metadata: the launcher then multiplies the grid's first axis by S and sets the cluster
dimension). Gluon has no shared-memory address (3.6) and no cluster-memory ops, so the
meeting is PTX on Triton's dynamic shared memory (``global_smem``); the tile goes there
only after the kernel's last use of its own buffers (every TMA copy waited for, every MMA
retired, its barriers invalidated), and the kernel asserts it reserved room for it.
"""
from __future__ import annotations

try:  # Gluon: Triton >= 3.5, with the API of 3.6
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.runtime.jit import constexpr_function

    AVAILABLE = True
except ImportError:  # pragma: no cover - older Triton: split-K meets in global memory
    AVAILABLE = False

#: The largest cluster Hopper runs (16 is "non-portable"; Triton's launcher allows it).
MAX_CTAS = 16


def launch(kernel, grid: tuple[int, int, int], ctas: int, *args, **kwargs) -> None:
    """Launch Gluon ``kernel`` over ``grid`` with every program a cluster of ``ctas`` CTAs
    along the first axis (grid[0] * ctas CTAs there)."""
    compiled = kernel.warmup(*args, grid=grid, **kwargs)
    if hasattr(compiled, "result"):  # asynchronous compilation
        compiled = compiled.result()
    num_warps, num_ctas, shared = compiled.packed_metadata
    if num_ctas != ctas:  # the one compiled kernel of this CLUSTER value: always launched so
        # (the launcher sizes a global scratch buffer by the compiled CTA count: none may exist)
        if getattr(compiled.metadata, "global_scratch_size", 0):
            raise RuntimeError(f"{compiled.name}: a cluster launch needs a kernel without global scratch")
        compiled.packed_metadata = (num_warps, ctas, shared)
    kernel[grid](*args, **kwargs)


if AVAILABLE:
    #: Store float32 $2 at byte offset $1 of this CTA's dynamic shared memory.
    _ST = gl.constexpr("{ .reg .b32 a; mov.u32 a, global_smem; add.u32 a, a, $1; st.shared.f32 [a], $2; "
                       "mov.b32 $0, 0; }")
    #: Wait until every thread of the cluster has arrived (and its shared-memory stores are
    #: visible to the cluster).
    _SYNC = gl.constexpr("barrier.cluster.arrive.release.aligned; barrier.cluster.wait.acquire.aligned; "
                         "mov.b32 $0, 0;")

    @gluon.jit
    def rank():
        """This CTA's index in its cluster (int32 scalar)."""
        return gl.inline_asm_elementwise("mov.u32 $0, %cluster_ctarank;", "=r", [], dtype=gl.int32, is_pure=True,
                                         pack=1)

    @gluon.jit
    def sync(num_warps: gl.constexpr):
        """A cluster-wide barrier, every thread once (the barrier is ``.aligned``)."""
        L: gl.constexpr = gl.BlockedLayout([1], [32], [num_warps], [0])
        gl.inline_asm_elementwise(_SYNC, "=r,r", [gl.arange(0, 32 * num_warps, layout=L)], dtype=gl.int32,
                                  is_pure=False, pack=1)

    @gluon.jit
    def store_partial(tile, r, c, C: gl.constexpr):
        """Leave float32 ``tile`` (any layout; r, c: each element's row and column in the
        tile, broadcastable to it) at byte (r * C + c) * 4 of this CTA's shared memory."""
        off = (r * C + c) * 4
        gl.inline_asm_elementwise(_ST, "=r,r,f", [off, tile], dtype=gl.int32, is_pure=False, pack=1)

    @constexpr_function
    def _load_asm(cta):
        return ("{ .reg .b32 a, b; mov.u32 a, global_smem; add.u32 a, a, $1; "
                f"mapa.shared::cluster.u32 b, a, {cta}; ld.shared::cluster.f32 $0, [b]; }}")

    @gluon.jit
    def sum_partials(r, c, C: gl.constexpr, CTAS: gl.constexpr):
        """The sum over the cluster's CTAs, in rank order, of their tiles' elements (r, c)
        (int32, broadcastable to one shape), float32."""
        off = (r * C + c) * 4
        total = gl.inline_asm_elementwise(_load_asm(0), "=f,r", [off], dtype=gl.float32, is_pure=False, pack=1)
        for j in gl.static_range(1, CTAS):
            total += gl.inline_asm_elementwise(_load_asm(j), "=f,r", [off], dtype=gl.float32, is_pure=False, pack=1)
        return total

    @constexpr_function
    def share_layout(rows, cols, num_warps):
        """A blocked layout for one CTA's share [rows, cols] of a tile (threads along the
        columns first: the tile's row-major order)."""
        tc = min(32, cols)
        return gl.BlockedLayout([1, 1], [32 // tc, tc], [num_warps, 1], [1, 0])
