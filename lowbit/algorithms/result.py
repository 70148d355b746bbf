from __future__ import annotations

from dataclasses import dataclass

from ..formats import AffineQuantized


@dataclass
class LayerResult:
    """What an algorithm returns for one Linear layer.

    weight: the quantized weight (codes [N, K], scale/zero [N, G], g_idx [K]).
    loss: the quantity the algorithm minimizes, for the report (RTN: mean squared weight
    error; GPTQ: the layer's output error on the calibration inputs).
    """

    weight: AffineQuantized
    loss: float
