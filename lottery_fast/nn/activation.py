"""``tanh`` on the compiled core's vector tanh (csrc/activation.cpp), a drop-in for ``torch.tanh``.

torch's CPU tanh (2.13 on x86-64) runs about 10x slower than its sigmoid, and the tanh MLPs of
the RL agents spend a fifth of their training time in it. :func:`tanh` computes the forward with
glibc's vector tanh (1-2 ulp from float64, tested) and the backward with torch's own
``tanh_backward`` (``grad * (1 - y**2)``, the formula autograd uses for ``torch.tanh``). Inputs the
core does not take (another device or dtype, autocast, torch.compile tracing) go to ``torch.tanh``.
Each element's result depends only on its value, not on its place in the tensor.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import _core
from .._buffers import DTYPE_CODES


def _core_tanh(x: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    _core.tanh(x.data_ptr(), y.data_ptr(), x.numel(), DTYPE_CODES[x.dtype])
    return y


class _Tanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = _core_tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


def _takes(x: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype in DTYPE_CODES and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling())


def tanh(x: torch.Tensor) -> torch.Tensor:
    """``torch.tanh(x)``, on the compiled core for CPU float32/float64 tensors."""
    if not _takes(x):
        return torch.tanh(x)
    if x.requires_grad and torch.is_grad_enabled():
        return _Tanh.apply(x)
    return _core_tanh(x)


class Tanh(nn.Module):
    """``nn.Tanh`` on :func:`tanh`; no parameters or buffers, so state dicts are unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tanh(x)
