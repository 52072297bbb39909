"""MaskedLinear: a drop-in nn.Linear whose pruned weights stay at zero and cost nothing.

Three ways to compute ``x (W*M)^T + b``, all with gradients that are zero at pruned weights:

* **sparse**: the compiled core (``csrc/masked_linear.cpp``) over the CSR/CSC index of the mask;
  the arithmetic is proportional to the number of kept weights, forward and backward, plus a
  fixed cost of transposing the batch. The weight gradient is a dense tensor of the weight's
  shape, zero at pruned positions, so any optimizer sees a normal gradient. Results do not depend
  on the thread count (each output is summed by one thread in a fixed order); the kernels use
  ``torch.get_num_threads()`` threads. First-order gradients only (no double backward).
* **dense**: torch's GEMM on the weight itself, whose pruned entries the layer keeps at exactly
  zero, with the weight gradient masked in place. Same result as
  ``F.linear(x, weight * mask, bias)`` without a masked copy of the weight on every call.
* **torch**: ``F.linear(x, weight * mask, bias)``, used whatever ``path`` says for inputs the cores
  do not take: other devices (and CUDA without the CUDA core), dtypes other than float32/float64
  (float16, bfloat16), mixed dtypes, CPU autocast, and empty batches.

On CUDA tensors (float32/float64) the sparse path runs the CUDA core (``nn/cuda_sparse.py``)
when it is built; ``"auto"`` there follows :data:`CUDA_SPARSE_THRESHOLD`/:data:`CUDA_MIN_WEIGHTS`.
A layer whose mask prunes nothing runs plain ``F.linear`` on the dense paths.

``path="auto"`` (the default) takes the sparse path on CPU float32/float64 when the layer's
sparsity is at least ``sparse_threshold`` (default :data:`DEFAULT_SPARSE_THRESHOLD`) and the
layer is not narrow (``in*out/(in+out) >= AUTO_MIN_WIDTH``, i.e. about 128x128 or larger). Both
come from the fwd+bwd benchmark (``bench/bench_linear.py``): the sparse kernels beat torch's GEMM
from about 65% sparsity on 256x256 and 1024x1024 layers, while on a 64x64 layer the fixed cost of
transposing the batch outweighs the saved arithmetic until ~82-87% sparsity and gains little after. ``path`` and
``sparse_threshold`` can be changed per layer at any time; ``path="sparse"`` forces the kernels.
The sparse path makes a contiguous copy of a non-contiguous input.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import cuda
from .._buffers import core_supported
from .base import MaskedMixin, PathKind, functorch_active, tracing, zero_pruned_
from .ops import sparse_index_linear, sparse_linear
from .sparse_index import SparseIndex, SparseIndexCache

#: Sparsity from which ``path="auto"`` uses the sparse kernels: a little above the fwd+bwd
#: crossover measured with bench/bench_linear.py (0.64-0.66 on one and on two threads for 256x256
#: batch 2048 and 1024x1024 batch 256), so "auto" does not pick a slower path; for 4096x4096
#: batch 256 on one thread the crossover is 0.80, where both paths take the same time.
DEFAULT_SPARSE_THRESHOLD = 0.8
#: On CUDA, ``path="auto"`` goes sparse only from this sparsity and for layers of at least
#: CUDA_MIN_WEIGHTS weights: on an H100 (bench/bench_cuda.py) the CUDA kernels beat cuBLAS from
#: ~96% sparsity on a 4096x4096 layer (batch 256) and never on 1024x1024 or 256x256 layers, whose
#: dense step is bound by launch overhead, not by arithmetic. ``path="sparse"`` forces them.
CUDA_SPARSE_THRESHOLD = 0.97
CUDA_MIN_WEIGHTS = 1 << 22
#: Layers with in*out/(in+out) below this stay dense under "auto" (64 = a 128x128 layer).
AUTO_MIN_WIDTH = 64
#: up to this many weights the dense path multiplies by the mask in torch's own autograd graph;
#: above it, the custom function that masks only the weight gradient (no weight copy) wins
_SMALL_WEIGHT = 1 << 16



class _DenseMaskedLinearFn(torch.autograd.Function):
    """``F.linear`` on a weight whose pruned entries are already zero; masks the weight gradient.

    Same result as ``F.linear(x, weight * mask, bias)`` without materialising ``weight * mask``
    (a full copy of the weight per call, plus its conversion and gradient in backward): the layer
    re-zeroes pruned weights before every forward that follows a weight or mask change.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                mask: torch.Tensor) -> torch.Tensor:
        need_x, need_w = ctx.needs_input_grad[:2]
        ctx.save_for_backward(x if need_w else None, weight if need_x else None, mask)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x, weight, mask = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gy2d = grad_y.reshape(-1, grad_y.shape[-1])
        grad_x = grad_y.matmul(weight) if need_x else None
        grad_w = None
        if need_w:
            grad_w = gy2d.t().matmul(x.reshape(-1, x.shape[-1]))
            # The product is ours, so mask it in place, unless a double backward records it.
            grad_w = grad_w * mask if torch.is_grad_enabled() else zero_pruned_(grad_w, mask)
        grad_b = gy2d.sum(0) if (need_b and ctx.has_bias) else None
        return grad_x, grad_w, grad_b, None


