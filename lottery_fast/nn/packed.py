"""Packed masked layers: the trainable weight is a 1-D tensor of the kept values only.

A :class:`MaskedLinear`/:class:`MaskedConv2d` keeps its full weight and zeroes the pruned part, so
an optimizer still reads and writes every weight, gradient and moment. A packed layer
(:class:`PackedLinear`, :class:`PackedConv2d`) holds ``values`` (length ``nnz``, the kept weights in
row-major order of the weight, i.e. the CSR order of the mask's index) beside the mask and its
cached :class:`~lottery_fast.nn.sparse_index.SparseIndex`. Forward and backward run the compiled
kernels over the index and produce the gradient of the kept values only: no dense weight or
dense weight gradient exists, and any torch optimizer (SGD, Adam, AdamW; weight decay, foreach,
fused) updates ``nnz`` numbers. Pruned weights cannot come back: they do not exist.

What changes for the user:

* ``parameters()`` yields ``values`` (1-D) and ``bias``; build optimizers **after** packing, and
  again after a mask change (a mask change repacks ``values`` in place: same Parameter object,
  new length, gradient reset, so a stale Adam state fails loudly instead of updating the wrong
  weights).
* ``state_dict()`` is still the dense one of ``nn.Linear``/``nn.Conv2d`` (``weight`` of the full
  shape, zeros where pruned, and ``bias``), and loads both ways: a dense state dict loads into a
  packed layer (the values at the kept positions are taken) and a packed layer's state dict loads
  into ``nn.Linear``, ``MaskedLinear`` or another packed layer. Masks travel separately, as for
  the masked layers (:func:`~lottery_fast.nn.get_masks`/:func:`~lottery_fast.nn.set_masks`).
* :meth:`dense_weight` gives the weight of the full shape (a new tensor, not a view).
* Mask changes are seen as on the masked layers (``set_mask``, assigning ``layer.mask``, in-place
  writes through torch, ``refresh_mask_`` after writes the layer cannot see); each one repacks:
  weights kept before and after keep their value, newly kept ones start at 0.

Paths: ``"sparse"`` runs the compiled CPU kernels (float32/float64); ``"dense"`` scatters the
values into a dense weight inside the autograd graph and runs torch's GEMM/convolution (its
weight gradient is gathered back to ``nnz`` values, so the optimizer still sees only those);
``"auto"`` takes the sparse kernels from :data:`PACKED_SPARSE_THRESHOLD` (linear) or
:data:`~lottery_fast.nn.conv.DEFAULT_SPARSE_THRESHOLD` (conv) sparsity (linear layers must also not
be narrow, as for MaskedLinear), and the dense path below. Inputs the kernels do not take (CUDA tensors, other dtypes,
autocast, empty batches) run the dense path whatever ``path`` says; on CUDA this is cuBLAS/cuDNN,
which bench/bench_cuda.py measured faster than the CUDA sparse kernels on RL-sized layers.
"""
from __future__ import annotations

import copy
import threading
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .. import _core
from .._buffers import DTYPE_CODES, core_supported, cpu_ptr
from .base import PATHS, MaskedLayer, PathKind
from .conv import DEFAULT_SPARSE_THRESHOLD as CONV_SPARSE_THRESHOLD
from .conv import MaskedConv2d, _conv_params, _geometry
from .convert import _swap
from .linear import AUTO_MIN_WIDTH, MaskedLinear
from .sparse_index import SparseIndex

#: ``path="auto"`` of a PackedLinear runs the kernels from this sparsity. Whole steps of the two
#: packed paths (``bench/bench_packed.py --cases 256x256 1024x1024 --threads 1 --cpu-time --paths``)
#: crossed between 0.5 and 0.6 at 1024x1024 batch 256 (sparse 17.2 ms, dense 19.4 ms at 0.6) and
#: between 0.6 and 0.7 at 256x256 batch 2048 (sparse 8.5 ms, dense 7.9 ms at 0.6).
PACKED_SPARSE_THRESHOLD = 0.6


