"""Swap every nn.Linear / nn.Conv2d of a model for its masked twin, and back."""
from __future__ import annotations

import copy

import torch
from torch import nn

from .conv import MaskedConv2d
from .linear import MaskedLinear

# One table for both directions; a new masked layer type registers here.
_TWINS = ((nn.Linear, MaskedLinear), (nn.Conv2d, MaskedConv2d))


def _swap(model: nn.Module, convert) -> nn.Module:
    replaced = convert(model)
    if replaced is not None:
        return replaced
    for name, child in list(model.named_children()):
        setattr(model, name, _swap(child, convert))
    return model


def masked(model: nn.Module, inplace: bool = False) -> nn.Module:
    """``model`` with every ``nn.Linear``/``nn.Conv2d`` replaced by a masked twin (weights kept).

    Copies the model first unless ``inplace``; already-masked layers are left as they are.
    """
    if not inplace:
        model = copy.deepcopy(model)

    def convert(m: nn.Module):
        for dense, twin in _TWINS:
            if type(m) is dense:
                return twin.from_dense(m)
        return None

    # building each twin runs its default init before the weights are copied in: keep that from
    # consuming the caller's global RNG, so masked(model) leaves later random draws unchanged
    with torch.random.fork_rng(devices=[]):
        return _swap(model, convert)


def unmasked(model: nn.Module, inplace: bool = False) -> nn.Module:
    """``model`` with every masked layer replaced by its plain torch layer (pruned weights are 0)."""
    if not inplace:
        model = copy.deepcopy(model)

    def convert(m: nn.Module):
        for _, twin in _TWINS:
            if type(m) is twin:
                return m.to_dense()
        return None

    return _swap(model, convert)
