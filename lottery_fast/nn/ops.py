"""The sparse-linear kernels as torch custom operators (``torch.ops.lottery_fast.*``).

Registered through ``torch.library.custom_op``, so torch.compile, fake tensors, ``torch.func`` and
``torch.library.opcheck`` see them as ordinary operators; the compiled cores stay pybind11 over raw
buffers (no libtorch): each operator's CPU implementation calls ``_core``, its CUDA implementation
(registered only when the CUDA core is built) calls ``_cuda``, and the dispatcher picks one by the
tensors' device. Every operator has a fake (meta) implementation for tracing.

The mask's compressed index travels as tensors (see :class:`~lottery_fast.nn.sparse_index.SparseIndex`
for the layout): ``row_ptr`` int64 ``[out + 1]`` and ``col_idx`` int32 ``[nnz]`` (CSR), and the
optional CSC ``col_ptr``/``row_idx`` that only the input gradient reads. Eager layers pass their
cached index; compiled graphs build it from the mask with :func:`csr_index` (whose ``nnz`` is a
data-dependent size) and the backward builds the CSC with :func:`csc_index` when it was not given.

* ``csr_index(mask) -> (row_ptr, col_idx)`` of a bool mask viewed as ``[mask.shape[0], -1]``;
* ``csc_index(row_ptr, col_idx, cols) -> (col_ptr, row_idx)``, the transpose of a CSR;
* ``masked_linear(x, weight, bias, row_ptr, col_idx, col_ptr, row_idx) -> (y, x_t, vals)``:
  ``y = x (W*M)^T + b`` for a 2-D contiguous ``x``; ``x_t`` and ``vals`` are what the backward reads
  (on the CPU the padded transpose of ``x`` and the kept weights at forward time; on CUDA the
  transpose of ``x`` and an empty ``vals``, the backward reading the weight). Differentiable once
  in ``x``, ``weight`` and ``bias`` (the weight gradient is dense, zero where pruned);
* ``masked_linear_backward(...)``, the backward of ``masked_linear`` (first order only).

:func:`sparse_linear` is the entry the layers use: eager calls on plain tensors run the same kernel
functions through a small autograd.Function (the dispatcher costs a Python operator tens of
microseconds per call, see docs/kernels.md); traced calls go through ``torch.ops.lottery_fast``. Like the kernels, the operators trust the index
(a layer's own or one of ``SparseIndex.from_mask``/:func:`csr_index`); a hand-made one goes through
``SparseIndex.validate`` first.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch.autograd.function import once_differentiable
from torch.library import custom_op, register_autograd, register_fake

from .. import _core, cuda
from .._buffers import DTYPE_CODES, cpu_ptr
from . import cuda_sparse
from .base import tracing
from .sparse_index import SparseIndex, _compressed_in_chunks, cpu_csc, cpu_csr

_Tensor = torch.Tensor
_OptTensor = Optional[torch.Tensor]


def _ptr(t: _OptTensor) -> int:
    return 0 if t is None else t.data_ptr()


def _empty_like_batch(t: _Tensor) -> _Tensor:
    """The placeholder for an output not asked for: operators cannot return None."""
    return t.new_empty(0)


# -- index -------------------------------------------------------------------------------------------------
def _index_view(mask: _Tensor) -> Tuple[int, int]:
    return mask.shape[0], math.prod(mask.shape[1:])


@custom_op("lottery_fast::csr_index", mutates_args=(), device_types="cpu")
def csr_index(mask: _Tensor) -> Tuple[_Tensor, _Tensor]:
    """``(row_ptr, col_idx)`` of a bool mask viewed as ``[mask.shape[0], -1]``, on its device."""
    rows, cols = _index_view(mask)
    return cpu_csr(mask.reshape(rows, cols).contiguous(), rows, cols)


@csr_index.register_kernel("cuda")
def _(mask: _Tensor) -> Tuple[_Tensor, _Tensor]:
    rows, cols = _index_view(mask)
    return _compressed_in_chunks(mask.reshape(rows, cols).contiguous())


@register_fake("lottery_fast::csr_index")
def _(mask: _Tensor) -> Tuple[_Tensor, _Tensor]:
    if mask.dtype != torch.bool or mask.dim() < 1:
        raise TypeError(f"csr_index: expected a bool mask of at least one dimension, got {mask.dtype} "
                        f"of shape {tuple(mask.shape)}")
    nnz = torch.library.get_ctx().new_dynamic_size()  # the mask's count: known only from its values
    return (mask.new_empty(mask.shape[0] + 1, dtype=torch.int64), mask.new_empty(nnz, dtype=torch.int32))


def _csc_index_cpu(row_ptr: _Tensor, col_idx: _Tensor, cols: int) -> Tuple[_Tensor, _Tensor]:
    """``(col_ptr, row_idx)``: the CSC of the ``[row_ptr.numel() - 1, cols]`` matrix whose CSR is given."""
    cpu_ptr(row_ptr, "row_ptr", torch.int64), cpu_ptr(col_idx, "col_idx", torch.int32)
    return cpu_csc(row_ptr, col_idx, row_ptr.numel() - 1, cols)


csc_index = custom_op("lottery_fast::csc_index", _csc_index_cpu, mutates_args=(), device_types="cpu")


@csc_index.register_kernel("cuda")
def _(row_ptr: _Tensor, col_idx: _Tensor, cols: int) -> Tuple[_Tensor, _Tensor]:
    return csc_by_sorting(row_ptr, col_idx, cols)


def csc_by_sorting(row_ptr: _Tensor, col_idx: _Tensor, cols: int) -> Tuple[_Tensor, _Tensor]:
    """The CSC of a CSR with torch's own ops (any device): a stable sort of the entries by column
    keeps each column's rows ascending."""
    rows = row_ptr.numel() - 1
    row_of = torch.repeat_interleave(torch.arange(rows, device=row_ptr.device), row_ptr.diff(),
                                     output_size=col_idx.numel())
    order = torch.sort(col_idx, stable=True).indices
    row_idx = row_of[order].to(torch.int32)
    col_ptr = torch.zeros(cols + 1, dtype=torch.int64, device=row_ptr.device)
    torch.cumsum(torch.bincount(col_idx.long(), minlength=cols), 0, out=col_ptr[1:])
    return col_ptr, row_idx