# -- autograd functions ------------------------------------------------------------------------
class _PackedLinearFn(torch.autograd.Function):
    """``x2d W^T + b`` with ``W`` given by its kept ``values`` (CSR order of ``index``)."""

    @staticmethod
    def forward(ctx, x2d: torch.Tensor, values: torch.Tensor, bias: Optional[torch.Tensor],
                index: SparseIndex) -> torch.Tensor:
        batch, n_in = x2d.shape
        n_out = index.rows
        code = DTYPE_CODES[x2d.dtype]
        padded = _core.masked_linear_padded_batch(batch, code)
        x_t = torch.empty((n_in, padded), dtype=x2d.dtype)
        y = torch.empty((batch, n_out), dtype=x2d.dtype)
        _core.masked_linear_forward_packed(
            cpu_ptr(x2d, "input"), cpu_ptr(values, "values"), 0 if bias is None else cpu_ptr(bias, "bias"),
            *index.csr_pointers, batch, n_in, n_out, padded, x_t.data_ptr(), y.data_ptr(), code,
            torch.get_num_threads())
        need_x, need_v = ctx.needs_input_grad[:2]
        # An alias of this forward's storage: a repack (mask change) before the backward swaps the
        # Parameter's storage for one of another length, which the saved index must not read. The
        # alias shares the version counter, so an optimizer step in between still fails the backward.
        ctx.save_for_backward(x_t if need_v else None, values.detach() if need_x else None)
        ctx.index, ctx.shape, ctx.has_bias = index, (batch, n_in, n_out, padded, code), bias is not None
        ctx.values, ctx.values_ptr = values, values.data_ptr()
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: torch.Tensor):
        x_t, values = ctx.saved_tensors
        index: SparseIndex = ctx.index
        _check_not_repacked(ctx.values, ctx.values_ptr, index)
        batch, n_in, n_out, padded, code = ctx.shape
        need_x, need_v, need_b = ctx.needs_input_grad[:3]
        need_b = need_b and ctx.has_bias
        grad_y = grad_y.contiguous()
        grad_x = torch.empty((batch, n_in), dtype=grad_y.dtype) if need_x else None
        grad_v = torch.empty(index.nnz, dtype=grad_y.dtype) if need_v else None
        grad_b = torch.empty(n_out, dtype=grad_y.dtype) if need_b else None
        if need_x or need_v or need_b:
            _core.masked_linear_backward(
                cpu_ptr(grad_y, "grad_output"), x_t.data_ptr() if need_v else 0,
                values.data_ptr() if need_x else 0,
                *(index.pointers if need_x else index.csr_pointers + (0, 0)),
                batch, n_in, n_out, padded,
                grad_x.data_ptr() if need_x else 0, grad_v.data_ptr() if need_v else 0,
                code, torch.get_num_threads(), grad_b.data_ptr() if need_b else 0, True)
        return grad_x, grad_v, grad_b, None


def _check_not_repacked(values: torch.Tensor, ptr: int, index: SparseIndex) -> None:
    # A repack swaps the Parameter's storage: autograd would accumulate this gradient, laid out for
    # the old mask, into values that stand for the new one.
    if values.numel() != index.nnz or values.data_ptr() != ptr:
        raise RuntimeError(f"packed layer: the mask changed (values repacked from {index.nnz} to {values.numel()}) "
                           f"between this forward and its backward; run the forward again after a mask change")


