"""MaskedConv2d: a drop-in nn.Conv2d whose pruned weights stay at zero and, when sparse, cost nothing.

Two forward paths compute the same function:

* **dense**: torch's convolution with ``weight * mask`` (oneDNN; best at low sparsity);
* **sparse**: the compiled direct convolution over the mask's compressed index
  (``csrc/masked_conv.cpp``), whose work is proportional to the number of kept weights.

``path="auto"`` (default) takes the sparse path when the mask's sparsity is at least the layer's
``sparse_threshold`` (default :data:`DEFAULT_SPARSE_THRESHOLD`, i.e. density 0.4). The sparse path needs ``groups == 1``, ``padding_mode == "zeros"``, CPU
tensors and float32/float64 input of the weight's dtype; anything else runs the dense path, even
with ``path="sparse"`` (so a model can move to a GPU or change dtype without code changes).
On CUDA tensors ``path="sparse"`` runs the CUDA core's kernels (when built); ``"auto"`` keeps
CUDA layers dense, since cuDNN was faster at every measured sparsity (bench/bench_cuda.py).
Non-contiguous input is copied to a contiguous tensor first. Gradients: the sparse path gives
exactly zero gradient at pruned weights, as the dense path's ``weight * mask`` does; it supports
one backward pass (no ``create_graph`` double backward). The kernels use
``torch.get_num_threads()`` threads and give the same result for any thread count.
"""
from __future__ import annotations

from typing import Literal, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .. import _core, cuda
from .._buffers import DTYPE_CODES, core_supported, cpu_ptr, dtype_code
from .base import MaskedMixin, PathKind
from .cuda_sparse import CudaSparseConv2dFn, conv_geometry, cuda_conv_forward
from .sparse_index import SparseIndex, SparseIndexCache, check_index

ConvAlgo = Literal["auto", "direct", "blocked", "flat"]
_ALGOS = {"auto": 0, "direct": 1, "blocked": 2, "flat": 3}

#: ``path="auto"`` runs the sparse kernel at or below this density (fraction of weights kept).
#: Measured (bench/bench_conv.py and batch sweeps, 1-2 threads): in training (forward+backward)
#: the sparse path breaks even at about 50-75% density on MinAtar- and Atari-sized layers with
#: batches of 32-256; forward-only at small batches (rollouts) it needs about 25-50%.
DEFAULT_SPARSE_THRESHOLD = 0.6

_IntPair = Union[int, Tuple[int, int], Sequence[int]]


def _pair(v: _IntPair, name: str) -> Tuple[int, int]:
    t = (int(v), int(v)) if isinstance(v, int) else tuple(int(e) for e in v)
    if len(t) != 2:
        raise ValueError(f"sparse_conv2d: {name} must be an int or a pair, got {v!r}")
    return t  # type: ignore[return-value]


_ConvParams = Tuple[Tuple[int, int], Tuple[int, int, int, int], Tuple[int, int]]


def _conv_params(kernel: Tuple[int, int], stride: _IntPair, padding: Union[str, _IntPair],
                 dilation: _IntPair) -> _ConvParams:
    """Checked (stride, (top, left, bottom, right) padding, dilation); "same" puts the odd extra
    pixel at the bottom/right, as torch does."""
    st, dil = _pair(stride, "stride"), _pair(dilation, "dilation")
    if isinstance(padding, str):
        if padding == "valid":
            pad = (0, 0, 0, 0)
        elif padding == "same":
            th, tw = dil[0] * (kernel[0] - 1), dil[1] * (kernel[1] - 1)
            pad = (th // 2, tw // 2, th - th // 2, tw - tw // 2)
        else:
            raise ValueError(f"sparse_conv2d: padding must be 'same', 'valid', an int or a pair, got {padding!r}")
    else:
        ph, pw = _pair(padding, "padding")
        pad = (ph, pw, ph, pw)
    for name, pair, low in (("stride", st, 1), ("dilation", dil, 1), ("padding", pad, 0)):
        if min(pair) < low:
            raise ValueError(f"sparse_conv2d: {name} must be >= {low}, got {pair}")
    return st, pad, dil


def _geometry(x: torch.Tensor, weight: torch.Tensor, params: _ConvParams):
    """The kernel geometry of the device's core (CPU or CUDA) after checking the shapes."""
    (sh, sw), (pt, pl, pb, pr), (dh, dw) = params
    n, c, h, w = x.shape
    o, cw, kh, kw = weight.shape
    if c != cw:
        raise ValueError(f"sparse_conv2d: input has {c} channels (shape {tuple(x.shape)}) but the weight "
                         f"expects {cw} (shape {tuple(weight.shape)})")
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    if oh <= 0 or ow <= 0:
        raise ValueError(f"sparse_conv2d: input {h}x{w} (padded {h + pt + pb}x{w + pl + pr}) is smaller than "
                         f"the dilated kernel {dh * (kh - 1) + 1}x{dw * (kw - 1) + 1}")
    # Positional: pybind's keyword matching costs more than the small convolutions themselves.
    ints = (n, c, h, w, o, kh, kw, oh, ow, sh, sw, pt, pl, dh, dw)
    return conv_geometry(ints) if x.is_cuda else _core.ConvGeometry(*ints)


def _forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], index: SparseIndex,
             geom, algo: int) -> torch.Tensor:
    """The kernel call; ``x``, ``weight`` and ``bias`` are checked, contiguous CPU tensors of one dtype."""
    out = x.new_empty((geom.n, geom.o, geom.oh, geom.ow))
    _core.masked_conv2d_forward(
        geom, x.data_ptr(), weight.data_ptr(), 0 if bias is None else bias.data_ptr(), out.data_ptr(),
        *index.csr_pointers, index.nnz, DTYPE_CODES[x.dtype], algo, torch.get_num_threads())
    return out


