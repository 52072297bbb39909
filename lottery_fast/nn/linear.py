"""MaskedLinear: a drop-in nn.Linear whose pruned weights stay at zero and cost nothing.

Dense path for now (masked weight through torch's GEMM); the sparse path over the compiled core
is added by the masked-linear kernel work and chosen automatically by density.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import MaskedMixin


class MaskedLinear(MaskedMixin, nn.Linear):
    """``nn.Linear`` with a bool ``mask`` buffer; ``state_dict`` is that of ``nn.Linear``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_mask()

    @classmethod
    def from_dense(cls, layer: nn.Linear) -> "MaskedLinear":
        """A masked twin of ``layer`` sharing nothing with it (weights copied, mask all ones)."""
        out = cls(layer.in_features, layer.out_features, bias=layer.bias is not None,
                  device=layer.weight.device, dtype=layer.weight.dtype)
        out.load_state_dict(layer.state_dict())
        return out

    def to_dense(self) -> nn.Linear:
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        out.load_state_dict(self.state_dict())
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._refresh_pruned_weights()
        return F.linear(x, self.weight * self.mask, self.bias)
