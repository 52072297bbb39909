"""Trainers behind one small protocol (:class:`Trainer`): the IMP loop drives any of them.

The trainers are loaded on first use: importing :mod:`lottery_fast.train.protocol` (as the IMP
engine does) must not pull in the RL stack (gymnasium, EnvPool) or scikit-learn.
"""

from .._lazy import lazy_getattr
from .protocol import ProgressFn, Trainer, TrainResult

_LAZY = {"BCConfig": "bc", "BCTrainer": "bc", "DigitsConfig": "digits", "DigitsTrainer": "digits",
         "DQNConfig": "dqn", "DQNTrainer": "dqn", "PPOConfig": "ppo", "PPOTrainer": "ppo"}


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


__all__ = ["Trainer", "TrainResult", "ProgressFn", "DigitsConfig", "DigitsTrainer", "PPOConfig", "PPOTrainer",
           "BCConfig", "BCTrainer", "DQNConfig", "DQNTrainer"]