@register_fake("lottery_fast::csc_index")
def _(row_ptr: _Tensor, col_idx: _Tensor, cols: int) -> Tuple[_Tensor, _Tensor]:
    return row_ptr.new_empty(cols + 1), col_idx.new_empty(col_idx.shape[0])


# -- masked linear -----------------------------------------------------------------------------------------
#: batch columns per SIMD line of the CPU kernels, per dtype (the padded batch of a batch of one)
_BATCH_LINE = {dtype: _core.masked_linear_padded_batch(1, code) for dtype, code in DTYPE_CODES.items()}


def padded_batch(batch, dtype: torch.dtype):
    """The row stride of the CPU kernels' transposed buffers, as ``csrc/masked_linear.cpp`` pads
    it (whole lines, an odd number of them), written so that a symbolic ``batch`` traces."""
    g = _BATCH_LINE[dtype]
    lines = (batch + g - 1) // g
    return (lines + 1 - lines % 2) * g


def _degenerate(x: _Tensor, weight: _Tensor) -> bool:
    """Shapes the kernels do not take (an empty batch or a layer without inputs or outputs)."""
    return x.shape[0] == 0 or weight.shape[0] == 0 or weight.shape[1] == 0


def _masked_linear_cpu(x: _Tensor, weight: _Tensor, bias: _OptTensor, row_ptr: _Tensor, col_idx: _Tensor,
                  col_ptr: _OptTensor, row_idx: _OptTensor) -> Tuple[_Tensor, _Tensor, _Tensor]:
    """``(x (W*M)^T + b, x_t, vals)`` over the CSR of the mask (see the module docstring)."""
    batch, n_in = x.shape
    n_out = weight.shape[0]
    code = DTYPE_CODES[x.dtype]
    padded = padded_batch(batch, x.dtype)
    x_t = torch.empty((n_in, padded), dtype=x.dtype)
    vals = torch.empty(col_idx.numel(), dtype=x.dtype)
    if _degenerate(x, weight):
        y = torch.zeros((batch, n_out), dtype=x.dtype)
        if bias is not None:
            y += bias
        return y, x_t.zero_(), vals.zero_()  # (the backward of an empty product is zero too)
    y = torch.empty((batch, n_out), dtype=x.dtype)
    _core.masked_linear_forward(
        cpu_ptr(x, "input"), cpu_ptr(weight, "weight"), 0 if bias is None else cpu_ptr(bias, "bias"),
        row_ptr.data_ptr(), col_idx.data_ptr(),
        batch, n_in, n_out, padded, x_t.data_ptr(), vals.data_ptr(), y.data_ptr(), code, torch.get_num_threads())
    return y, x_t, vals


