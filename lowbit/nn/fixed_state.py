"""A module whose quantization-state buffers keep their stored dtype under dtype casts."""
from __future__ import annotations

from torch import nn


class FixedStateDtype(nn.Module):
    """``model.half()`` / ``.to(bfloat16)`` cast every float buffer; the buffers named in
    ``STATE_BUFFERS`` (scales stored in float32) must stay as stored, so dtype casts leave them
    alone and only device moves apply to them."""

    STATE_BUFFERS: tuple[str, ...] = ()

    def _apply(self, fn, recurse=True):
        saved = {n: self._buffers[n] for n in self.STATE_BUFFERS if self._buffers.get(n) is not None}
        super()._apply(fn, recurse)
        for name, old in saved.items():
            new = self._buffers[name]
            if new.dtype != old.dtype:
                self._buffers[name] = old.to(new.device)
        return self
