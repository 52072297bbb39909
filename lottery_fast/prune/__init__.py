"""Magnitude pruning (global and layer-wise), the four ticket conditions, and init rescaling."""
from .conditions import (CONDITION_REGISTRY, CONDITIONS, Condition, condition_names, derive_condition,
                         needs_fresh_init, register_condition)
from .magnitude import PruneConfig, PruneReport, prunable_layers, prune_groups, prune_model, sparsity_after
from .rescale import RESCALE_MODES, rescale_init_
from .threshold import ThresholdResult, prune_smallest_

__all__ = [
    "prune_smallest_", "ThresholdResult",
    "PruneConfig", "PruneReport", "prunable_layers", "prune_groups", "prune_model", "sparsity_after",
    "CONDITIONS", "CONDITION_REGISTRY", "Condition", "condition_names", "needs_fresh_init", "register_condition",
    "derive_condition",
    "RESCALE_MODES", "rescale_init_",
]
