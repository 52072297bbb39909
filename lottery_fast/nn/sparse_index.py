"""Compressed index of a mask, built once per mask change and shared by the sparse kernels.

A weight of shape ``[out, ...]`` is viewed as a matrix ``[out, k]`` (k = in_features, or
in_channels/groups * kh * kw for a convolution). The index holds no weight values: kernels read
``weight[o * k + c]`` through it, so optimizer steps never invalidate it; only a mask edit does.

Memory: the CSR costs 4 bytes per kept weight plus 8 per row, the CSC as much again. An index
built by :meth:`SparseIndex.from_mask` on the CPU builds its CSC only when a kernel first needs
it (the input gradient of a backward pass), so a forward-only index of a float32 layer costs
about what its kept weights do. Building needs no memory beyond the index itself (no int64
``nonzero()`` pairs); on other devices the index is built in chunks of about
``_CHUNK_ELEMENTS`` mask entries.

An index is immutable: the kernels trust the indices they built, so writing into the tensors of
one (``index.col_idx[0] = ...``) is not supported; edit the mask instead. User-built indices
(``SparseIndex(rows, cols, nnz, row_ptr, col_idx, col_ptr, row_idx)``) are checked in full by
:meth:`SparseIndex.validate` at every public entry that takes one (``nn.conv.sparse_conv2d``).
"""
from __future__ import annotations

import threading
from functools import cached_property
from typing import Optional, Tuple

import torch

from .. import _core

#: Largest row or column count of an index: its entries are int32.
INT32_MAX = 2**31 - 1
#: Mask entries per chunk when building an index off the CPU (16 MiB of int64 pairs at most).
_CHUNK_ELEMENTS = 1 << 20

# Serialises the lazy CSC builds: two backward passes sharing an index must not both install one
# (the kernels of the first could be reading the tensors the second replaces).
_CSC_LOCK = threading.Lock()


def check_index_range(rows: int, cols: int, what: str = "SparseIndex") -> None:
    """Raise ``ValueError`` if a [rows, cols] matrix cannot be indexed with int32 entries."""
    if rows > INT32_MAX or cols > INT32_MAX:
        raise ValueError(f"{what}: a mask viewed as [{rows}, {cols}] has more than {INT32_MAX} rows or columns; "
                         f"the index stores int32 row and column numbers")