class _PackedConv2dFn(torch.autograd.Function):
    """conv2d (groups=1, zero padding) with the filter bank given by its kept ``values``."""

    @staticmethod
    def forward(ctx, x, values, bias, index: SparseIndex, geom, algo: int):  # type: ignore[override]
        out = x.new_empty((geom.n, geom.o, geom.oh, geom.ow))
        _core.masked_conv2d_forward(
            geom, x.data_ptr(), values.data_ptr(), 0 if bias is None else bias.data_ptr(), out.data_ptr(),
            *index.csr_pointers, index.nnz, DTYPE_CODES[x.dtype], algo, torch.get_num_threads(), True)
        ctx.save_for_backward(x, values.detach())  # (an alias: see _PackedLinearFn)
        ctx.index, ctx.geom, ctx.algo, ctx.has_bias = index, geom, algo, bias is not None
        ctx.values, ctx.values_ptr = values, values.data_ptr()
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        x, values = ctx.saved_tensors
        index: SparseIndex = ctx.index
        _check_not_repacked(ctx.values, ctx.values_ptr, index)
        need_x, need_v, need_b = ctx.needs_input_grad[:3]
        grad_out = grad_out.contiguous()
        gx = torch.empty_like(x) if need_x else None
        gv = torch.empty_like(values) if need_v else None
        gb = values.new_empty(ctx.geom.o) if need_b and ctx.has_bias else None
        if gx is not None or gv is not None or gb is not None:
            _core.masked_conv2d_backward(
                ctx.geom, x.data_ptr(), values.data_ptr(), cpu_ptr(grad_out, "grad_out", x.dtype),
                0 if gx is None else gx.data_ptr(), 0 if gv is None or gv.numel() == 0 else gv.data_ptr(),
                0 if gb is None else gb.data_ptr(),
                *(index.pointers if gx is not None else index.csr_pointers + (0, 0)),
                index.nnz, DTYPE_CODES[x.dtype], ctx.algo, torch.get_num_threads(), True)
        return gx, gv, gb, None, None, None


