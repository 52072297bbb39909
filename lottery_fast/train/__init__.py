"""Trainers behind one small protocol (:class:`Trainer`): the IMP loop drives any of them."""
from .bc import BCConfig, BCTrainer
from .digits import DigitsConfig, DigitsTrainer
from .dqn import DQNConfig, DQNTrainer
from .ppo import PPOConfig, PPOTrainer
from .protocol import ProgressFn, Trainer, TrainResult

__all__ = ["Trainer", "TrainResult", "ProgressFn", "DigitsConfig", "DigitsTrainer", "PPOConfig", "PPOTrainer",
           "BCConfig", "BCTrainer", "DQNConfig", "DQNTrainer"]
