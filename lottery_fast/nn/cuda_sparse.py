"""The sparse paths on the GPU: the CUDA core over the mask's compressed index.

The linear kernels are the CUDA implementations of the ``lottery_fast::masked_linear`` operators
(``nn/ops.py``); the convolution's autograd function is the CUDA twin of conv.py's. They take
checked, contiguous tensors and the mask's index on the tensors' device, and give the CPU
kernels' results within float tolerance. Every kernel runs on torch's current
stream of the tensors' device. The weight gradient is a dense tensor, zero at pruned positions
and computed at kept positions only; one backward pass (no double backward).

Like their CPU twins they trust the index (a layer's own, or one of ``SparseIndex.from_mask``) and
check nothing on the hot path: a hand-made index goes through ``nn.conv.sparse_conv2d`` or
``SparseIndex.validate`` first.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch.autograd.function import once_differentiable

from .. import cuda
from .._buffers import DTYPE_CODES
from .sparse_index import SparseIndex


def _ptr(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def linear_forward(x2d: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], row_ptr: torch.Tensor,
                   col_idx: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(x2d (W*M)^T + b, x2d^T)``; x2d [B, in] and weight [out, in] contiguous on one CUDA device,
    the CSR of the mask there too. The transpose is what the weight gradient reads."""
    core = cuda.core()
    batch, n_in = x2d.shape
    n_out = weight.shape[0]
    with cuda.on_device(x2d.device):
        # The kernels read the batch along a row (coalesced): x as [in, batch].
        x_t = x2d.t().contiguous()
        y = torch.empty((batch, n_out), dtype=x2d.dtype, device=x2d.device)
        if batch and n_in and n_out:
            core.compressed_rows_matmul(row_ptr.data_ptr(), col_idx.data_ptr(), weight.data_ptr(), n_in, 1,
                                        x_t.data_ptr(), batch, _ptr(bias), y.data_ptr(), n_out, 1, n_out,
                                        DTYPE_CODES[x2d.dtype], cuda.stream_of(x2d.device))
        else:
            y.zero_()
            if bias is not None:
                y += bias
    return y, x_t


def linear_backward(grad_y: torch.Tensor, x_t: Optional[torch.Tensor], weight: Optional[torch.Tensor],
                    row_ptr: torch.Tensor, col_idx: torch.Tensor, col_ptr: Optional[torch.Tensor],
                    row_idx: Optional[torch.Tensor], n_in: int, need_x: bool, need_w: bool, need_b: bool
                    ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """``(grad_x, grad_w, grad_b)`` of :func:`linear_forward` (None where not asked for): ``x_t``
    for grad_w, ``weight`` and the CSC for grad_x."""
    core = cuda.core()
    grad_x = grad_w = grad_b = None
    n_out = row_ptr.numel() - 1
    with cuda.on_device(grad_y.device):
        code, stream = DTYPE_CODES[grad_y.dtype], cuda.stream_of(grad_y.device)
        gy_t = grad_y.t().contiguous()  # [out, batch]
        batch = gy_t.shape[1]
        empty = batch == 0 or n_in == 0 or n_out == 0
        if need_x:  # grad_x = grad_y (W*M): the CSC index walks each input column's kept rows
            grad_x = torch.empty((batch, n_in), dtype=grad_y.dtype, device=grad_y.device)
            if empty:
                grad_x.zero_()
            else:
                core.compressed_rows_matmul(_ptr(col_ptr), _ptr(row_idx), _ptr(weight), 1, n_in, gy_t.data_ptr(),
                                            batch, 0, grad_x.data_ptr(), n_in, 1, n_in, code, stream)
        if need_b:
            grad_b = torch.empty(n_out, dtype=grad_y.dtype, device=grad_y.device)
        if need_w:
            # the kernel writes every entry (kept ones and zeros), and the bias gradient
            grad_w = torch.empty((n_out, n_in), dtype=grad_y.dtype, device=grad_y.device)
            if empty:
                grad_w.zero_()
                if grad_b is not None:
                    torch.sum(gy_t, 1, out=grad_b)
            else:
                core.sampled_matmul(row_ptr.data_ptr(), col_idx.data_ptr(), n_out, n_in, gy_t.data_ptr(),
                                    _ptr(x_t), batch, grad_w.data_ptr(), _ptr(grad_b), code, stream)
        elif grad_b is not None:
            torch.sum(gy_t, 1, out=grad_b)
    return grad_x, grad_w, grad_b


def conv_geometry(ints) -> object:
    """The CUDA core's ConvGeometry from conv.py's checked geometry integers."""
    return cuda.core().ConvGeometry(*ints)


class CudaSparseConv2dFn(torch.autograd.Function):
    """conv2d (groups=1, NCHW contiguous) over the kept weights of ``index``."""

    @staticmethod
    def forward(ctx, x, weight, bias, index: SparseIndex, geom):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.index, ctx.geom, ctx.has_bias = index, geom, bias is not None
        return cuda_conv_forward(x, weight, bias, index, geom)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        core = cuda.core()
        x, weight = ctx.saved_tensors
        index: SparseIndex = ctx.index
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gx = gw = gb = None
        with cuda.on_device(x.device):
            grad_out = grad_out.contiguous()
            code, stream = DTYPE_CODES[x.dtype], cuda.stream_of(x.device)
            if need_x:
                gx = torch.empty_like(x)
                core.conv2d_grad_input(ctx.geom, grad_out.data_ptr(), weight.data_ptr(), gx.data_ptr(),
                                       index.col_ptr.data_ptr(), index.row_idx.data_ptr(), code, stream)
            if need_w:
                gw = torch.zeros_like(weight)
                core.conv2d_grad_weight(ctx.geom, grad_out.data_ptr(), x.data_ptr(), gw.data_ptr(),
                                        index.row_ptr.data_ptr(), index.col_idx.data_ptr(), index.nnz, code, stream)
            if need_b and ctx.has_bias:
                gb = grad_out.sum((0, 2, 3))
        return gx, gw, gb, None, None


def cuda_conv_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], index: SparseIndex,
                      geom) -> torch.Tensor:
    """The forward kernel call on checked, contiguous tensors of one dtype on one CUDA device."""
    with cuda.on_device(x.device):
        out = x.new_empty((geom.n, geom.o, geom.oh, geom.ow))
        cuda.core().conv2d_forward(geom, x.data_ptr(), weight.data_ptr(), _ptr(bias), out.data_ptr(),
                                   index.row_ptr.data_ptr(), index.col_idx.data_ptr(), DTYPE_CODES[x.dtype],
                                   cuda.stream_of(x.device))
    return out
