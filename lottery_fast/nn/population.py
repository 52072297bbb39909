"""PopulationLinear: P masked linear layers of one shape, one per population member, in one op.

A population trains many small networks in lockstep (seeds x IMP conditions of one level). Their
weights are stacked along a leading member axis, ``weight [P, out, in]``, with a bool ``mask`` of
the same shape, and inputs are ``[P, batch, in]``. Pruned weights are exactly zero and get zero
gradient (the forward multiplies by the mask inside autograd), so Adam's moments stay zero there.

Paths, chosen per member from that member's own mask (so a member's output never depends on who
else is in the population):

* **dense**: one ``baddbmm`` over the dense members. Batched GEMM results per member do not depend
  on the batch count, except that a single-member batch of a GEMV shape (``out == 1`` or
  ``batch == 1``) takes another BLAS kernel; those shapes use a multiply-and-sum instead.
* **sparse**: the compiled kernels of :class:`~lottery_fast.nn.MaskedLinear` on the member's
  slice, for members whose layer is wide and sparse enough (the same rule as ``path="auto"``
  there); CPU float32/float64 only.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import nn

from .._buffers import core_supported
from .base import PATHS, PathKind
from .linear import AUTO_MIN_WIDTH, DEFAULT_SPARSE_THRESHOLD, MaskedLinear
from .ops import sparse_index_linear
from .sparse_index import SparseIndex


def _gemv_shaped(batch: int, n_out: int) -> bool:
    return batch == 1 or n_out == 1


def stacked_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``x[p] @ weight[p].T + bias[p]`` for every member p; per-member results independent of P."""
    if _gemv_shaped(x.shape[1], weight.shape[1]):
        y = (x.unsqueeze(-2) * weight.unsqueeze(1)).sum(-1)
        return y if bias is None else y + bias.unsqueeze(1)
    if bias is None:
        return torch.bmm(x, weight.transpose(1, 2))
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


class PopulationLinear(nn.Module):
    """``P`` linear layers ``in_features -> out_features`` with per-member masks.

    ``forward(x)`` takes ``[P, batch, in]`` and returns ``[P, batch, out]``.
    """

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], mask: Optional[torch.Tensor] = None,
                 path: PathKind = "auto", sparse_threshold: float = DEFAULT_SPARSE_THRESHOLD) -> None:
        super().__init__()
        if weight.dim() != 3:
            raise ValueError(f"PopulationLinear: weight must be [P, out, in], got shape {tuple(weight.shape)}")
        if bias is not None and bias.shape != weight.shape[:2]:
            raise ValueError(f"PopulationLinear: bias must be [P, out] = {tuple(weight.shape[:2])}, "
                             f"got {tuple(bias.shape)}")
        if mask is None:
            mask = torch.ones_like(weight, dtype=torch.bool)
        if mask.shape != weight.shape or mask.dtype != torch.bool:
            raise ValueError(f"PopulationLinear: mask must be bool of shape {tuple(weight.shape)}, "
                             f"got {mask.dtype} {tuple(mask.shape)}")
        if path not in PATHS:
            raise ValueError(f"PopulationLinear.path must be one of {PATHS}, got {path!r}")
        self.weight = nn.Parameter(weight.detach().clone() * mask)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.register_buffer("mask", mask.detach().clone())
        self.path = path
        self.sparse_threshold = float(sparse_threshold)
        self._refresh()

    @classmethod
    def from_layers(cls, layers: Sequence[MaskedLinear], path: PathKind = "auto") -> "PopulationLinear":
        """One population layer from the members' :class:`MaskedLinear` layers (copied)."""
        shapes = {tuple(l.weight.shape) for l in layers}
        if len(shapes) != 1 or len({l.bias is None for l in layers}) != 1:
            raise ValueError(f"PopulationLinear.from_layers: members differ in shape or bias: {sorted(shapes)}")
        with torch.no_grad():
            weight = torch.stack([l.weight.detach() for l in layers])
            bias = None if layers[0].bias is None else torch.stack([l.bias.detach() for l in layers])
            mask = torch.stack([l.mask.detach() for l in layers])
        return cls(weight, bias, mask, path=path, sparse_threshold=layers[0].sparse_threshold)

    @torch.no_grad()
    def write_to(self, layer: MaskedLinear, member: int) -> None:
        """Copy member ``member``'s weights into ``layer`` (its mask must be that member's)."""
        if not torch.equal(layer.mask, self.mask[member]):
            raise ValueError(f"PopulationLinear.write_to: the layer's mask is not member {member}'s")
        layer.weight.copy_(self.weight[member])
        if self.bias is not None:
            layer.bias.copy_(self.bias[member])
        layer.apply_mask_()

    @property
    def members(self) -> int:
        return self.weight.shape[0]

    def _refresh(self) -> None:
        """Per-member path and sparse index, from the masks (they are fixed while a population trains)."""
        P, n_out, n_in = self.weight.shape
        self._mask_f = self.mask.to(self.weight.dtype)
        kept = self.mask.reshape(P, -1).sum(1).tolist()
        self._full = all(k == n_in * n_out for k in kept)  # nothing pruned (an excluded critic): no masking
        wide = n_in * n_out >= AUTO_MIN_WIDTH * (n_in + n_out)
        sparse: List[int] = []
        for p, k in enumerate(kept):
            sparsity = 1.0 - k / max(1, n_in * n_out)
            if self.path == "sparse" or (self.path == "auto" and wide and sparsity >= self.sparse_threshold):
                sparse.append(p)
        self._sparse = sparse
        self._index = {p: SparseIndex.from_mask(self.mask[p]) for p in sparse}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        P = self.weight.shape[0]
        if x.dim() != 3 or x.shape[0] != P or x.shape[2] != self.weight.shape[2]:
            raise ValueError(f"PopulationLinear: input must be [P={P}, batch, in={self.weight.shape[2]}], "
                             f"got {tuple(x.shape)}")
        grad = torch.is_grad_enabled() and self.weight.requires_grad
        # pruned weights are exactly zero; the product keeps their gradient at zero too
        weight = self.weight * self._mask_f if grad and not self._full else self.weight
        sparse = self._sparse if core_supported(x, self.weight, self.bias) else []
        if not sparse:
            return stacked_linear(x, weight, self.bias)
        outs: List[Optional[torch.Tensor]] = [None] * P
        dense = [p for p in range(P) if p not in self._index]
        if dense:
            idx = torch.tensor(dense)
            y = stacked_linear(x[idx], weight[idx], None if self.bias is None else self.bias[idx])
            for j, p in enumerate(dense):
                outs[p] = y[j]
        # unbind, not indexing: its backward stacks the members' gradients once, where P selects
        # would each scatter into a zeroed full-size gradient
        weights, xs = self.weight.unbind(0), x.unbind(0)
        biases = [None] * P if self.bias is None else self.bias.unbind(0)
        for p in sparse:
            outs[p] = sparse_index_linear(xs[p].contiguous(), weights[p], biases[p], self._index[p])
        return torch.stack(outs)  # type: ignore[arg-type]

    def extra_repr(self) -> str:
        P, n_out, n_in = self.weight.shape
        return f"members={P}, in_features={n_in}, out_features={n_out}, path={self.path!r}"
