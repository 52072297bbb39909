"""MaskedConv2d: a drop-in nn.Conv2d whose pruned weights stay at zero.

Dense path for now; the sparse path over the compiled core is added by the masked-conv work.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import MaskedMixin


class MaskedConv2d(MaskedMixin, nn.Conv2d):
    """``nn.Conv2d`` with a bool ``mask`` buffer; ``state_dict`` is that of ``nn.Conv2d``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_mask()

    @classmethod
    def from_dense(cls, layer: nn.Conv2d) -> "MaskedConv2d":
        out = cls(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                  padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                  bias=layer.bias is not None, padding_mode=layer.padding_mode,
                  device=layer.weight.device, dtype=layer.weight.dtype)
        out.load_state_dict(layer.state_dict())
        return out

    def to_dense(self) -> nn.Conv2d:
        out = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, stride=self.stride,
                        padding=self.padding, dilation=self.dilation, groups=self.groups,
                        bias=self.bias is not None, padding_mode=self.padding_mode,
                        device=self.weight.device, dtype=self.weight.dtype)
        out.load_state_dict(self.state_dict())
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._refresh_pruned_weights()
        return self._conv_forward(x, self.weight * self.mask, self.bias)
