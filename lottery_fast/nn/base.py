"""What every masked layer shares: the mask buffer, its validation, and keeping pruned weights at 0.

The mask is a non-persistent bool buffer, so ``state_dict()`` of a masked layer has exactly the
keys of the plain ``nn.Linear``/``nn.Conv2d`` (weights are zero where pruned) and loads both ways.
Masks travel separately: :func:`get_masks`/:func:`set_masks` (and the IMP checkpoints) carry them.

Mask changes a layer sees (and after which it rebuilds its sparse index, recounts its density
and re-zeroes pruned weights at the next forward): :meth:`MaskedMixin.set_mask`, assigning
``layer.mask = t`` (a bool tensor of the weight's shape), in-place writes through torch
(``layer.mask[i] = False``, ``mask.copy_``, :func:`lottery_fast.prune.prune_model`), moving the
layer (``.to``, ``.cuda``) and loading a state dict. Each bumps a generation counter the layer
owns, or the mask tensor's ``_version``. Writes the layer cannot see: through ``mask.data``
(which has its own version counter), through raw pointers or a NumPy view, and rebinding
``mask.data = t``; after such a write call :meth:`MaskedMixin.refresh_mask_`.

Threads: a layer's forward and its mask changes take the layer's :attr:`MaskedMixin.mask_lock`,
so a forward sees the mask from before or after a change, never a half-written one (and
forwards of one layer from several threads run one at a time). Code that writes a mask by other
means from another thread (its own kernels) should hold ``layer.mask_lock`` while it writes.
Backward passes are not serialised with mask changes: a backward after a change uses the mask
(index) of its forward, and the sparse paths also its kept weights; the dense paths read the
weights as they are then, with the newly pruned ones zeroed by the change.
"""
from __future__ import annotations

import threading
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


def functorch_active() -> bool:
    """Whether a torch.func transform (grad, vmap, jacrev, ...) is running the caller."""
    return torch._C._are_functorch_transforms_active()


def tracing() -> bool:
    """Whether torch.compile (dynamo) or a torch.func transform is tracing the caller: then the
    layers run their pure forward, without the caches and in-place refreshes of the eager one."""
    return torch.compiler.is_compiling() or functorch_active()


#: forward path of a masked layer: "auto" picks by sparsity, the others force one
PathKind = Literal["auto", "dense", "sparse"]
PATHS = ("auto", "dense", "sparse")


class MaskedLayer:
    """What :func:`masked_modules` reports: every layer with a prunable ``mask`` (the MaskedMixin
    layers, and the packed layers of nn/packed.py, which keep only their kept weights), with the
    forward-path settings they share."""

    # Validated on assignment so a typo fails where it is made, not at the next forward; written to
    # the instance dict directly (plain values: nn.Module's __setattr__ would only do the same).
    @property
    def path(self) -> PathKind:
        """"auto" (the compiled kernels from ``sparse_threshold`` sparsity), "dense" or "sparse"."""
        return self._path

    @path.setter
    def path(self, value: PathKind) -> None:
        if value not in PATHS:
            raise ValueError(f"{type(self).__name__}.path must be one of {PATHS}, got {value!r}")
        self.__dict__["_path"] = value

    @property
    def sparse_threshold(self) -> float:
        """Sparsity in [0, 1] from which ``path="auto"`` runs the compiled kernels."""
        return self._sparse_threshold

    @sparse_threshold.setter
    def sparse_threshold(self, value: float) -> None:
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{type(self).__name__}.sparse_threshold must be in [0, 1], got {value}")
        self.__dict__["_sparse_threshold"] = value


