"""lottery_fast: fast lottery-ticket research in deep reinforcement learning.

Masked layers over a compiled C++ core, global magnitude pruning, iterative magnitude pruning
with rewinding and the four ticket conditions, and PPO / behavioural-cloning trainers.
"""

from ._lazy import lazy_getattr
from .nn import (MaskedConv2d, MaskedLinear, PackedConv2d, PackedLinear, get_masks, keep_pruned_at_zero, load,
                 masked, masked_modules, packed, save, set_masks, unmasked, unpacked)
from .prune import CONDITIONS, PruneConfig, prune_model

from ._version import __version__

# The IMP engine pulls in the trainers and environments (gymnasium, EnvPool: the [rl] extra); load
# it on first use so that the layers, pruning and kernels need only torch and numpy.
_LAZY = {"IMPConfig": "imp", "load_results": "imp", "run_imp": "imp"}


__getattr__ = lazy_getattr(__name__, _LAZY, globals())

__all__ = ["MaskedLinear", "MaskedConv2d", "masked", "unmasked", "PackedLinear", "PackedConv2d", "packed",
           "unpacked", "masked_modules", "get_masks", "set_masks",
           "keep_pruned_at_zero", "save", "load", "PruneConfig", "prune_model", "CONDITIONS", "IMPConfig", "run_imp",
           "load_results", "__version__"]
