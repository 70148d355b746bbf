"""AWQ (Lin et al. 2023, "AWQ: Activation-aware Weight Quantization for LLM Compression and
Acceleration"), with the paper's names.

Weights that meet large activations matter most. For the layers of a group that read the
same input x [K] (produced by ``prev``: a norm, or a Linear) and any s [K] > 0,

    W x = (W diag(s)) (diag(s)^-1 x),

so W is quantized as Q(W diag(s)) and 1/s is folded into ``prev`` (a norm's weight, or the
rows of the previous Linear): the float model is unchanged (``fold_scale``). The paper's
scale is s = s_x^alpha, with s_x the mean |x| per input channel and alpha in [0, 1) chosen
on a grid of ``n_grid`` points to minimize the group's output error (``search_scale``; it
also tries AutoAWQ's s_x^alpha / s_w^(1-alpha) and keeps the better); alpha = 0 is
round-to-nearest, so the search never does worse on its objective. Then each
layer's group ranges are clipped, the shrink factor searched per output row and group to
minimize that group's output error (``clip_range``). Zero point (asymmetric) by default.

Output errors are measured with the second moment of the inputs Sigma = X^T X / n over
every calibration token (``HessianStats.H / 2``): for a weight error D [N, K] the mean
squared output error is tr(D Sigma D^T) / N. That is exact (no token subsampling) and costs
N K^2 per candidate instead of tokens x N x K.
"""
from __future__ import annotations

import logging
import math

import torch
from torch import nn

from ..config import QuantConfig
from ..formats import group_block, quantize_affine
from .gptq import HessianStats
from .result import LayerResult

log = logging.getLogger(__name__)

N_GRID = 20
MAX_SHRINK = 0.5


def fake_quant(W: torch.Tensor, bits: int, group_size: int, sym: bool) -> torch.Tensor:
    """Round-to-nearest W [N, K] -> dequantized float32 [N, K]."""
    return quantize_affine(W, bits, group_block(W.shape[1], group_size), sym).dequantize()


def output_error(D: torch.Tensor, Sigma: torch.Tensor) -> float:
    """Mean squared output error tr(D Sigma D^T) / N of a weight error D [N, K]."""
    return ((D @ Sigma) * D).sum().item() / D.shape[0]


def weight_magnitude(W: torch.Tensor, group_size: int) -> torch.Tensor:
    """Mean over rows of |w| relative to its group's max |w|: [K] (AutoAWQ's w_mean)."""
    N, K = W.shape
    gs = group_block(K, group_size)[1]
    G = math.ceil(K / gs)
    A = torch.nn.functional.pad(W.abs(), (0, G * gs - K)).view(N, G, gs)
    return (A / (A.amax(-1, keepdim=True) + 1e-6)).view(N, -1)[:, :K].mean(0)


def search_scale(
    W: torch.Tensor, x_mean: torch.Tensor, Sigma: torch.Tensor, bits: int, group_size: int, sym: bool,
    n_grid: int = N_GRID,
) -> tuple[torch.Tensor, float, bool, list[float]]:
    """The best scale for a group. W: float32 [N, K], the group's weights stacked along N;
    x_mean: mean |x| [K]; Sigma: float32 [K, K]. Candidates: the paper's s = s_x^alpha and
    AutoAWQ's "duo" s = s_x^alpha / s_w^(1 - alpha) (s_w: ``weight_magnitude``), alpha on the
    grid. Returns (s [K], alpha, duo, losses: n_grid paper ones then n_grid duo ones)."""
    W = W.float()
    x_mean = x_mean.float()
    w_mean = weight_magnitude(W, group_size)
    losses = []
    best = (math.inf, torch.ones_like(x_mean), 0.0, False)
    for duo in (False, True):
        for i in range(n_grid):
            alpha = i / n_grid
            s = x_mean.pow(alpha) / (w_mean.pow(1 - alpha) + 1e-4) if duo else x_mean.pow(alpha)
            s = s.clamp(min=1e-4)
            s = s / (s.max() * s.min()).sqrt()  # centre the scales around 1 (AutoAWQ does the same)
            D = fake_quant(W * s, bits, group_size, sym) / s - W
            loss = output_error(D, Sigma)
            losses.append(loss)
            if loss < best[0]:
                best = (loss, s, alpha, duo)
    return best[1], best[2], best[3], losses