class MaskedMixin(MaskedLayer):
    """Mixin for an ``nn.Module`` with a ``weight`` parameter: adds a bool ``mask`` of its shape."""

    weight: nn.Parameter
    mask: torch.Tensor

    def _init_mask(self) -> None:
        self._mask_lock = threading.RLock()
        self._mask_gen = 0
        self.register_buffer("mask", torch.ones_like(self.weight, dtype=torch.bool), persistent=False)
        self._masked_weight_version: tuple = ()

    # -- seeing every mask change -----------------------------------------------------------------
    @property
    def mask_lock(self) -> threading.RLock:
        """Held by this layer's forward and by every mask change it makes; hold it to write the mask
        by other means while another thread may run the layer (re-entrant)."""
        return self._mask_lock

    def __setattr__(self, name: str, value) -> None:
        if name != "mask" or "_mask_lock" not in self.__dict__:
            super().__setattr__(name, value)  # type: ignore[misc]
            return
        if not isinstance(value, torch.Tensor) or value.dtype != torch.bool or value.shape != self.weight.shape:
            got = (f"{value.dtype} tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor)
                   else type(value).__name__)
            raise TypeError(f"{type(self).__name__}.mask must be a torch.bool tensor of the weight's shape "
                            f"{tuple(self.weight.shape)}, got {got} (set_mask also takes 0/1 integers)")
        with self._mask_lock:
            super().__setattr__(name, value)  # type: ignore[misc]
            self._mask_gen += 1

    def register_buffer(self, name: str, tensor, persistent: bool = True) -> None:  # type: ignore[override]
        super().register_buffer(name, tensor, persistent)  # type: ignore[misc]
        if name == "mask":
            self._mask_gen += 1

    def _apply(self, fn, *args, **kwargs):  # type: ignore[override]
        # .to()/.cuda()/.share_memory_() replace the buffer without __setattr__
        with self._mask_lock:
            out = super()._apply(fn, *args, **kwargs)  # type: ignore[misc]
            self._mask_gen += 1
        return out

    def _replicate_for_data_parallel(self):  # type: ignore[override]
        replica = super()._replicate_for_data_parallel()  # type: ignore[misc]
        replica.__dict__["_mask_lock"] = threading.RLock()  # replicas run at once, on their own masks
        return replica

    def __getstate__(self):
        state = dict(super().__getstate__())  # type: ignore[misc]
        state.pop("_mask_lock", None)  # a lock cannot be pickled or deep-copied
        return state

    def __setstate__(self, state) -> None:
        super().__setstate__(state)  # type: ignore[misc]
        self.__dict__["_mask_lock"] = threading.RLock()
        # a copy's mask is another tensor: nothing cached for the original's may be taken for it
        self.__dict__["_mask_gen"] = self.__dict__.get("_mask_gen", 0) + 1

    def _mask_key(self) -> tuple:
        """What identifies the current mask: the layer's generation (bumped by every assignment,
        set_mask, move and load) and the tensor's version (in-place writes through torch). The
        data pointer on top catches most rebindings of ``mask.data``; alone it could not tell a new
        mask from a freed one whose memory was reused."""
        m = self._buffers["mask"]  # type: ignore[attr-defined]
        return (self._mask_gen, m._version, m.data_ptr())

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
        with self._mask_lock, torch.no_grad():
            self.mask.copy_(mask.to(self.mask.device))
            self._mask_gen += 1
            self.apply_mask_()

    def refresh_mask_(self) -> None:
        """Take note of a mask change the layer cannot see (a write through ``mask.data``, raw
        pointers or a NumPy view): rebuild the index, recount the density and zero the weights the
        mask now prunes."""
        with self._mask_lock:
            self._mask_gen += 1
            self.apply_mask_()

    @torch.no_grad()
    def apply_mask_(self) -> None:
        """Zero the pruned weights (after an optimizer step, a load, or a manual edit)."""
        with self._mask_lock:
            zero_pruned_(self.weight.data, self.mask)
            self._masked_weight_version = self._weight_mask_key()

    def _mask_count(self) -> int:
        """Kept weights, counted once per mask change: the path choice and the density read it
        before (and instead of) building any index (one device sync per mask change on a GPU)."""
        key = self._mask_key()
        if self.__dict__.get("_count_key") != key:
            m = self._buffers["mask"]  # type: ignore[attr-defined]
            # meta tensors hold no values: count them as full
            self.__dict__["_count"] = m.numel() if m.device.type == "meta" else int(m.count_nonzero())
            self.__dict__["_count_key"] = key
        return self.__dict__["_count"]

    def _mask_like_weight(self) -> torch.Tensor:
        """The mask in the weight's dtype, cached per mask version: ``weight * mask`` with a bool
        mask pays a dtype promotion (a copy) on every call, measurable on RL-sized layers. A new
        tensor per mask change, never written in place, so a graph that saved it stays valid."""
        m, w = self._buffers["mask"], self._parameters["weight"]  # type: ignore[attr-defined]
        key = (self._mask_key(), w.dtype, m.device)
        if self.__dict__.get("_mask_like_key") != key:
            self.__dict__["_mask_like"] = m.to(w.dtype)
            self.__dict__["_mask_like_key"] = key
        return self.__dict__["_mask_like"]

    def _mask_snapshot(self) -> torch.Tensor:
        """A copy of the mask, cached per mask change, for graphs to save: the buffer itself may be
        written in place before the backward runs (another thread pruning)."""
        key = self._mask_key()
        if self.__dict__.get("_snapshot_key") != key:
            self.__dict__["_snapshot"] = None  # free the old copy first
            self.__dict__["_snapshot"] = self._buffers["mask"].clone()  # type: ignore[attr-defined]
            self.__dict__["_snapshot_key"] = key
        return self.__dict__["_snapshot"]

    def _mask_is_full(self) -> bool:
        """Whether nothing is pruned: then the dense paths run the plain torch op with no masking."""
        return self._mask_count() == self._buffers["mask"].numel()  # type: ignore[attr-defined]

    def _weight_mask_key(self) -> tuple:
        # Storage and version of the weight plus the mask's key: a new or edited weight (optimizer
        # step, load) or mask (assignment, in-place edit) means pruned weights must be zeroed again.
        # (the dicts directly: nn.Module.__getattr__ costs ~1 us per access, on every forward)
        w = self._parameters["weight"]  # type: ignore[attr-defined]
        return (w.data_ptr(), w._version) + self._mask_key()

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
        with self._mask_lock:
            return self._mask_count() / n if n else 0.0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        with self._mask_lock:
            super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[misc]
            self._mask_gen += 1
            self.apply_mask_()


def masked_modules(model: nn.Module) -> Dict[str, MaskedMixin]:
    """Every masked layer in ``model`` (packed ones included) by qualified name, in registration order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, MaskedLayer)}


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
