"""Optimizer glue for masked models."""
from __future__ import annotations

from torch import nn
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

from .base import masked_modules


def keep_pruned_at_zero(optimizer: Optimizer, model: nn.Module) -> RemovableHandle:
    """Re-apply every masked layer's mask right after each ``optimizer.step()``.

    Masked layers already give pruned weights a zero gradient and re-zero them before the next
    forward. What this adds: weights are exactly zero *between* a step and the next forward
    (checkpoints, weight statistics) even when the optimizer moves pruned weights by itself,
    e.g. with momentum or Adam moments accumulated before the mask was set. The model's masked
    layers are looked up at every step, so layers masked later are covered too.

    Returns the hook handle; ``handle.remove()`` detaches it.
    """

    def reapply_masks(opt: Optimizer, args, kwargs) -> None:
        for layer in masked_modules(model).values():
            layer.apply_mask_()

    return optimizer.register_step_post_hook(reapply_masks)