# -- the shared layer machinery ----------------------------------------------------------------
class PackedMixin(MaskedLayer):
    """Kept values, mask and index of a packed layer (for an ``nn.Module`` subclass)."""

    values: nn.Parameter
    mask: torch.Tensor

    def _init_packed(self, weight: torch.Tensor, mask: torch.Tensor, path: PathKind,
                     sparse_threshold: float) -> None:
        mask = _check_mask(mask, weight.shape, type(self).__name__).to(weight.device)
        self.__dict__["_mask_lock"] = threading.RLock()
        self.__dict__["_mask_gen"] = 0
        self.__dict__["_weight_shape"] = tuple(weight.shape)
        # row-major boolean indexing = the CSR order of the mask's index
        self.values = nn.Parameter(weight.detach()[mask].clone())
        self.register_buffer("mask", mask.clone(), persistent=False)
        self._adopt_mask()
        self.path = path
        self.sparse_threshold = sparse_threshold

    @property
    def weight_shape(self) -> Tuple[int, ...]:
        """Shape of the dense weight the values stand for."""
        return self._weight_shape

    @property
    def mask_lock(self) -> threading.RLock:
        """Held by forward and by every repack (re-entrant); hold it to write the mask from another thread."""
        return self._mask_lock

    @property
    def nnz(self) -> int:
        return self._parameters["values"].numel()  # type: ignore[attr-defined]

    @property
    def density(self) -> float:
        with self._mask_lock:
            self._sync()
            n = self.mask.numel()
            return self.nnz / n if n else 0.0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    # -- mask changes ---------------------------------------------------------------------------
    def __setattr__(self, name: str, value) -> None:
        if name == "mask" and "_mask_lock" in self.__dict__:
            with self._mask_lock:
                _check_mask(value, self._weight_shape, type(self).__name__, strict=True)
                super().__setattr__(name, value)  # type: ignore[misc]
                self._mask_gen += 1
            return
        super().__setattr__(name, value)  # type: ignore[misc]

    def _mask_key(self) -> tuple:
        m = self._buffers["mask"]  # type: ignore[attr-defined]
        return (self._mask_gen, m._version, m.data_ptr())

    def _adopt_mask(self) -> None:
        """The values stand for the current mask: record its positions and key, drop the index."""
        m = self._buffers["mask"]  # type: ignore[attr-defined]
        self.__dict__["_positions"] = m.reshape(-1).nonzero().squeeze(1)
        self.__dict__["_index"] = None
        self.__dict__["_packed_key"] = self._mask_key()
        if self._positions.numel() != self._parameters["values"].numel():  # type: ignore[attr-defined]
            raise RuntimeError(f"{type(self).__name__}: {self._parameters['values'].numel()} values but the "
                               f"mask keeps {self._positions.numel()} weights")

    def _sync(self) -> None:
        """Repack if the mask changed since the values were packed (callers hold the lock)."""
        if self._mask_key() == self._packed_key:
            return
        values = self._parameters["values"]  # type: ignore[attr-defined]
        dense = values.new_zeros(int(torch.Size(self._weight_shape).numel()))
        with torch.no_grad():
            dense[self._positions] = values.detach()
            keep = self._buffers["mask"].reshape(-1).to(values.device)  # type: ignore[attr-defined]
            # Same Parameter object, new length: an optimizer built before this fails on its stale
            # state instead of silently updating another set of weights.
            values.data = dense[keep]
            values.grad = None
        self._adopt_mask()

    def set_mask(self, mask: torch.Tensor) -> None:
        """Replace the mask (bool, or 0/1 integers, of the weight's shape) and repack."""
        mask = _check_mask(mask, self._weight_shape, f"{type(self).__name__}.set_mask")
        with self._mask_lock, torch.no_grad():
            self.mask.copy_(mask.to(self.mask.device))
            self._mask_gen += 1
            self._sync()

    def refresh_mask_(self) -> None:
        """Take note of a mask change the layer cannot see (through ``mask.data``, raw pointers, NumPy)."""
        with self._mask_lock:
            self._mask_gen += 1
            self._sync()

    def apply_mask_(self) -> None:
        """Repack after a mask change (there are no pruned weights to zero)."""
        with self._mask_lock:
            self._sync()

    def keep_values_(self, keep: torch.Tensor) -> int:
        """Prune the values where the bool ``keep`` (length ``nnz``) is False; returns how many."""
        with self._mask_lock:
            self._sync()
            if keep.shape != (self.nnz,) or keep.dtype != torch.bool:
                raise ValueError(f"{type(self).__name__}.keep_values_: need a bool tensor of shape ({self.nnz},), "
                                 f"got {keep.dtype} {tuple(keep.shape)}")
            keep = keep.to(self._positions.device)
            dropped = self._positions[~keep]
            if dropped.numel():
                with torch.no_grad():
                    self.mask.view(-1)[dropped.to(self.mask.device)] = False
                self._sync()
            return int(dropped.numel())

    # -- views ----------------------------------------------------------------------------------
    def sparse_index(self) -> SparseIndex:
        """The CSR/CSC index of the mask the values are packed for (cached; read-only)."""
        with self._mask_lock:
            self._sync()
            return self._get_index()

    def _get_index(self) -> SparseIndex:
        if self._index is None:
            self.__dict__["_index"] = SparseIndex.from_mask(self._buffers["mask"].reshape(self._weight_shape[0], -1))  # type: ignore[attr-defined]
        return self._index

    def dense_weight(self) -> torch.Tensor:
        """The full weight (a new tensor, zeros where pruned, no autograd history)."""
        with self._mask_lock:
            self._sync()
            return self._dense(self.values.detach())

    def _dense(self, values: torch.Tensor) -> torch.Tensor:
        """The dense weight as a function of ``values`` (differentiable: its gradient is the dense
        gradient gathered at the kept positions)."""
        n = int(torch.Size(self._weight_shape).numel())
        if values.numel() == n:
            return values.view(self._weight_shape)  # nothing pruned: the values are the weight, row-major
        pos = self._positions if self._positions.device == values.device else self._positions.to(values.device)
        # torch's own differentiable scatter (backward: a gather): no Python autograd node, which RL-sized layers feel
        return values.new_zeros(n).scatter(0, pos, values).view(self._weight_shape)

    # -- state dict: the dense layout of the plain torch layer ----------------------------------
    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:  # type: ignore[override]
        destination[prefix + "weight"] = self.dense_weight()
        bias = self._parameters.get("bias")  # type: ignore[attr-defined]
        if bias is not None:
            destination[prefix + "bias"] = bias if keep_vars else bias.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:  # type: ignore[override]
        bias = self._parameters.get("bias")  # type: ignore[attr-defined]
        expected = {"weight": self._weight_shape}
        if bias is not None:
            expected["bias"] = tuple(bias.shape)
        for name, shape in expected.items():
            key = prefix + name
            if key not in state_dict:
                missing_keys.append(key)
                continue
            t = state_dict[key]
            if not isinstance(t, torch.Tensor):
                error_msgs.append(f'While copying the parameter named "{key}", expected torch.Tensor, got {type(t)}.')
            elif tuple(t.shape) != shape:
                error_msgs.append(f"size mismatch for {key}: copying a param with shape {tuple(t.shape)} from "
                                  f"checkpoint, the shape in current model is {torch.Size(shape)}.")
            else:
                with self._mask_lock, torch.no_grad():
                    self._sync()
                    if name == "weight":
                        src = t.detach().reshape(-1).to(self.values.device)
                        self.values.copy_(src[self._positions])
                    else:
                        bias.copy_(t.detach())
        if strict:
            for key in state_dict:
                if key.startswith(prefix) and "." not in key[len(prefix):] and key[len(prefix):] not in expected:
                    unexpected_keys.append(key)

    # -- copies and moves -----------------------------------------------------------------------
    def _apply(self, fn, *args, **kwargs):  # type: ignore[override]
        with self._mask_lock:
            self._sync()
            out = super()._apply(fn, *args, **kwargs)  # type: ignore[misc]
            self._mask_gen += 1
            self._adopt_mask()  # same values, mask possibly on another device: new positions and index
        return out

    def __getstate__(self):
        with self._mask_lock:
            self._sync()
        state = dict(super().__getstate__())  # type: ignore[misc]
        for key in ("_mask_lock", "_positions", "_index", "_packed_key"):
            state.pop(key, None)
        return state

    def __setstate__(self, state) -> None:
        super().__setstate__(state)  # type: ignore[misc]
        self.__dict__["_mask_lock"] = threading.RLock()
        self.__dict__["_mask_gen"] = self.__dict__.get("_mask_gen", 0) + 1
        self._adopt_mask()