class SparseIndex:
    """CSR and CSC of a bool mask viewed as ``[rows, cols]`` (no values).

    * CSR over output rows: kept columns of row o are ``col_idx[row_ptr[o]:row_ptr[o+1]]``
      (ascending); ``row_ptr`` int64 ``[rows + 1]``, ``col_idx`` int32 ``[nnz]``.
    * CSC over input columns: kept rows of column c are ``row_idx[col_ptr[c]:col_ptr[c+1]]``
      (ascending); ``col_ptr`` int64 ``[cols + 1]``, ``row_idx`` int32 ``[nnz]``.

    All four live on one device and are contiguous. Build one with :meth:`from_mask`; the
    constructor takes a hand-made index, which the public entries check in full before use.
    """

    def __init__(self, rows: int, cols: int, nnz: int, row_ptr: torch.Tensor, col_idx: torch.Tensor,
                 col_ptr: torch.Tensor, row_idx: torch.Tensor) -> None:
        self._init(rows, cols, nnz, row_ptr, col_idx, col_ptr, row_idx, trusted=False)

    def _init(self, rows, cols, nnz, row_ptr, col_idx, col_ptr, row_idx, trusted: bool) -> None:
        for name, value in (("rows", rows), ("cols", cols), ("nnz", nnz), ("row_ptr", row_ptr),
                            ("col_idx", col_idx), ("_col_ptr", col_ptr), ("_row_idx", row_idx),
                            ("_trusted", trusted)):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_versions", self._tensor_versions() if trusted else None)

    def __setattr__(self, name, value):
        raise AttributeError(f"SparseIndex is immutable (cannot set {name!r}); build a new one from the mask")

    def __repr__(self) -> str:
        csc = "built" if self._col_ptr is not None else "not built yet"
        return (f"SparseIndex(rows={self.rows}, cols={self.cols}, nnz={self.nnz}, "
                f"device={self.row_ptr.device}, csc {csc})")

    # -- the CSC, built on first use for indices of ours ------------------------------------------
    @property
    def col_ptr(self) -> torch.Tensor:
        return self._csc()[0]

    @property
    def row_idx(self) -> torch.Tensor:
        return self._csc()[1]

    def _csc(self) -> Tuple[torch.Tensor, torch.Tensor]:
        if self._col_ptr is None:
            with _CSC_LOCK:
                if self._col_ptr is None:
                    col_ptr, row_idx = cpu_csc(self.row_ptr, self.col_idx, self.rows, self.cols)
                    object.__setattr__(self, "_row_idx", row_idx)
                    object.__setattr__(self, "_col_ptr", col_ptr)  # last: readers test _col_ptr
                    if self._trusted:
                        object.__setattr__(self, "_versions", self._tensor_versions())
        return self._col_ptr, self._row_idx

    @property
    def nbytes(self) -> int:
        """Bytes held by the index tensors built so far."""
        parts = (self.row_ptr, self.col_idx, self._col_ptr, self._row_idx)
        return sum(t.numel() * t.element_size() for t in parts if t is not None)

    @cached_property
    def csr_pointers(self) -> tuple:
        """Data pointers of (row_ptr, col_idx), read once per index (the forward kernels' part)."""
        return (self.row_ptr.data_ptr(), self.col_idx.data_ptr())

    @cached_property
    def pointers(self) -> tuple:
        """Data pointers of (row_ptr, col_idx, col_ptr, row_idx), in the order the kernels take
        them (read once per index, not on every call; builds the CSC if it is not built yet)."""
        col_ptr, row_idx = self._csc()
        return self.csr_pointers + (col_ptr.data_ptr(), row_idx.data_ptr())

    # -- building ------------------------------------------------------------------------------
    @staticmethod
    def from_mask(mask: torch.Tensor) -> "SparseIndex":
        """The index of ``mask`` (bool, or 0/1 integers), viewed as ``[mask.shape[0], -1]``, built
        on the mask's device (the CPU kernels read CPU indices, the CUDA kernels device ones).

        Raises ``ValueError`` when the view has more than 2**31 - 1 rows or columns, and
        ``RuntimeError`` when another thread changes the mask while the index is built."""
        if mask.dim() == 0:
            raise ValueError("SparseIndex.from_mask: the mask must have at least one dimension")
        rows = int(mask.shape[0])
        cols = mask.numel() // rows if rows else int(torch.Size(mask.shape[1:]).numel())
        check_index_range(rows, cols, "SparseIndex.from_mask")
        m = mask.detach().reshape(rows, cols)
        m = (m if m.dtype == torch.bool else m.to(dtype=torch.bool)).contiguous()
        if m.device.type == "cpu":
            row_ptr, col_idx = cpu_csr(m, rows, cols)
            col_ptr = row_idx = None  # built from the CSR when a backward first needs it
            nnz = col_idx.numel()
        else:
            row_ptr, col_idx = _compressed_in_chunks(m)
            col_ptr, row_idx = _compressed_in_chunks(m.t())
            nnz = col_idx.numel()
        index = SparseIndex.__new__(SparseIndex)
        index._init(rows, cols, nnz, row_ptr, col_idx, col_ptr, row_idx, trusted=True)
        return index

    # -- checking ------------------------------------------------------------------------------
    def _tensor_versions(self) -> tuple:
        return tuple(None if t is None else t._version
                     for t in (self.row_ptr, self.col_idx, self._col_ptr, self._row_idx))

    def validate(self, rows: Optional[int] = None, cols: Optional[int] = None,
                 device: Optional[torch.device] = None, what: str = "index") -> "SparseIndex":
        """Raise ``ValueError``/``TypeError`` naming the problem unless the kernels can read this
        index safely: for ``rows`` x ``cols`` (when given) on ``device`` (when given).

        Always: types, dtypes (int64 pointers, int32 entries), shapes, contiguity, one device.
        For an index not built by :meth:`from_mask` (or whose tensors were edited in place since),
        also a full scan: pointers start at 0, never decrease and end at ``nnz``; entries in range,
        strictly ascending per row (column), and the CSC holds exactly the entries of the CSR.
        Returns the index. Writes through ``.data`` or raw pointers are not seen by the version
        check: do not edit an index's tensors at all.
        """
        name = f"{what} (SparseIndex)"
        for attr in ("rows", "cols", "nnz"):
            v = getattr(self, attr)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name}: {attr} must be an int >= 0, got {v!r}")
        if rows is not None and cols is not None and (self.rows, self.cols) != (rows, cols):
            raise ValueError(f"{name}: index is [{self.rows}, {self.cols}] but the weight needs [{rows}, {cols}]")
        check_index_range(self.rows, self.cols, name)
        if self.nnz > self.rows * self.cols:
            raise ValueError(f"{name}: nnz={self.nnz} exceeds rows*cols={self.rows * self.cols}")
        built_csc = self._col_ptr is not None
        parts = [("row_ptr", self.row_ptr, torch.int64, self.rows + 1), ("col_idx", self.col_idx, torch.int32, self.nnz)]
        if built_csc or not self._trusted:
            parts += [("col_ptr", self._col_ptr, torch.int64, self.cols + 1),
                      ("row_idx", self._row_idx, torch.int32, self.nnz)]
        dev = self.row_ptr.device if isinstance(self.row_ptr, torch.Tensor) else None
        for part, t, dtype, length in parts:
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}: {part} must be a tensor, got {type(t).__name__}")
            if t.dtype != dtype:
                raise TypeError(f"{name}: {part} must be {dtype}, got {t.dtype}")
            if t.dim() != 1 or t.numel() != length:
                raise ValueError(f"{name}: {part} must have shape ({length},), got {tuple(t.shape)}")
            if not t.is_contiguous():
                raise ValueError(f"{name}: {part} must be contiguous")
            if t.device != dev:
                raise ValueError(f"{name}: {part} is on {t.device} but row_ptr is on {dev}")
        if device is not None and dev != device:
            raise ValueError(f"{name}: index is on {dev} but the input is on {device}")
        if not (self._trusted and self._versions == self._tensor_versions()):
            self._full_check(name)  # (skipped for an index built by from_mask and not written since)
        return self

    def _full_check(self, name: str) -> None:
        rows, cols, nnz = self.rows, self.cols, self.nnz
        row_ptr, col_idx, col_ptr, row_idx = self.row_ptr, self.col_idx, self._col_ptr, self._row_idx
        # An index of ours whose CSC is not built yet gets it from its CSR later: check the CSR.
        compressed = [("row_ptr", row_ptr, "col_idx", col_idx, cols)]
        if col_ptr is not None:
            compressed.append(("col_ptr", col_ptr, "row_idx", row_idx, rows))
        for ptr_name, ptr, idx_name, idx, bound in compressed:
            ends = torch.stack([ptr[0], ptr[-1]]).tolist()
            if ends != [0, nnz]:
                raise ValueError(f"{name}: {ptr_name} must run from 0 to nnz={nnz}, got {ends[0]}..{ends[1]}")
            if bool((ptr.diff() < 0).any()):
                raise ValueError(f"{name}: {ptr_name} must not decrease")
            if nnz:
                lo, hi = (int(v) for v in torch.aminmax(idx))
                if lo < 0 or hi >= bound:
                    raise ValueError(f"{name}: {idx_name} holds {lo if lo < 0 else hi}, outside [0, {bound})")
        if nnz == 0:
            return
        device = row_ptr.device
        # Entry keys row * cols + col: strictly ascending in CSR order exactly when every row's
        # columns ascend without repeats; the CSC must hold the same keys.
        csr_rows = torch.repeat_interleave(torch.arange(rows, device=device), row_ptr.diff())
        csr_keys = csr_rows * cols + col_idx
        del csr_rows
        if bool((csr_keys.diff() <= 0).any()):
            raise ValueError(f"{name}: col_idx must be strictly ascending within each row")
        if col_ptr is None:
            return
        csc_cols = torch.repeat_interleave(torch.arange(cols, device=device), col_ptr.diff())
        if bool(((csc_cols * rows + row_idx).diff() <= 0).any()):
            raise ValueError(f"{name}: row_idx must be strictly ascending within each column")
        csc_keys = torch.sort(row_idx.to(torch.int64) * cols + csc_cols).values
        if not torch.equal(csr_keys, csc_keys):
            raise ValueError(f"{name}: the CSC (col_ptr, row_idx) does not hold the same entries as the CSR "
                             f"(row_ptr, col_idx)")


