"""Masked layers (drop-in for nn.Linear / nn.Conv2d) and model conversion."""
from .base import MaskedMixin, get_masks, masked_modules, set_masks
from .checkpoint import load, save
from .conv import MaskedConv2d
from .convert import masked, unmasked
from .linear import MaskedLinear
from .optim import keep_pruned_at_zero
from .packed import PackedConv2d, PackedLinear, packed, unpacked

__all__ = ["MaskedMixin", "MaskedLinear", "MaskedConv2d", "masked", "unmasked",
           "masked_modules", "get_masks", "set_masks", "keep_pruned_at_zero", "save", "load",
           "PackedLinear", "PackedConv2d", "packed", "unpacked"]