def _masked_linear_cuda(x: _Tensor, weight: _Tensor, bias: _OptTensor, row_ptr: _Tensor, col_idx: _Tensor,
      col_ptr: _OptTensor, row_idx: _OptTensor) -> Tuple[_Tensor, _Tensor, _Tensor]:
    y, x_t = cuda_sparse.linear_forward(x, weight, bias, row_ptr, col_idx)
    return y, x_t, _empty_like_batch(x)


masked_linear = custom_op("lottery_fast::masked_linear", _masked_linear_cpu, mutates_args=(), device_types="cpu")


@register_fake("lottery_fast::masked_linear")
def _(x: _Tensor, weight: _Tensor, bias: _OptTensor, row_ptr: _Tensor, col_idx: _Tensor,
      col_ptr: _OptTensor, row_idx: _OptTensor) -> Tuple[_Tensor, _Tensor, _Tensor]:
    _check_linear(x, weight, bias)
    batch, n_in = x.shape
    y = x.new_empty((batch, weight.shape[0]))
    if x.device.type == "cuda":
        return y, x.new_empty((n_in, batch)), x.new_empty(0)
    return y, x.new_empty((n_in, padded_batch(batch, x.dtype))), x.new_empty(col_idx.shape[0])


def _check_linear(x: _Tensor, weight: _Tensor, bias: _OptTensor) -> None:
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"masked_linear: expected x [batch, in] and weight [out, in], got {tuple(x.shape)} "
                         f"and {tuple(weight.shape)}")
    if x.dtype not in DTYPE_CODES or weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        raise TypeError(f"masked_linear: x, weight and bias must share one dtype, float32 or float64; got "
                        f"{x.dtype}, {weight.dtype}, {None if bias is None else bias.dtype}")


def _masked_linear_backward_cpu(grad_y: _Tensor, x_t: _OptTensor, vals: _OptTensor, weight: _OptTensor,
                           row_ptr: _Tensor, col_idx: _Tensor, col_ptr: _OptTensor, row_idx: _OptTensor,
                           in_features: int, need_x: bool, need_w: bool, need_b: bool
                           ) -> Tuple[_Tensor, _Tensor, _Tensor]:
    """``(grad_x, grad_w, grad_b)`` of :func:`masked_linear`; those not asked for are empty.

    ``x_t`` is needed for ``grad_w``; ``vals`` (CPU) or ``weight`` (CUDA) and the CSC for ``grad_x``.
    """
    batch, n_out = grad_y.shape
    n_in, dtype = in_features, grad_y.dtype
    grad_x = torch.empty((batch, n_in), dtype=dtype) if need_x else _empty_like_batch(grad_y)
    grad_w = torch.empty((n_out, n_in), dtype=dtype) if need_w else _empty_like_batch(grad_y)
    grad_b = torch.empty(n_out, dtype=dtype) if need_b else _empty_like_batch(grad_y)
    if not (need_x or need_w or need_b):
        return grad_x, grad_w, grad_b
    if batch == 0 or n_in == 0 or n_out == 0:
        for g in (grad_x, grad_w, grad_b):
            g.zero_()
        return grad_x, grad_w, grad_b
    if need_x and (vals is None or col_ptr is None or row_idx is None):
        raise ValueError("masked_linear_backward: grad_x needs vals and the CSC (col_ptr, row_idx)")
    if need_w and x_t is None:
        raise ValueError("masked_linear_backward: grad_w needs x_t")
    grad_y = grad_y.contiguous()
    _core.masked_linear_backward(
        cpu_ptr(grad_y, "grad_output"), _ptr(x_t) if need_w else 0, _ptr(vals) if need_x else 0,
        row_ptr.data_ptr(), col_idx.data_ptr(),
        # the CSC only for grad_x: a first layer's index never builds one
        _ptr(col_ptr) if need_x else 0, _ptr(row_idx) if need_x else 0,
        batch, n_in, n_out, padded_batch(batch, dtype),
        grad_x.data_ptr() if need_x else 0, grad_w.data_ptr() if need_w else 0,
        DTYPE_CODES[dtype], torch.get_num_threads(), grad_b.data_ptr() if need_b else 0)
    return grad_x, grad_w, grad_b