class _SparseConv2dFn(torch.autograd.Function):
    """conv2d over the kept weights of ``index``, differentiable once (see :func:`_run`)."""

    @staticmethod
    def forward(ctx, x, weight, bias, index: SparseIndex, geom, algo: int):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.index, ctx.geom, ctx.algo, ctx.has_bias = index, geom, algo, bias is not None
        return _forward(x, weight, bias, index, geom, algo)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        index: SparseIndex = ctx.index
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_out = grad_out.contiguous()
        gx = torch.empty_like(x) if need_x else None
        gw = torch.empty_like(weight) if need_w else None
        gb = weight.new_empty(weight.shape[0]) if need_b and ctx.has_bias else None
        if gx is not None or gw is not None or gb is not None:
            _core.masked_conv2d_backward(
                ctx.geom, x.data_ptr(), weight.data_ptr(), cpu_ptr(grad_out, "grad_out", x.dtype),
                0 if gx is None else gx.data_ptr(), 0 if gw is None else gw.data_ptr(),
                0 if gb is None else gb.data_ptr(),
                # the CSC only for grad_input: a first layer's index never builds one
                *(index.pointers if gx is not None else index.csr_pointers + (0, 0)),
                index.nnz, DTYPE_CODES[x.dtype], ctx.algo, torch.get_num_threads())
        return gx, gw, gb, None, None, None


def _run(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], index: SparseIndex,
         params: _ConvParams, algo: int) -> torch.Tensor:
    """Sparse conv2d of checked tensors of one dtype on one device (copied to contiguous if needed);
    CUDA tensors go to the CUDA core (``algo`` is a CPU-kernel choice and ignored there)."""
    x, weight = x.contiguous(), weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    geom = _geometry(x, weight, params)
    grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                        or (bias is not None and bias.requires_grad))
    if x.is_cuda:
        return CudaSparseConv2dFn.apply(x, weight, bias, index, geom) if grad else \
            cuda_conv_forward(x, weight, bias, index, geom)
    if grad:
        return _SparseConv2dFn.apply(x, weight, bias, index, geom, algo)
    # No graph to record (inference, rollouts): skip the autograd.Function machinery.
    return _forward(x, weight, bias, index, geom, algo)


