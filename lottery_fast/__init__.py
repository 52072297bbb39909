"""lottery_fast: fast lottery-ticket research in deep reinforcement learning.

Masked layers over a compiled C++ core, global magnitude pruning, iterative magnitude pruning
with rewinding and the four ticket conditions, and PPO / behavioural-cloning trainers.
"""
from .nn import MaskedConv2d, MaskedLinear, get_masks, masked, masked_modules, set_masks, unmasked

__version__ = "0.1.0"

__all__ = ["MaskedLinear", "MaskedConv2d", "masked", "unmasked", "masked_modules", "get_masks",
           "set_masks", "__version__"]