def _masked_linear_backward_cuda(grad_y: _Tensor, x_t: _OptTensor, vals: _OptTensor, weight: _OptTensor, row_ptr: _Tensor,
      col_idx: _Tensor, col_ptr: _OptTensor, row_idx: _OptTensor, in_features: int, need_x: bool,
      need_w: bool, need_b: bool) -> Tuple[_Tensor, _Tensor, _Tensor]:
    grads = cuda_sparse.linear_backward(grad_y, x_t, weight, row_ptr, col_idx, col_ptr, row_idx, in_features,
                                        need_x, need_w, need_b)
    return tuple(_empty_like_batch(grad_y) if g is None else g for g in grads)  # type: ignore[return-value]


masked_linear_backward = custom_op("lottery_fast::masked_linear_backward", _masked_linear_backward_cpu,
                                   mutates_args=(), device_types="cpu")


@register_fake("lottery_fast::masked_linear_backward")
def _(grad_y: _Tensor, x_t: _OptTensor, vals: _OptTensor, weight: _OptTensor, row_ptr: _Tensor,
      col_idx: _Tensor, col_ptr: _OptTensor, row_idx: _OptTensor, in_features: int, need_x: bool,
      need_w: bool, need_b: bool) -> Tuple[_Tensor, _Tensor, _Tensor]:
    batch, n_out = grad_y.shape
    return (grad_y.new_empty((batch, in_features)) if need_x else grad_y.new_empty(0),
            grad_y.new_empty((n_out, in_features)) if need_w else grad_y.new_empty(0),
            grad_y.new_empty(n_out) if need_b else grad_y.new_empty(0))


def _save(ctx, x: _Tensor, weight: _Tensor, row_ptr: _Tensor, col_idx: _Tensor, col_ptr: _OptTensor,
          row_idx: _OptTensor, has_bias: bool, x_t: _Tensor, vals: _Tensor) -> None:
    need_x, need_w = ctx.needs_input_grad[:2]
    on_cuda = x.device.type == "cuda"
    # The CPU backward reads x (as x_t) and the kept weights of this forward (as vals), so an
    # optimizer may change the weight in place before backward; the CUDA backward reads the weight.
    ctx.save_for_backward(x_t if need_w else None, vals if need_x and not on_cuda else None,
                          weight if need_x and on_cuda else None, row_ptr, col_idx, col_ptr, row_idx)
    ctx.in_features = x.shape[1]
    ctx.has_bias = has_bias


def _linear_setup_context(ctx, inputs, output) -> None:
    x, weight, bias, row_ptr, col_idx, col_ptr, row_idx = inputs
    _, x_t, vals = output
    _save(ctx, x, weight, row_ptr, col_idx, col_ptr, row_idx, bias is not None, x_t, vals)
    ctx.mark_non_differentiable(x_t, vals)


def _grads(ctx, grad_y: _Tensor, csc, backward) -> tuple:
    """The gradients for the 7 inputs of ``masked_linear``, by the ``csc`` and ``backward`` given
    (the operators when traced, their kernels directly in the eager fast path)."""
    x_t, vals, weight, row_ptr, col_idx, col_ptr, row_idx = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    need_b = bool(need_b and ctx.has_bias)
    if not (need_x or need_w or need_b):
        return None, None, None, None, None, None, None
    if need_x and col_ptr is None:
        col_ptr, row_idx = csc(row_ptr, col_idx, ctx.in_features)
    gx, gw, gb = backward(grad_y, x_t, vals, weight, row_ptr, col_idx, col_ptr, row_idx, ctx.in_features,
                          need_x, need_w, need_b)
    return (gx if need_x else None, gw if need_w else None, gb if need_b else None, None, None, None, None)