def sparse_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], index: SparseIndex,
                  stride: _IntPair = 1, padding: Union[str, _IntPair] = 0, dilation: _IntPair = 1,
                  algo: ConvAlgo = "auto") -> torch.Tensor:
    """``F.conv2d(x, weight * mask, bias, ...)`` with ``groups=1``, reading only the weights kept in ``index``.

    ``x`` is ``[N, C, H, W]`` (copied if not contiguous), float32 or float64 on the CPU like ``weight``
    (or on one CUDA device when the CUDA core is built; the index must then live on that device);
    ``index`` is the :class:`SparseIndex` of the mask (``[out, C*kh*kw]``). Differentiable in
    ``x``, ``weight`` (zero gradient where pruned) and ``bias``, once (no double backward).
    ``algo`` forces the kernel's algorithm (see csrc/masked_conv.cpp): "blocked" (batch on the
    SIMD axis), "flat" (output pixels on the SIMD axis) or "direct" (the plain per-image loop, a
    slow reference); "auto" takes blocked from a batch of 12 and flat below. With non-finite
    inputs, "flat" may put NaN into weight-gradient entries that torch leaves finite (it computes
    and drops a few outputs past each row).
    """
    if x.dim() != 4:
        raise ValueError(f"sparse_conv2d: expected input [N, C, H, W], got shape {tuple(x.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"sparse_conv2d: expected weight [out, C, kh, kw], got shape {tuple(weight.shape)}")
    device = x.device
    if device.type != "cpu" and not (device.type == "cuda" and cuda.built()):
        raise ValueError(f"sparse_conv2d: input must be a CPU tensor (or CUDA with the CUDA core built), "
                         f"got device {device}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.device != device:
            raise ValueError(f"sparse_conv2d: {name} is on {t.device} but the input is on {device}")
    dtype_code(x, "input")
    if x.dtype != weight.dtype or (bias is not None and bias.dtype != x.dtype):
        raise TypeError(f"sparse_conv2d: input {x.dtype}, weight {weight.dtype} and bias "
                        f"{None if bias is None else bias.dtype} must share one dtype")
    # Cheap checks for an index of from_mask; a full scan of a hand-made one (the kernels trust it).
    check_index(index, weight.shape[0], weight[0].numel(), device, "sparse_conv2d: index")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"sparse_conv2d: bias shape {tuple(bias.shape)} does not match {weight.shape[0]} "
                         f"output channels")
    if algo not in _ALGOS:
        raise ValueError(f"sparse_conv2d: algo must be one of {tuple(_ALGOS)}, got {algo!r}")
    params = _conv_params((weight.shape[2], weight.shape[3]), stride, padding, dilation)
    return _run(x, weight, bias, index, params, _ALGOS[algo])


class MaskedConv2d(MaskedMixin, nn.Conv2d):
    """``nn.Conv2d`` with a bool ``mask`` buffer; ``state_dict`` is that of ``nn.Conv2d``.

    ``path`` ("auto" | "dense" | "sparse") and ``sparse_threshold`` (auto: sparse at or above
    this sparsity) choose the forward path per layer; both may be reassigned at any time.
    """

    def __init__(self, *args, path: PathKind = "auto", sparse_threshold: float = DEFAULT_SPARSE_THRESHOLD,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_mask()
        self._index_cache = SparseIndexCache()
        self._params_key: Optional[tuple] = None
        self._params: Optional[_ConvParams] = None
        self.path = path
        self.sparse_threshold = sparse_threshold

    @classmethod
    def from_dense(cls, layer: nn.Conv2d, path: PathKind = "auto",
                   sparse_threshold: float = DEFAULT_SPARSE_THRESHOLD) -> "MaskedConv2d":
        out = cls(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                  padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                  bias=layer.bias is not None, padding_mode=layer.padding_mode,
                  device=layer.weight.device, dtype=layer.weight.dtype,
                  path=path, sparse_threshold=sparse_threshold)
        out.load_state_dict(layer.state_dict())
        return out

    def to_dense(self) -> nn.Conv2d:
        out = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, stride=self.stride,
                        padding=self.padding, dilation=self.dilation, groups=self.groups,
                        bias=self.bias is not None, padding_mode=self.padding_mode,
                        device=self.weight.device, dtype=self.weight.dtype)
        out.load_state_dict(self.state_dict())
        return out

    def sparse_supported(self, x: torch.Tensor) -> bool:
        """Whether the compiled sparse path can run this layer on ``x`` (see the module docstring)."""
        w, b = self._parameters["weight"], self._parameters["bias"]
        return (self.groups == 1 and self.padding_mode == "zeros"
                and (core_supported(x, w, b) or cuda.kernels_take(x, w, b)))

    def uses_sparse_path(self, x: torch.Tensor) -> bool:
        """Which path :meth:`forward` takes for ``x`` under the current mask and settings."""
        if self._path == "dense" or not self.sparse_supported(x):
            return False
        if self._path == "sparse":
            return True
        if x.is_cuda:
            # Measured on an H100 (bench/bench_cuda.py): cuDNN beats the CUDA sparse kernels at every
            # sparsity up to 99% on MinAtar- and Atari-sized layers, so "auto" stays dense there.
            return False
        # from the mask's count, before building anything: a dense layer never builds an index
        with self._mask_lock:
            return self._mask_count() <= (1.0 - self._sparse_threshold) * self.weight.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (3, 4) or x.shape[-3] != self.in_channels:
            raise ValueError(f"{type(self).__name__}: expected input [N, {self.in_channels}, H, W] or "
                             f"[{self.in_channels}, H, W], got shape {tuple(x.shape)} "
                             f"(weight shape {tuple(self.weight.shape)})")
        with self._mask_lock:  # a mask change in another thread waits for this forward
            return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        self._refresh_pruned_weights()
        if not self.uses_sparse_path(x):
            # the cached mask copy, not the buffer: a graph saving the buffer would fail its backward
            # after any later in-place mask change
            weight = self.weight if self._mask_is_full() else self.weight * self._mask_like_weight()
            return self._conv_forward(x, weight, self.bias)
        key = (self.kernel_size, self.stride, self.padding, self.dilation)
        if self._params_key != key:  # the layer's settings are plain attributes: re-check on change
            self._params = _conv_params(*key)
            self._params_key = key
        batched = x.dim() == 4
        index = self._index_cache.get(self._buffers["mask"], self._mask_key())
        out = _run(x if batched else x.unsqueeze(0), self.weight, self.bias, index, self._params, 0)
        return out if batched else out.squeeze(0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, path={self._path}, sparse_threshold={self._sparse_threshold}"