def _check_mask(mask, shape, what: str, strict: bool = False) -> torch.Tensor:
    """``mask`` as a bool tensor of ``shape`` (0/1 integers accepted unless ``strict``)."""
    if not isinstance(mask, torch.Tensor):
        mask = torch.as_tensor(mask)
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{what}: mask shape {tuple(mask.shape)} does not match weight shape {tuple(shape)}")
    if mask.dtype != torch.bool:
        if strict or mask.dtype.is_floating_point or mask.dtype.is_complex or not torch.all((mask == 0) | (mask == 1)):
            raise TypeError(f"{what}: mask must be bool (or integer 0/1), got {mask.dtype}")
        mask = mask.bool()
    return mask


class _Shape:
    """Stands in for a weight where only its shape is read (the conv geometry)."""

    def __init__(self, shape) -> None:
        self.shape = torch.Size(shape)


def _sparse_ok(x: torch.Tensor, values: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    return core_supported(x, values, bias)


# -- the layers --------------------------------------------------------------------------------
class PackedLinear(PackedMixin, nn.Module):
    """A linear layer that stores only its kept weights (see the module docstring).

    Build it from a :class:`MaskedLinear` (:meth:`from_masked`, or :func:`packed` for a whole
    model) or directly: ``PackedLinear(in, out, mask=...)`` initialises like ``nn.Linear``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, mask: Optional[torch.Tensor] = None,
                 device=None, dtype=None, path: PathKind = "auto",
                 sparse_threshold: float = PACKED_SPARSE_THRESHOLD) -> None:
        super().__init__()
        init = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._setup(init.weight.detach(), None if init.bias is None else init.bias.detach(),
                    torch.ones_like(init.weight, dtype=torch.bool) if mask is None else mask, path, sparse_threshold)

    def _setup(self, weight, bias, mask, path, sparse_threshold) -> None:
        self.in_features, self.out_features = int(weight.shape[1]), int(weight.shape[0])
        self._init_packed(weight, mask, path, sparse_threshold)
        self.register_parameter("bias", None if bias is None else nn.Parameter(bias.detach().clone()))

    @classmethod
    def from_masked(cls, layer: MaskedLinear, path: PathKind = "auto",
                    sparse_threshold: float = PACKED_SPARSE_THRESHOLD) -> "PackedLinear":
        """A packed twin of ``layer`` (its kept weights, mask and bias, copied)."""
        out = cls.__new__(cls)
        nn.Module.__init__(out)
        with layer.mask_lock:
            out._setup(layer.weight.detach(), layer.bias, layer.mask, path, sparse_threshold)
        return out

    def to_masked(self) -> MaskedLinear:
        """A :class:`MaskedLinear` with this layer's weights and mask (copied)."""
        with torch.random.fork_rng(devices=[]):  # its default init must not consume the caller's RNG
            out = MaskedLinear(self.in_features, self.out_features, bias=self.bias is not None,
                               device=self.values.device, dtype=self.values.dtype)
        out.load_state_dict(self.state_dict())
        out.set_mask(self.mask)
        return out

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"nnz={self.nnz}, path={self.path!r}")

    def uses_sparse_path(self, x: torch.Tensor) -> bool:
        """Whether ``forward(x)`` runs the compiled kernels."""
        with self._mask_lock:
            self._sync()
            return self._sparse(x)

    def _sparse(self, x: torch.Tensor) -> bool:
        if self._path == "dense" or not _sparse_ok(x, self._parameters["values"], self._parameters["bias"]):
            return False
        if self._path == "sparse":
            return True
        n_in, n_out = self.in_features, self.out_features
        if n_in * n_out < AUTO_MIN_WIDTH * (n_in + n_out):
            return False
        return 1.0 - self.nnz / (n_in * n_out) >= self._sparse_threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"PackedLinear: input of shape {tuple(x.shape)} does not match in_features="
                             f"{self.in_features}; the last dimension must be {self.in_features}")
        with self._mask_lock:
            self._sync()
            values, bias = self._parameters["values"], self._parameters["bias"]
            if not self._sparse(x):
                return F.linear(x, self._dense(values), bias)
            x2d = (x if x.dim() == 2 else x.reshape(-1, self.in_features)).contiguous()
            y = _PackedLinearFn.apply(x2d, values, None if bias is None else bias.contiguous(), self._get_index())
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)


