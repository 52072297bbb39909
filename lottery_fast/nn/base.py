"""What every masked layer shares: the mask buffer, its validation, and keeping pruned weights at 0.

The mask is a non-persistent bool buffer, so ``state_dict()`` of a masked layer has exactly the
keys of the plain ``nn.Linear``/``nn.Conv2d`` (weights are zero where pruned) and loads both ways.
Masks travel separately: :func:`get_masks`/:func:`set_masks` (and the IMP checkpoints) carry them.
"""
from __future__ import annotations

from typing import Dict, Literal, Mapping

import torch
from torch import nn

from .. import _core
from .._buffers import DTYPE_CODES


def zero_pruned_(t: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``t[~keep] = 0`` in place (``keep`` bool of ``t``'s shape); returns ``t``.

    Contiguous CPU float32/float64 tensors go through the compiled core (torch's bool
    ``masked_fill_`` is several times slower); anything else through torch.
    """
    if (t.device.type == "cpu" and keep.device.type == "cpu" and t.dtype in DTYPE_CODES
            and t.is_contiguous() and keep.is_contiguous() and keep.dtype == torch.bool
            and t.shape == keep.shape):
        _core.zero_pruned(t.data_ptr(), keep.data_ptr(), t.numel(), DTYPE_CODES[t.dtype],
                          torch.get_num_threads())
    else:
        t.masked_fill_(~keep, 0)
    return t


#: forward path of a masked layer: "auto" picks by sparsity, the others force one
PathKind = Literal["auto", "dense", "sparse"]
PATHS = ("auto", "dense", "sparse")


class MaskedMixin:
    """Mixin for an ``nn.Module`` with a ``weight`` parameter: adds a bool ``mask`` of its shape."""

    weight: nn.Parameter
    mask: torch.Tensor

    # Validated on assignment so a typo fails where it is made, not at the next forward.
    @property
    def path(self) -> PathKind:
        """"auto" (sparse kernels from ``sparse_threshold`` sparsity), "dense" or "sparse"."""
        return self._path

    @path.setter
    def path(self, value: PathKind) -> None:
        if value not in PATHS:
            raise ValueError(f"{type(self).__name__}.path must be one of {PATHS}, got {value!r}")
        self._path = value

    @property
    def sparse_threshold(self) -> float:
        """Sparsity in [0, 1] from which ``path="auto"`` runs the sparse kernels."""
        return self._sparse_threshold

    @sparse_threshold.setter
    def sparse_threshold(self, value: float) -> None:
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{type(self).__name__}.sparse_threshold must be in [0, 1], got {value}")
        self._sparse_threshold = value

    def _init_mask(self) -> None:
        self.register_buffer("mask", torch.ones_like(self.weight, dtype=torch.bool), persistent=False)
        self._masked_weight_version: tuple = ()

    # -- mask access -------------------------------------------------------------------------
    def set_mask(self, mask: torch.Tensor) -> None:
        """Replace the mask (validated) and zero the weights it prunes."""
        mask = torch.as_tensor(mask)
        if mask.shape != self.weight.shape:
            raise ValueError(
                f"{type(self).__name__}.set_mask: mask shape {tuple(mask.shape)} does not match "
                f"weight shape {tuple(self.weight.shape)}"
            )
        if mask.dtype != torch.bool:
            if mask.dtype.is_floating_point or mask.dtype.is_complex or not torch.all((mask == 0) | (mask == 1)):
                raise TypeError(
                    f"{type(self).__name__}.set_mask: mask must be bool (or integer 0/1), got {mask.dtype}"
                )
            mask = mask.bool()
        with torch.no_grad():
            self.mask.copy_(mask.to(self.mask.device))
        self.apply_mask_()

    @torch.no_grad()
    def apply_mask_(self) -> None:
        """Zero the pruned weights (after an optimizer step, a load, or a manual edit)."""
        zero_pruned_(self.weight.data, self.mask)
        self._masked_weight_version = self._weight_mask_key()

    def _mask_like_weight(self) -> torch.Tensor:
        """The mask in the weight's dtype, cached per mask version: ``weight * mask`` with a bool
        mask pays a dtype promotion (a copy) on every call, measurable on RL-sized layers."""
        m, w = self._buffers["mask"], self._parameters["weight"]  # type: ignore[attr-defined]
        key = (m.data_ptr(), m._version, w.dtype, m.device)
        if getattr(self, "_mask_like_key", None) != key:
            self._mask_like = m.to(w.dtype)
            self._mask_like_key = key
        return self._mask_like

    def _mask_is_full(self) -> bool:
        """Whether nothing is pruned, cached per mask version: then the dense paths run the plain
        torch op with no masking at all (one device sync per mask change on a GPU)."""
        m = self._buffers["mask"]  # type: ignore[attr-defined]
        key = (m.data_ptr(), m._version, m.device)
        if getattr(self, "_full_key", None) != key:
            self._full = m.device.type != "meta" and bool(m.all())  # meta tensors hold no values
            self._full_key = key
        return self._full

    def _weight_mask_key(self) -> tuple:
        # Storage and version of both: a new or edited weight (optimizer step, load) or mask
        # (in-place edit, reassignment) means pruned weights must be zeroed again.
        # (the dicts directly: nn.Module.__getattr__ costs ~1 us per access, on every forward)
        w, m = self._parameters["weight"], self._buffers["mask"]  # type: ignore[attr-defined]
        return (w.data_ptr(), w._version, m.data_ptr(), m._version)

    def _refresh_pruned_weights(self) -> None:
        # An optimizer step (weight decay, a load, a manual edit) bumps the version counter; the
        # next forward puts pruned weights back to exactly zero. Writing through .data leaves the
        # version alone, so this costs one pass over the weight per optimizer step, not per call
        # (and a weight written through .data must be followed by apply_mask_()).
        if self._weight_mask_key() != self._masked_weight_version:
            self.apply_mask_()

    @property
    def density(self) -> float:
        n = self.mask.numel()
        return float(self.mask.sum().item()) / n if n else 0.0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[misc]
        self.apply_mask_()


def masked_modules(model: nn.Module) -> Dict[str, MaskedMixin]:
    """Every masked layer in ``model`` by qualified name, in registration order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, MaskedMixin)}


def get_masks(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Copies of the masks of all masked layers, keyed by module name."""
    return {name: m.mask.detach().clone() for name, m in masked_modules(model).items()}


def set_masks(model: nn.Module, masks: Mapping[str, torch.Tensor], strict: bool = True) -> None:
    """Install masks by module name; ``strict`` requires exactly the model's masked layers."""
    layers = masked_modules(model)
    if strict:
        missing = sorted(set(layers) - set(masks))
        unknown = sorted(set(masks) - set(layers))
        if missing or unknown:
            raise KeyError(f"set_masks: missing masks for {missing}, unknown layers {unknown}")
    for name, mask in masks.items():
        if name not in layers:
            raise KeyError(f"set_masks: {name!r} is not a masked layer of the model")
        layers[name].set_mask(mask)
