"""Turn torch tensors into the raw buffers the compiled core takes (pointer, dtype code).

The core never sees a torch object: every wrapper checks device, dtype and layout here and
passes ``tensor.data_ptr()``. Inputs the kernels cannot take raise ``ValueError``/``TypeError``
naming the argument; callers decide whether to make a contiguous copy first (documented per op).
"""
from __future__ import annotations

import torch

#: dtype codes shared with csrc/common.h (lf::DType)
DTYPE_CODES = {torch.float32: 0, torch.float64: 1}


def dtype_code(t: torch.Tensor, name: str = "tensor") -> int:
    try:
        return DTYPE_CODES[t.dtype]
    except KeyError:
        raise TypeError(f"{name}: dtype {t.dtype} is not supported (float32 or float64)") from None


def cpu_ptr(t: torch.Tensor, name: str, dtype: torch.dtype | None = None) -> int:
    """Data pointer of a contiguous CPU tensor, after checking what the kernel relies on."""
    if t.device.type != "cpu":
        raise ValueError(f"{name}: expected a CPU tensor, got device {t.device}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {t.dtype}")
    if not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor (call .contiguous() first)")
    return t.data_ptr()


def kernels_accept(x: torch.Tensor, weight: torch.Tensor, bias: "torch.Tensor | None") -> bool:
    """Whether a compiled core of ``x``'s device could take these tensors: float32/float64
    throughout, all on ``x``'s device, not empty, and no autocast on that device to honour."""
    dtype, device = x.dtype, x.device
    return (
        dtype in DTYPE_CODES
        and weight.device == device
        and weight.dtype == dtype
        and (bias is None or (bias.device == device and bias.dtype == dtype))
        and x.numel() > 0
        and not torch.is_autocast_enabled(device.type)
    )


def core_supported(x: torch.Tensor, weight: torch.Tensor, bias: "torch.Tensor | None") -> bool:
    """Whether the compiled CPU kernels can take these tensors (layers run torch's own ops otherwise)."""
    return x.device.type == "cpu" and kernels_accept(x, weight, bias)