class PackedConv2d(PackedMixin, nn.Module):
    """A conv2d layer that stores only its kept weights (see the module docstring).

    Built from a :class:`MaskedConv2d` (:meth:`from_masked`, or :func:`packed`). The compiled
    kernels need ``groups == 1`` and ``padding_mode == "zeros"``; other layers run the dense path.
    """

    def __init__(self, *args, **kwargs) -> None:
        raise TypeError("PackedConv2d: build it from a MaskedConv2d with PackedConv2d.from_masked(layer) "
                        "or lottery_fast.packed(model)")

    @classmethod
    def from_masked(cls, layer: MaskedConv2d, path: PathKind = "auto",
                    sparse_threshold: float = CONV_SPARSE_THRESHOLD) -> "PackedConv2d":
        out = cls.__new__(cls)
        nn.Module.__init__(out)
        for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                     "padding_mode", "_reversed_padding_repeated_twice"):
            setattr(out, name, copy.copy(getattr(layer, name)))
        with layer.mask_lock:
            out._init_packed(layer.weight.detach(), layer.mask, path, sparse_threshold)
            out.register_parameter("bias", None if layer.bias is None else nn.Parameter(layer.bias.detach().clone()))
        out.__dict__["_params"] = None
        return out

    def to_masked(self) -> MaskedConv2d:
        with torch.random.fork_rng(devices=[]):
            out = MaskedConv2d(self.in_channels, self.out_channels, self.kernel_size, stride=self.stride,
                               padding=self.padding, dilation=self.dilation, groups=self.groups,
                               bias=self.bias is not None, padding_mode=self.padding_mode,
                               device=self.values.device, dtype=self.values.dtype)
        out.load_state_dict(self.state_dict())
        out.set_mask(self.mask)
        return out

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, nnz={self.nnz}, path={self.path!r}")

    def uses_sparse_path(self, x: torch.Tensor) -> bool:
        with self._mask_lock:
            self._sync()
            return self._sparse(x)

    def _sparse(self, x: torch.Tensor) -> bool:
        if (self._path == "dense" or self.groups != 1 or self.padding_mode != "zeros"
                or not _sparse_ok(x, self._parameters["values"], self._parameters["bias"])):
            return False
        return self._path == "sparse" or 1.0 - self.nnz / self.mask.numel() >= self._sparse_threshold

    def _dense_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        if self.padding_mode != "zeros":
            return F.conv2d(F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode), weight, bias,
                            self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (3, 4) or x.shape[-3] != self.in_channels:
            raise ValueError(f"PackedConv2d: expected input [N, {self.in_channels}, H, W] or "
                             f"[{self.in_channels}, H, W], got shape {tuple(x.shape)}")
        with self._mask_lock:
            self._sync()
            values, bias = self._parameters["values"], self._parameters["bias"]
            if not self._sparse(x):
                return self._dense_forward(x, self._dense(values), bias)
            if self._params is None:
                self.__dict__["_params"] = _conv_params(self.kernel_size, self.stride, self.padding, self.dilation)
            batched = x.dim() == 4
            xb = (x if batched else x.unsqueeze(0)).contiguous()
            geom = _geometry(xb, _Shape(self._weight_shape), self._params)
            out = _PackedConv2dFn.apply(xb, values, None if bias is None else bias.contiguous(),
                                        self._get_index(), geom, 0)
        return out if batched else out.squeeze(0)