def _linear_backward(ctx, grad_y, _grad_x_t, _grad_vals):
    return _grads(ctx, grad_y, torch.ops.lottery_fast.csc_index.default,
                  torch.ops.lottery_fast.masked_linear_backward.default)


register_autograd("lottery_fast::masked_linear", _linear_backward, setup_context=_linear_setup_context)

#: the kernels by device, for the eager fast path (the same functions the operators dispatch to)
_EAGER = {"cpu": (_masked_linear_cpu, _masked_linear_backward_cpu, _csc_index_cpu)}

if cuda.built():  # without the CUDA core, CUDA tensors find no kernel (the layers run torch's ops)
    masked_linear.register_kernel("cuda")(_masked_linear_cuda)
    masked_linear_backward.register_kernel("cuda")(_masked_linear_backward_cuda)
    _EAGER["cuda"] = (_masked_linear_cuda, _masked_linear_backward_cuda, csc_by_sorting)

_MASKED_LINEAR = torch.ops.lottery_fast.masked_linear.default


class _EagerMaskedLinear(torch.autograd.Function):
    """``lottery_fast::masked_linear`` minus the dispatcher, for eager calls: the same kernels,
    the same saved tensors and gradients, about 90 us less per training step (docs/kernels.md)."""

    @staticmethod
    def forward(ctx, x, weight, bias, row_ptr, col_idx, col_ptr, row_idx):  # type: ignore[override]
        kernels = _EAGER[x.device.type]
        ctx.kernels = kernels
        y, x_t, vals = kernels[0](x, weight, bias, row_ptr, col_idx, col_ptr, row_idx)
        _save(ctx, x, weight, row_ptr, col_idx, col_ptr, row_idx, bias is not None, x_t, vals)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):  # type: ignore[override]
        _, backward, csc = ctx.kernels
        return _grads(ctx, grad_y, csc, backward)


def _plain_eager(t: _Tensor) -> bool:
    """Whether nothing is tracing or intercepting ``t``'s ops (no torch.compile, no fake or
    functional tensor, no dispatch mode such as make_fx): only then may the kernels run directly."""
    return type(t) is torch.Tensor and not tracing() and not torch._C._len_torch_dispatch_stack()


def sparse_index_linear(x2d: _Tensor, weight: _Tensor, bias: _OptTensor, index: SparseIndex) -> _Tensor:
    """:func:`sparse_linear` over a cached :class:`SparseIndex`, whose CSC goes in only when an
    input gradient will be asked for (a first layer's index never builds one)."""
    if x2d.requires_grad and torch.is_grad_enabled():
        return sparse_linear(x2d, weight, bias, index.row_ptr, index.col_idx, index.col_ptr, index.row_idx)
    return sparse_linear(x2d, weight, bias, index.row_ptr, index.col_idx)


def sparse_linear(x2d: _Tensor, weight: _Tensor, bias: _OptTensor, row_ptr: _Tensor, col_idx: _Tensor,
                  col_ptr: _OptTensor = None, row_idx: _OptTensor = None) -> _Tensor:
    """``x2d (W*M)^T + b`` by ``lottery_fast::masked_linear`` (contiguous tensors of one dtype on one
    device, the index there too); returns ``y`` alone. Eager calls on a device with kernels skip
    the dispatcher (same kernels); traced ones (torch.compile, fake tensors) and other devices
    go through the operator."""
    kernels = _EAGER.get(x2d.device.type)
    if kernels is None or not _plain_eager(x2d):
        return _MASKED_LINEAR(x2d, weight, bias, row_ptr, col_idx, col_ptr, row_idx)[0]
    if torch.is_grad_enabled() and (x2d.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return _EagerMaskedLinear.apply(x2d, weight, bias, row_ptr, col_idx, col_ptr, row_idx)
    return kernels[0](x2d, weight, bias, row_ptr, col_idx, col_ptr, row_idx)[0]