class MaskedLinear(MaskedMixin, nn.Linear):
    """``nn.Linear`` with a bool ``mask`` buffer; ``state_dict`` is that of ``nn.Linear``.

    Args:
        path: ``"auto"`` (sparse kernels when ``sparsity >= sparse_threshold``, the layer is
            not narrow and the inputs allow it; see the module docstring), ``"dense"`` (always torch's GEMM on ``weight * mask``) or ``"sparse"``
            (the compiled kernels whenever the inputs allow it: CPU, float32/float64).
        sparse_threshold: sparsity in [0, 1] from which ``"auto"`` goes sparse.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
                 path: PathKind = "auto", sparse_threshold: float = DEFAULT_SPARSE_THRESHOLD) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_mask()
        self.path = path
        self.sparse_threshold = sparse_threshold
        self._index_cache = SparseIndexCache()

    @classmethod
    def from_dense(cls, layer: nn.Linear, path: PathKind = "auto",
                   sparse_threshold: float = DEFAULT_SPARSE_THRESHOLD) -> "MaskedLinear":
        """A masked twin of ``layer`` sharing nothing with it (weights copied, mask all ones)."""
        out = cls(layer.in_features, layer.out_features, bias=layer.bias is not None,
                  device=layer.weight.device, dtype=layer.weight.dtype, path=path,
                  sparse_threshold=sparse_threshold)
        out.load_state_dict(layer.state_dict())
        return out

    def to_dense(self) -> nn.Linear:
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        out.load_state_dict(self.state_dict())
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, path={self.path!r}"

    def sparse_index(self) -> SparseIndex:
        """The CSR/CSC index of the current mask (rebuilt only after the mask changed; read-only)."""
        with self._mask_lock:
            return self._index_cache.get(self._buffers["mask"], self._mask_key())

    def uses_sparse_path(self, x: torch.Tensor) -> bool:
        """Whether ``forward(x)`` takes the compiled sparse kernels (see the module docstring)."""
        with self._mask_lock:
            return self._choose_path(x) == "sparse"

    def _choose_path(self, x: torch.Tensor) -> str:
        n_in, n_out = self.in_features, self.out_features
        if self._path == "auto" and n_in * n_out < AUTO_MIN_WIDTH * (n_in + n_out):
            return "dense"  # narrow layers never gain from the kernels: skip the checks below
        weight, bias = self._parameters["weight"], self._parameters["bias"]
        if not (core_supported(x, weight, bias) or cuda.kernels_take(x, weight, bias)):
            return "torch"
        if self.path != "auto":
            return self.path
        # from the mask's count, before building anything: a dense layer never builds an index
        sparsity = 1.0 - self._mask_count() / max(1, n_in * n_out)
        if x.is_cuda:
            return "sparse" if sparsity >= CUDA_SPARSE_THRESHOLD and n_in * n_out >= CUDA_MIN_WEIGHTS else "dense"
        return "sparse" if sparsity >= self.sparse_threshold else "dense"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"MaskedLinear: input of shape {tuple(x.shape)} does not match in_features="
                f"{self.in_features} (weight shape {tuple(self.weight.shape)}); the last dimension "
                f"must be {self.in_features}"
            )
        if tracing():
            return self._traced_forward(x)
        with self._mask_lock:  # a mask change in another thread waits for this forward
            return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        self._refresh_pruned_weights()
        path = self._choose_path(x)
        # one dict lookup each: nn.Module attribute access costs ~1 us, noticeable on RL-sized layers
        weight, bias, mask = self._parameters["weight"], self._parameters["bias"], self._buffers["mask"]
        if path != "sparse" and self._mask_is_full():
            return F.linear(x, weight, bias)  # nothing pruned: nothing to mask
        if path == "torch":  # other devices and dtypes, autocast, empty batches
            return F.linear(x, weight * mask, bias)
        if path == "dense":
            if not (torch.is_grad_enabled() and weight.requires_grad):
                return F.linear(x, weight, bias)  # pruned weights are 0: nothing to mask
            if weight.numel() <= _SMALL_WEIGHT:
                # a small weight copy costs less than a Python autograd node (RL-sized layers)
                return F.linear(x, weight * self._mask_like_weight(), bias)
            return _DenseMaskedLinearFn.apply(x, weight, bias, self._mask_snapshot())
        bias = None if bias is None else bias.contiguous()
        x2d = (x if x.dim() == 2 else x.reshape(-1, self.in_features)).contiguous()
        y = sparse_index_linear(x2d, weight.contiguous(), bias, self._index_cache.get(mask, self._mask_key()))
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)

    def _traced_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The forward that torch.compile and torch.func trace: a pure function of the input, the
        parameters and the mask, with none of the layer's caches (they key on data pointers and
        version counters, which traced tensors lack). Under torch.compile ``path="sparse"``
        builds the mask's index in the graph (``lottery_fast::csr_index``) and runs the kernels;
        the other paths, inputs the kernels do not take, and torch.func transforms (custom
        operators' autograd does not support them) multiply by the mask (``"auto"`` would need
        the mask's count at trace time to choose)."""
        weight, bias, mask = self.weight, self.bias, self.mask
        if (self._path == "sparse" and not functorch_active()
                and (core_supported(x, weight, bias) or cuda.kernels_take(x, weight, bias))):
            x2d = x.reshape(-1, self.in_features).contiguous()
            row_ptr, col_idx = torch.ops.lottery_fast.csr_index(mask)
            bias = None if bias is None else bias.contiguous()
            y = sparse_linear(x2d, weight.contiguous(), bias, row_ptr, col_idx)
            return y.reshape(*x.shape[:-1], self.out_features)
        return F.linear(x, weight * mask, bias)
