"""Trainers behind one small protocol (:class:`Trainer`): the IMP loop drives any of them."""
from .digits import DigitsConfig, DigitsTrainer
from .protocol import ProgressFn, Trainer, TrainResult

__all__ = ["Trainer", "TrainResult", "ProgressFn", "DigitsConfig", "DigitsTrainer"]