def check_index(index: object, rows: Optional[int] = None, cols: Optional[int] = None,
                device: Optional[torch.device] = None, what: str = "index") -> SparseIndex:
    """``index.validate(...)`` after checking that it is a :class:`SparseIndex` at all."""
    if not isinstance(index, SparseIndex):
        raise TypeError(f"{what}: expected a SparseIndex, got {type(index).__name__}")
    return index.validate(rows, cols, device, what)


def cpu_csr(m: torch.Tensor, rows: int, cols: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(row_ptr int64 [rows + 1], col_idx int32 [nnz]) of a contiguous bool CPU [rows, cols] matrix,
    by the compiled core: one counting pass, then the fill, and no int64 pairs."""
    threads = torch.get_num_threads()
    row_ptr = torch.empty(rows + 1, dtype=torch.int64)
    nnz = _core.sparse_index_row_counts(m.data_ptr(), rows, cols, row_ptr.data_ptr(), threads)
    col_idx = torch.empty(nnz, dtype=torch.int32)
    _core.sparse_index_fill_rows(m.data_ptr(), rows, cols, row_ptr.data_ptr(), col_idx.data_ptr(), threads)
    return row_ptr, col_idx


def cpu_csc(row_ptr: torch.Tensor, col_idx: torch.Tensor, rows: int, cols: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(col_ptr int64 [cols + 1], row_idx int32 [nnz]): the CSC of a CPU CSR, by the compiled core."""
    col_ptr = torch.empty(cols + 1, dtype=torch.int64)
    row_idx = torch.empty(col_idx.numel(), dtype=torch.int32)
    _core.sparse_index_transpose(row_ptr.data_ptr(), col_idx.data_ptr(), rows, cols, col_ptr.data_ptr(),
                                 row_idx.data_ptr())
    return col_ptr, row_idx


def _compressed_in_chunks(m: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(ptr int64 [rows + 1], idx int32 [nnz]) of a bool [rows, cols] matrix, ``nonzero()`` a chunk
    of rows at a time so that its int64 pairs stay small."""
    rows, cols = m.shape
    ptr = torch.zeros(rows + 1, dtype=torch.int64, device=m.device)
    torch.cumsum(m.sum(1), 0, out=ptr[1:])
    bounds = ptr.cpu().tolist()  # one sync, then no per-chunk reads of ptr
    idx = torch.empty(bounds[-1], dtype=torch.int32, device=m.device)
    step = max(1, _CHUNK_ELEMENTS // max(1, cols))
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        # a count that changed since (another stream writing the mask) fails the copy: a size error
        idx[bounds[r0]:bounds[r1]].copy_(m[r0:r1].nonzero()[:, 1])
    return ptr, idx


class SparseIndexCache:
    """The index of a layer's mask, rebuilt only when the layer's mask key changes.

    The key is the layer's (mask generation, mask ``_version``, data pointer), see
    ``MaskedMixin._mask_key``: a data pointer alone cannot tell a new mask from an old one freed
    and reallocated at the same address.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._index: SparseIndex | None = None

    def get(self, mask: torch.Tensor, key: tuple) -> SparseIndex:
        if self._index is None or key != self._key:
            self._index = None  # free the old index before building the new one
            self._index = SparseIndex.from_mask(mask)
            self._key = key
        return self._index

    def __deepcopy__(self, memo) -> "SparseIndexCache":
        return SparseIndexCache()  # the copy's mask is another tensor: rebuild from it when needed
