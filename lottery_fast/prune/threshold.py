"""Exact global top-k magnitude pruning over many tensors, in place in their masks.

:func:`prune_smallest_` wraps the compiled ``_core.prune_smallest_`` (csrc/threshold.cpp): a
multithreaded radix select on the bits of ``|w|`` that reads every weight in place, with no
concatenated copy, and writes the masks directly. Exactly ``k`` still-kept weights are pruned;
weights tied at the threshold go in (tensor order, flat index) order, lowest first, so the result
is a pure function of the inputs, whatever the thread count.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
from torch.autograd.graph import increment_version

from .. import _core, cuda
from .._buffers import cpu_ptr, dtype_code


@dataclass(frozen=True)
class ThresholdResult:
    #: largest |w| pruned by the call (weights tied with it may have been kept); -inf when k == 0
    threshold: float
    #: weights pruned by the call, per tensor, in input order
    pruned: List[int]


def prune_smallest_(
    weights: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    k: int,
    names: Optional[Sequence[str]] = None,
) -> ThresholdResult:
    """Prune, in place in ``masks``, the ``k`` kept weights with the smallest ``|w|`` over all tensors.

    ``weights[i]``: float32/float64 tensor (a mix of both is compared exactly); a non-contiguous
    one is read through a contiguous copy. ``masks[i]``: contiguous bool tensor of the same shape
    and device, ``True`` = kept; it is written in place, so it cannot be copied (error otherwise).
    All tensors live on the CPU, or all on one CUDA device (the CUDA core's radix select then runs
    on torch's current stream and synchronises it; same masks and threshold as on the CPU).
    ``k`` must be in ``[0, kept]``. A NaN/inf weight at a kept position raises ``ValueError``
    naming the tensor (``names[i]`` if given, else ``weights[i]``); on any error no mask changes.
    Weights are not modified: zeroing the pruned ones is the caller's job (``apply_mask_``).
    """
    if len(weights) != len(masks):
        raise ValueError(f"prune_smallest_: got {len(weights)} weight tensors but {len(masks)} masks")
    if names is None:
        names = [f"weights[{i}]" for i in range(len(weights))]
    elif len(names) != len(weights):
        raise ValueError(f"prune_smallest_: got {len(names)} names for {len(weights)} weight tensors")
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"prune_smallest_: k must be an int, got {type(k).__name__}")
    if k < 0:
        raise ValueError(f"prune_smallest_: k={k} is negative")

    readable: List[torch.Tensor] = []  # keeps contiguous copies alive during the call
    w_ptrs, m_ptrs, numels, dtypes = [], [], [], []
    seen_masks = set()
    device = weights[0].device if len(weights) and isinstance(weights[0], torch.Tensor) else torch.device("cpu")
    if device.type != "cpu" and not (device.type == "cuda" and cuda.built()):
        raise ValueError(f"prune_smallest_: tensors on {device} are not supported (CPU, or CUDA with the "
                         f"CUDA core built)")

    def ptr(t: torch.Tensor, what: str) -> int:
        return cpu_ptr(t, what) if device.type == "cpu" else cuda.device_ptr(t, what, device)

    for i, (w, m, name) in enumerate(zip(weights, masks, names)):
        label = f"{name} (tensor {i})"
        if not isinstance(w, torch.Tensor) or not isinstance(m, torch.Tensor):
            raise TypeError(f"prune_smallest_: {label}: weight and mask must be tensors")
        if w.shape != m.shape:
            raise ValueError(
                f"prune_smallest_: {label}: mask shape {tuple(m.shape)} != weight shape {tuple(w.shape)}"
            )
        if m.dtype != torch.bool:
            raise TypeError(f"prune_smallest_: {label}: mask must be torch.bool, got {m.dtype}")
        code = dtype_code(w, f"prune_smallest_: {label}: weight")
        w = w.detach()
        if w.device == device and not w.is_contiguous():
            w = w.contiguous()
        readable.append(w)
        w_ptrs.append(ptr(w, f"prune_smallest_: {label}: weight"))
        m_ptrs.append(ptr(m, f"prune_smallest_: {label}: mask (written in place)"))
        if m.numel() and m.data_ptr() in seen_masks:
            raise ValueError(f"prune_smallest_: {label}: mask shares its memory with an earlier mask")
        seen_masks.add(m.data_ptr())
        numels.append(w.numel())
        dtypes.append(code)

    if device.type == "cpu":
        threshold, pruned = _core.prune_smallest_(w_ptrs, m_ptrs, numels, dtypes, k, list(names))
    else:
        core = cuda.core()
        with cuda.on_device(device):
            workspace = torch.empty(core.threshold_workspace_words(numels), dtype=torch.int64, device=device)
            threshold, pruned = core.prune_smallest_(w_ptrs, m_ptrs, numels, dtypes, k, list(names),
                                                     workspace.data_ptr(), cuda.stream_of(device))
    # The core wrote through raw pointers; bump the version counters so that caches keyed on
    # ``mask._version`` (e.g. nn.sparse_index.SparseIndexCache) see the change.
    for m, p in zip(masks, pruned):
        if p:
            increment_version(m)
    return ThresholdResult(threshold=float(threshold), pruned=[int(p) for p in pruned])