#: ``pack_for_training(model, "auto")`` packs the linear layers at least this sparse (whole training
#: step with AdamW, ``bench/bench_packed.py --cpu-time``: from 50 % sparsity the packed step was
#: 1.3x (50 %) to 3.8x (99 %) faster than the masked one at 1024x1024). Conv layers pack from their
#: kernels' threshold (conv.DEFAULT_SPARSE_THRESHOLD): below it the packed dense path's scatter costs
#: a few percent against the masked layer, and their small filter banks leave the optimizer nothing to save.
PACK_MIN_SPARSITY = 0.5


# -- whole models ------------------------------------------------------------------------------
_PACKED_TWINS = ((MaskedLinear, PackedLinear), (MaskedConv2d, PackedConv2d))


def packed(model: nn.Module, inplace: bool = False, min_sparsity: float = 0.0, path: PathKind = "auto") -> nn.Module:
    """``model`` with its masked layers (sparsity >= ``min_sparsity``) replaced by packed twins.

    Copies the model first unless ``inplace`` (as :func:`~lottery_fast.nn.masked` does). Build the
    optimizer from the returned model's ``parameters()`` afterwards: the packed layers' weights are
    new Parameters (``values``, 1-D). Already packed layers, and plain torch layers, stay as they are.
    """
    if not 0.0 <= float(min_sparsity) <= 1.0:
        raise ValueError(f"packed: min_sparsity must be in [0, 1], got {min_sparsity!r}")
    if path not in PATHS:
        raise ValueError(f"packed: path must be one of {PATHS}, got {path!r}")
    if not inplace:
        model = copy.deepcopy(model)

    def convert(m: nn.Module):
        for masked_type, twin in _PACKED_TWINS:
            if type(m) is masked_type and m.sparsity >= min_sparsity:
                return twin.from_masked(m, path=path)
        return None

    return _swap(model, convert)


def unpacked(model: nn.Module, inplace: bool = False) -> nn.Module:
    """``model`` with every packed layer replaced by its masked twin (same weights and mask).

    Copies the model first unless ``inplace``. Optimizers built on the packed model do not carry over.
    """
    if not inplace:
        model = copy.deepcopy(model)

    def convert(m: nn.Module):
        return m.to_masked() if isinstance(m, PackedMixin) else None

    return _swap(model, convert)


def pack_for_training(model: nn.Module, mode: str) -> nn.Module:
    """``model`` packed in place for a training run (the IMP engine's ``IMPConfig.packed``): ``"on"``
    every masked layer, ``"auto"`` linear layers at least :data:`PACK_MIN_SPARSITY` sparse and conv
    layers at least ``conv.DEFAULT_SPARSE_THRESHOLD`` sparse, ``"off"`` none."""
    if mode == "off":
        return model
    if mode not in ("on", "auto"):
        raise ValueError(f"pack_for_training: mode must be 'off', 'on' or 'auto', got {mode!r}")
    floor = {MaskedLinear: PACK_MIN_SPARSITY, MaskedConv2d: CONV_SPARSE_THRESHOLD}

    def convert(m: nn.Module):
        for masked_type, twin in _PACKED_TWINS:
            if type(m) is masked_type and (mode == "on" or m.sparsity >= floor[masked_type]):
                return twin.from_masked(m)
        return None

    return _swap(model, convert)
