"""lottery_fast: fast lottery-ticket research in deep reinforcement learning.

Masked layers over a compiled C++ core, global magnitude pruning, iterative magnitude pruning
with rewinding and the four ticket conditions, and PPO / behavioural-cloning trainers.
"""
from typing import Any

from .nn import (MaskedConv2d, MaskedLinear, get_masks, keep_pruned_at_zero, masked, masked_modules, set_masks,
                 unmasked)
from .prune import CONDITIONS, PruneConfig, prune_model

__version__ = "0.1.0"

# The IMP engine pulls in the trainers and environments (gymnasium, EnvPool: the [rl] extra); load
# it on first use so that the layers, pruning and kernels need only torch and numpy.
_LAZY = {"IMPConfig": "imp", "load_results": "imp", "run_imp": "imp"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["MaskedLinear", "MaskedConv2d", "masked", "unmasked", "masked_modules", "get_masks", "set_masks",
           "keep_pruned_at_zero", "PruneConfig", "prune_model", "CONDITIONS", "IMPConfig", "run_imp",
           "load_results", "__version__"]