@torch.no_grad()
def fold_scale(prev: nn.Module, layers: list[nn.Linear], s: torch.Tensor, norm_offset: float = 0.0) -> None:
    """Divide prev's output channels by s [K] and multiply the layers' input columns by s.

    prev: an nn.Linear (its rows and bias are scaled) or a norm with ``weight`` [K] (and
    ``bias``); norm_offset: 1.0 for norms that compute x * (1 + weight) (Gemma)."""
    if isinstance(prev, nn.Linear):
        prev.weight.div_(s.view(-1, 1).to(prev.weight))
    else:
        w = prev.weight
        w.copy_(((w.float() + norm_offset) / s.to(w.device) - norm_offset).to(w.dtype))
    if getattr(prev, "bias", None) is not None:
        prev.bias.div_(s.to(prev.bias))
    for layer in layers:
        layer.weight.mul_(s.view(1, -1).to(layer.weight))


def can_fold(prev: nn.Module, k: int) -> bool:
    """Whether 1/s [k] can be folded into prev's output (shapes match, e.g. not v_proj ->
    o_proj under grouped-query attention, where o_proj reads more channels than v_proj writes)."""
    if isinstance(prev, nn.Linear):
        return prev.out_features == k
    w = getattr(prev, "weight", None)
    return isinstance(w, torch.Tensor) and w.dim() == 1 and w.numel() == k


def rescale_stats(stats: HessianStats, s: torch.Tensor) -> None:
    """The statistics of x / s [.., K] from those of x (after ``fold_scale``)."""
    s = s.to(stats.XtX)
    stats.XtX /= s.view(-1, 1) * s.view(1, -1)
    stats.abs_sum /= s


def clip_range(W: torch.Tensor, Sigma: torch.Tensor, bits: int, group_size: int, sym: bool,
               n_grid: int = N_GRID, max_shrink: float = MAX_SHRINK) -> torch.Tensor:
    """W [N, K] with each (row, group) range shrunk by the factor in {1, 1 - 1/n_grid, ...,
    1 - max_shrink} that minimizes the group's output error d_g Sigma_gg d_g^T (Sigma's
    diagonal block of the group)."""
    W = W.float()
    N, K = W.shape
    gs = group_block(K, group_size)[1]
    G = math.ceil(K / gs)
    pad = G * gs - K
    Sig = torch.nn.functional.pad(Sigma.float(), (0, pad, 0, pad))
    idx = torch.arange(G, device=W.device)
    Sigma_gg = Sig.view(G, gs, G, gs)[idx, :, idx, :]  # [G, gs, gs]
    lo = torch.nn.functional.pad(W, (0, pad), value=math.inf).view(N, G, gs).amin(-1)  # [N, G]
    hi = torch.nn.functional.pad(W, (0, pad), value=-math.inf).view(N, G, gs).amax(-1)
    if sym:
        hi = torch.maximum(lo.abs(), hi.abs())
        lo = -hi
    best_err = torch.full((N, G), math.inf, device=W.device)
    best_f = torch.ones(N, G, device=W.device)
    g_of = torch.arange(K, device=W.device) // gs
    for i in range(int(max_shrink * n_grid)):
        f = 1 - i / n_grid
        Wc = torch.clamp(W, (lo * f)[:, g_of], (hi * f)[:, g_of])
        D = torch.nn.functional.pad(fake_quant(Wc, bits, group_size, sym) - W, (0, pad))
        Dg = D.view(N, G, gs).transpose(0, 1)  # [G, N, gs]
        err = (torch.bmm(Dg, Sigma_gg) * Dg).sum(-1).t()  # [N, G]
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_f = torch.where(better, torch.full_like(best_f, f), best_f)
    return torch.clamp(W, (lo * best_f)[:, g_of], (hi * best_f)[:, g_of])


def awq_quantize(W: torch.Tensor, stats: HessianStats | None, cfg: QuantConfig, clip: bool = True) -> LayerResult:
    """ALGORITHMS['awq']: the layer's weight W [N, K] with its AWQ scale already folded in;
    stats: the statistics of its (scaled) inputs, for the clipping search and the loss (the
    mean squared output error on the calibration inputs; without stats, the weight MSE).
    clip=False skips clipping (AWQ leaves q/k projections unclipped: their errors pass
    through the softmax)."""
    Wc = W.float()
    Sigma = None if stats is None else stats.H.to(Wc.device) / 2
    if Sigma is not None and clip:
        Wc = clip_range(Wc, Sigma, cfg.bits, cfg.group_size, cfg.sym)
    qw = quantize_affine(Wc, cfg.bits, group_block(W.shape[1], cfg.group_size), sym=cfg.sym)
    D = qw.dequantize() - W.float()
    loss = output_error(D, Sigma) if Sigma is not None else D.pow(2).mean().item()
    return LayerResult(qw, loss)
