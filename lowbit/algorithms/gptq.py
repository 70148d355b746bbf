"""GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers"), Algorithm 1, with the paper's names.

For a layer W [N, K] (rows: outputs, columns: inputs) and calibration inputs X [K, tokens],
GPTQ minimizes ||W X - Q X||^2 column by column. The Hessian of that objective is
H = 2 X X^T; quantizing column i and spreading its error over the columns not yet quantized
with the inverse Hessian (OBS) keeps the layer's output close. The paper's tricks, all here:

- the inverse Hessian through a Cholesky factorization (Hinv = chol(H^-1), upper): row i of
  Hinv is exactly the update of column i once columns < i are fixed;
- dampening: H + damp * I with damp = damp_percent * mean(diag(H)); raised (x10, with a
  warning) while the factorization fails, rounding to nearest as a last resort;
- lazy batch updates: columns in blocks of ``blocksize`` (128); inside a block the updates
  are rank-1 on the block only, the rest of W is updated once per block (Err1 @ Hinv);
- groups: scale/zero of a group are chosen when its first column is reached, from the
  already-updated weights (a ragged last group when group_size does not divide K);
- act-order (desc_act): columns in order of decreasing diag(H) (perm / invperm); group g is
  then the g-th run of ``group_size`` columns in that order, which g_idx records;
- static groups: every group's scale/zero fixed from the original W before any update, so
  that act-order leaves g_idx = k // group_size.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from dataclasses import dataclass, field

import torch

from ..config import QuantConfig
from ..formats import AffineQuantized, choose_qparams, choose_qparams_clipped
from .result import LayerResult
from .rtn import rtn_quantize

log = logging.getLogger(__name__)

#: Damping raised at most this many times (x10 each) before falling back to RTN.
DAMP_RETRIES = 4


@dataclass
class HessianStats:
    """Running statistics of a layer's inputs x [..., K]: XtX = sum x x^T (float32 [K, K])
    over ``rows`` inputs; ``H`` = 2 XtX / rows, the Hessian of the mean squared output error.
    Also the mean |x| per channel (AWQ's activation magnitude)."""

    XtX: torch.Tensor
    abs_sum: torch.Tensor
    rows: int = 0
    # mm with out_dtype (16-bit inputs, float32 result) where the backend has it
    _mixed_mm: bool | None = field(default=None, repr=False)

    @classmethod
    def zeros(cls, k: int, device=None) -> "HessianStats":
        return cls(torch.zeros(k, k, device=device), torch.zeros(k, device=device))

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1])
        self.abs_sum += x.abs().sum(0, dtype=torch.float32)
        self.rows += x.shape[0]
        self.XtX += self._xtx(x)

    def _xtx(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return x.t() @ x
        if self._mixed_mm is not False:
            # 16-bit products accumulated and returned in float32: full speed, no overflow.
            try:
                out = torch.mm(x.t(), x, out_dtype=torch.float32)
                self._mixed_mm = True
                return out
            except (RuntimeError, TypeError, NotImplementedError):
                self._mixed_mm = False
        # Not a 16-bit product with a 16-bit result (CPUs have no out_dtype mm): rounding each
        # batch's X^T X to bf16's 8-bit mantissa perturbs H by ~0.4% per entry, enough to make
        # it indefinite (Cholesky failures at 1% damping) and to steer GPTQ's updates wrong;
        # fp16 sums of squares would overflow past 65504.
        x = x.float()
        return x.t() @ x

    @property
    def H(self) -> torch.Tensor:
        return 2 * self.XtX / max(self.rows, 1)

    @property
    def x_mean(self) -> torch.Tensor:
        return self.abs_sum / max(self.rows, 1)


def lazy_blocksize(blocksize: int, group_size: int, k: int) -> int:
    """A lazy-batch block size whose blocks never cut a group whose parameters are still to
    be chosen: every group starts at a block start or lies inside one block. Then a group's
    columns are up to date when its first column is reached."""
    if group_size >= k or group_size % blocksize == 0:
        return blocksize
    if group_size < blocksize:
        return group_size * (blocksize // group_size)
    return group_size


def inverse_hessian(H: torch.Tensor, damp_percent: float) -> torch.Tensor | None:
    """Hinv = chol((H + damp I)^-1), upper triangular [K, K]; None if H cannot be factorized
    even with damp raised DAMP_RETRIES times. Damps H in place (it is GPTQ's own copy): at
    K = 14336 each K x K matrix is 0.8 GB."""
    mean_diag = torch.mean(torch.diag(H)).item()
    damp, applied = damp_percent * mean_diag, 0.0
    for attempt in range(DAMP_RETRIES + 1):
        H.diagonal().add_(damp - applied)
        applied = damp
        L, info = torch.linalg.cholesky_ex(H)
        if info.item() == 0:
            if H.device.type == "cpu":
                # H^-1 = L^-T L^-1 (torch.cholesky_inverse computes the same, 4x slower on CPU)
                eye = torch.eye(H.shape[0], dtype=H.dtype)
                Linv = torch.linalg.solve_triangular(L, eye, upper=False)
                del L, eye
                Hinv = Linv.t() @ Linv
                del Linv
            else:
                Hinv = torch.cholesky_inverse(L)
                del L
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if info.item() == 0 and torch.isfinite(U).all():
                return U
        new_damp = max(damp * 10, 0.01 * mean_diag, 1e-8)
        if attempt < DAMP_RETRIES:
            log.warning("GPTQ: Cholesky factorization failed with damp %.3g (%.3g%% of mean diag); retrying with %.3g",
                        damp, 100 * damp / max(mean_diag, 1e-30), new_damp)
        damp = new_damp
    return None


@contextlib.contextmanager
def _serial_on_cpu(device: torch.device):
    """One intra-op thread for the column loop on CPU: its updates ([N, <= blocksize]) are
    too small to gain from threads, and on a busy machine each hand-off between threads
    costs milliseconds (measured: 20 ms vs 0.2 ms per rank-1 update with 2 threads on 2
    shared cores)."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def gptq(
    W: torch.Tensor,
    H: torch.Tensor,
    bits: int,
    group_size: int = -1,
    sym: bool = True,
    act_order: bool = False,
    static_groups: bool = False,
    damp_percent: float = 0.01,
    blocksize: int = 128,
    clip_search: bool = False,
) -> tuple[AffineQuantized, float] | None:
    """Quantize W [N, K] given H [K, K] = 2 X X^T. Returns (codes + scale/zero [N, G] +
    g_idx [K], the GPTQ loss sum (w - q)^2 / Hinv_ii^2 / 2), or None if H is unusable.
    Computes in float32 on W's device. ``clip_search``: each group's range is the clipped one
    of ``formats.choose_qparams_clipped`` instead of min-max."""
    W = W.detach().float().clone()
    H = H.detach().to(W.device, torch.float32, copy=True)
    N, K = W.shape
    gs = K if group_size == -1 else min(group_size, K)
    G = math.ceil(K / gs)
    maxq = 2**bits - 1
    qparams = choose_qparams_clipped if clip_search else choose_qparams

    dead = torch.diag(H) == 0  # inputs that are always zero: any value works, take 0
    H[dead, dead] = 1
    W[:, dead] = 0

    scale = torch.zeros(N, G, device=W.device)
    zero = torch.zeros(N, G, device=W.device)
    if static_groups:
        for g in range(G):
            scale[:, g : g + 1], zero[:, g : g + 1] = qparams(W[:, g * gs : (g + 1) * gs], bits, (1, gs), sym)

    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(K, device=W.device)
    invperm = torch.argsort(perm)
    if act_order:
        W = W[:, perm]
        H = H[perm][:, perm]
    # group of each column in processing order: static groups keep the original columns' groups
    group_of = perm // gs if static_groups else torch.arange(K, device=W.device) // gs

    Hinv = inverse_hessian(H, damp_percent)
    if Hinv is None:
        return None

    Q = torch.zeros(N, K, device=W.device)
    Losses = torch.zeros(N, device=W.device)
    groups = group_of.tolist()
    bs = lazy_blocksize(blocksize, gs, K)
    with _serial_on_cpu(W.device):
        for i1 in range(0, K, bs):
            i2 = min(i1 + bs, K)
            W1 = W[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]
            for i in range(i2 - i1):
                col = i1 + i
                w = W1[:, i]
                d = Hinv1[i, i]
                if not static_groups and col % gs == 0:
                    g = col // gs
                    cols = torch.cat([W1[:, i : i + gs], W[:, i2 : col + gs]], dim=1)
                    scale[:, g : g + 1], zero[:, g : g + 1] = qparams(cols, bits, (1, cols.shape[1]), sym)
                s, z = scale[:, groups[col]], zero[:, groups[col]]
                q = torch.round(w / s).add_(z).clamp_(0, maxq)
                Q1[:, i] = q
                err1 = (w - (q - z) * s) / d  # (w - w_hat) / [Hinv]_ii
                W1[:, i:].addr_(err1, Hinv1[i, i:], alpha=-1)
                Err1[:, i] = err1
            Q[:, i1:i2] = Q1
            Losses += Err1.pow(2).sum(1) / 2  # sum (w - w_hat)^2 / [Hinv]_ii^2 / 2
            W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

    del H, Hinv
    g_idx = group_of[invperm].to(torch.int32)
    qw = AffineQuantized((Q[:, invperm] if act_order else Q).to(torch.uint8), scale, zero, g_idx, bits, (1, gs), sym)
    return qw, Losses.sum().item()


def gptq_quantize(W: torch.Tensor, stats: "HessianStats | torch.Tensor", cfg: QuantConfig) -> LayerResult:
    """ALGORITHMS['gptq']: W float [N, K]; stats: the layer's HessianStats (or H [K, K])."""
    H = stats.H if isinstance(stats, HessianStats) else stats
    if H is None or not torch.isfinite(H).all():
        from ..errors import LowbitError

        raise LowbitError("GPTQ: the layer's calibration inputs contain NaN or Inf: the model overflows on "
                          "the calibration data; use float32/bfloat16 or check the weights")
    out = gptq(W, H, cfg.bits, cfg.group_size, cfg.sym, cfg.act_order, cfg.static_groups, cfg.damp_percent,
               clip_search=cfg.clip_search)
    if out is None:
        log.warning("GPTQ: the Hessian cannot be factorized even with damping raised; rounding this layer to nearest")
        # plain RTN: clipping on the weight error alone raised perplexity (README)
        return rtn_quantize(W, None, dataclasses.replace(cfg, clip_search=False))
    return LayerResult(*out)
