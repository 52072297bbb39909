"""Sparse-path autograd functions on the GPU: the CUDA core over the mask's compressed index.

The CPU twins live in linear.py and conv.py; these take the same arguments (a checked,
contiguous input, the weight, the bias, the :class:`SparseIndex` of the mask, built on the mask's
device) and give the same results within float tolerance. Every kernel runs on torch's current
stream of the tensors' device. The weight gradient is a dense tensor, zero at pruned positions
and computed at kept positions only; one backward pass (no double backward).

Like their CPU twins they trust the index (a layer's own, or one of ``SparseIndex.from_mask``) and
check nothing on the hot path: a hand-made index goes through ``nn.conv.sparse_conv2d`` or
``SparseIndex.validate`` first.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from .. import cuda
from .._buffers import DTYPE_CODES
from .sparse_index import SparseIndex


def _ptr(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


class CudaSparseLinearFn(torch.autograd.Function):
    """``x2d (W*M)^T + b``; x2d [B, in] and weight [out, in] contiguous on one CUDA device."""

    @staticmethod
    def forward(ctx, x2d: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                index: SparseIndex) -> torch.Tensor:
        core = cuda.core()
        batch, n_in = x2d.shape
        n_out = weight.shape[0]
        with cuda.on_device(x2d.device):
            # The kernels read the batch along a row (coalesced): x as [in, batch].
            x_t = x2d.t().contiguous()
            y = torch.empty((batch, n_out), dtype=x2d.dtype, device=x2d.device)
            row_ptr, col_idx = index.csr_pointers
            core.compressed_rows_matmul(row_ptr, col_idx, weight.data_ptr(), n_in, 1, x_t.data_ptr(), batch,
                                        _ptr(bias), y.data_ptr(), n_out, 1, n_out, DTYPE_CODES[x2d.dtype],
                                        cuda.stream_of(x2d.device))
        need_x, need_w = ctx.needs_input_grad[:2]
        ctx.save_for_backward(x_t if need_w else None, weight if need_x else None)
        ctx.index, ctx.has_bias = index, bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: torch.Tensor):
        core = cuda.core()
        x_t, weight = ctx.saved_tensors
        index: SparseIndex = ctx.index
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        n_out, n_in = index.rows, index.cols
        with cuda.on_device(grad_y.device):
            code, stream = DTYPE_CODES[grad_y.dtype], cuda.stream_of(grad_y.device)
            gy_t = grad_y.t().contiguous()  # [out, batch]
            batch = gy_t.shape[1]
            if need_x:  # grad_x = grad_y (W*M): the CSC index walks each input column's kept rows
                grad_x = torch.empty((batch, n_in), dtype=grad_y.dtype, device=grad_y.device)
                col_ptr, row_idx = index.pointers[2:]
                core.compressed_rows_matmul(col_ptr, row_idx, weight.data_ptr(), 1, n_in, gy_t.data_ptr(), batch, 0,
                                            grad_x.data_ptr(), n_in, 1, n_in, code, stream)
            if need_b and ctx.has_bias:
                grad_b = torch.empty(n_out, dtype=grad_y.dtype, device=grad_y.device)
            if need_w:
                # the kernel writes every entry (kept ones and zeros), and the bias gradient
                grad_w = torch.empty((n_out, n_in), dtype=grad_y.dtype, device=grad_y.device)
                core.sampled_matmul(index.pointers[0], index.pointers[1], n_out, n_in,
                                    gy_t.data_ptr(), x_t.data_ptr(), batch, grad_w.data_ptr(), _ptr(grad_b),
                                    code, stream)
            elif grad_b is not None:
                torch.sum(gy_t, 1, out=grad_b)
        return grad_x, grad_w, grad_b, None


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
