"""Compressed index of a mask, built once per mask change and shared by the sparse kernels.

A weight of shape ``[out, ...]`` is viewed as a matrix ``[out, k]`` (k = in_features, or
in_channels/groups * kh * kw for a convolution). The index holds no weight values: kernels read
``weight[o * k + c]`` through it, so optimizer steps never invalidate it; only a mask edit does.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass(frozen=True)
class SparseIndex:
    rows: int
    cols: int
    nnz: int
    #: CSR over output rows: kept columns of row o are col_idx[row_ptr[o]:row_ptr[o+1]] (ascending)
    row_ptr: torch.Tensor  # int64 [rows + 1]
    col_idx: torch.Tensor  # int32 [nnz]
    #: CSC over input columns: kept rows of column c are row_idx[col_ptr[c]:col_ptr[c+1]] (ascending)
    col_ptr: torch.Tensor  # int64 [cols + 1]
    row_idx: torch.Tensor  # int32 [nnz]

    @cached_property
    def pointers(self) -> tuple:
        """Data pointers of (row_ptr, col_idx, col_ptr, row_idx), in the order the kernels take
        them (read once per index, not on every call)."""
        return (self.row_ptr.data_ptr(), self.col_idx.data_ptr(), self.col_ptr.data_ptr(),
                self.row_idx.data_ptr())

    @staticmethod
    def from_mask(mask: torch.Tensor) -> "SparseIndex":
        # built where the mask lives: the CPU kernels read CPU indices, the CUDA kernels device ones
        m = mask.detach().reshape(mask.shape[0], -1).to(dtype=torch.bool)
        rows, cols = m.shape
        r, c = m.nonzero(as_tuple=True)  # row-major order: sorted by row, then column
        tc, tr = m.t().nonzero(as_tuple=True)  # sorted by column, then row
        return SparseIndex(
            rows=rows,
            cols=cols,
            nnz=int(r.numel()),
            row_ptr=_ptr(r, rows),
            col_idx=c.to(torch.int32).contiguous(),
            col_ptr=_ptr(tc, cols),
            row_idx=tr.to(torch.int32).contiguous(),
        )


def _ptr(sorted_ids: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.zeros(n + 1, dtype=torch.int64, device=sorted_ids.device)
    out[1:] = torch.bincount(sorted_ids, minlength=n).cumsum(0)
    return out


class SparseIndexCache:
    """Rebuilds the index only when the mask tensor changed (new storage or in-place edit)."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._index: SparseIndex | None = None

    def get(self, mask: torch.Tensor) -> SparseIndex:
        key = (mask.data_ptr(), mask._version, tuple(mask.shape), mask.device)
        if self._index is None or key != self._key:
            self._index = SparseIndex.from_mask(mask)
            self._key = key
        return self._index
