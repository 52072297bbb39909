"""Trainers behind one small protocol (:class:`Trainer`): the IMP loop drives any of them.

The trainers are loaded on first use: importing :mod:`lottery_fast.train.protocol` (as the IMP
engine does) must not pull in the RL stack (gymnasium, EnvPool) or scikit-learn.
"""
from typing import Any

from .protocol import ProgressFn, Trainer, TrainResult

_LAZY = {"BCConfig": "bc", "BCTrainer": "bc", "DigitsConfig": "digits", "DigitsTrainer": "digits",
         "DQNConfig": "dqn", "DQNTrainer": "dqn", "PPOConfig": "ppo", "PPOTrainer": "ppo"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Trainer", "TrainResult", "ProgressFn", "DigitsConfig", "DigitsTrainer", "PPOConfig", "PPOTrainer",
           "BCConfig", "BCTrainer", "DQNConfig", "DQNTrainer"]
