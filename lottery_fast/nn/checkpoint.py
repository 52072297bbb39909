"""Saving and loading a masked model with its masks: :func:`save` and :func:`load`.

A masked layer's ``state_dict()`` is that of the plain ``nn.Linear``/``nn.Conv2d`` (the mask is a
non-persistent buffer), so that plain and masked models load each other's state. The price is that
``torch.save(model.state_dict())`` drops the masks: loaded into a fresh masked model, the pruned
weights are zero but not pruned, and training grows them back. :func:`save` writes the state dict
and the masks (``get_masks``) side by side in one file; :func:`load` restores both. ``load`` also
takes a plain state dict file (``torch.save(model.state_dict())``, of a masked or an unmasked
model): it loads the weights and leaves the masks as they are.

The file is a ``torch.save`` of ``{"format", "state_dict", "masks"}`` (tensors and strings only,
read with ``weights_only=True``), written atomically. Code with its own checkpoint format stores
:func:`~lottery_fast.nn.get_masks` beside the state dict and calls
:func:`~lottery_fast.nn.set_masks` after loading it.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

from .._atomic import atomic_write
from .base import get_masks, set_masks

#: the ``format`` entry of a file written by :func:`save`
FORMAT = "lottery_fast.masked_model.v1"

PathLike = Union[str, os.PathLike]


def save(model: nn.Module, path: PathLike) -> None:
    """Write ``model``'s state dict and the masks of its masked layers to ``path`` (atomically)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"lottery_fast.save: expected an nn.Module, got {type(model).__name__}")
    payload = {"format": FORMAT, "state_dict": model.state_dict(), "masks": get_masks(model)}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load(model: nn.Module, source: Union[PathLike, Mapping[str, Any]], strict: bool = True,
         map_location: Optional[Union[str, torch.device]] = None) -> nn.Module:
    """Load what :func:`save` wrote (a path, or the dict ``torch.load`` read from it) into ``model``.

    Weights go in by ``model.load_state_dict(..., strict=strict)``, then the masks by
    :func:`~lottery_fast.nn.set_masks` (``strict``: the file and the model have exactly the same
    masked layers), which zeroes the weights each mask prunes. A plain state dict (no ``format``
    entry) loads as weights only, masks unchanged. Returns ``model``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"lottery_fast.load: expected an nn.Module to load into, got {type(model).__name__}")
    obj = source if isinstance(source, Mapping) else torch.load(source, map_location=map_location,
                                                                weights_only=True)
    if not isinstance(obj, Mapping):
        raise TypeError(f"lottery_fast.load: {source!r} holds a {type(obj).__name__}, not a state dict")
    if "format" not in obj:  # a plain state dict
        model.load_state_dict(obj, strict=strict)
        return model
    if obj["format"] != FORMAT or not {"state_dict", "masks"} <= set(obj):
        raise ValueError(f"lottery_fast.load: unknown checkpoint format {obj['format']!r} with entries "
                         f"{sorted(obj)} (expected {FORMAT!r} with 'state_dict' and 'masks')")
    model.load_state_dict(obj["state_dict"], strict=strict)
    set_masks(model, obj["masks"], strict=strict)
    return model
