"""Supervised MLP on scikit-learn's bundled 8x8 digits (no download): the quick IMP testbed.

64 inputs (pixels scaled to [0, 1]) -> hidden ReLU layers of MaskedLinear -> 10 classes, Adam,
cross-entropy; the metric is test accuracy on a fixed split (independent of the training seed).
Three of the 64 pixels are 0 in every image and several border pixels nearly so: their input
weights get no gradient, keep their initial magnitude while informative ones grow, and so global
magnitude pruning removes them first (see ``lottery_fast.analysis.mask_images``).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..nn import MaskedLinear
from .protocol import ProgressFn, TrainResult

N_PIXELS = 64
N_CLASSES = 10


@dataclass(frozen=True)
class DigitsConfig:
    hidden: Tuple[int, ...] = (64, 64)
    epochs: int = 30
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.0  # Adam's L2 term (pruned weights stay 0: their gradient is masked)
    test_fraction: float = 0.25
    split_seed: int = 0  # the train/test split is fixed by this, never by the training seed
    max_steps: Optional[int] = None  # stop after this many optimizer steps (None: run all epochs)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(self.hidden))
        if any(not isinstance(h, int) or h < 1 for h in self.hidden):
            raise ValueError(f"DigitsConfig.hidden must be positive ints, got {self.hidden!r}")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"DigitsConfig.epochs must be an int >= 1, got {self.epochs!r}")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ValueError(f"DigitsConfig.batch_size must be an int >= 1, got {self.batch_size!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"DigitsConfig.lr must be finite and > 0, got {self.lr!r}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"DigitsConfig.weight_decay must be finite and >= 0, got {self.weight_decay!r}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"DigitsConfig.test_fraction must be in (0, 1), got {self.test_fraction!r}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise ValueError(f"DigitsConfig.max_steps must be None or an int >= 1, got {self.max_steps!r}")


@dataclass(frozen=True)
class DigitsData:
    x_train: torch.Tensor  # float32 [n, 64] in [0, 1]
    y_train: torch.Tensor  # int64 [n]
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits_split(test_fraction: float = 0.25, split_seed: int = 0) -> DigitsData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy((digits.data / 16.0).astype(np.float32))
    y = torch.from_numpy(digits.target.astype(np.int64))
    order = torch.from_numpy(np.random.RandomState(split_seed).permutation(len(y)))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    return DigitsData(x[train], y[train], x[test], y[test])


def _state_copy(model: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class DigitsTrainer:
    """:class:`~lottery_fast.train.protocol.Trainer` for the digits MLP; layers ``fc1..fcN``, ``out``."""

    name = "digits"
    default_prune_exclude: Tuple[str, ...] = ()

    def __init__(self, config: Optional[DigitsConfig] = None) -> None:
        self.config = config if config is not None else DigitsConfig()
        self._data: Optional[DigitsData] = None

    @property
    def data(self) -> DigitsData:
        if self._data is None:
            self._data = load_digits_split(self.config.test_fraction, self.config.split_seed)
        return self._data

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.data.y_train) / self.config.batch_size)

    def total_steps(self) -> int:
        steps = self.config.epochs * self.steps_per_epoch()
        return steps if self.config.max_steps is None else min(steps, self.config.max_steps)

    def optimizer_steps(self) -> int:
        """Optimizer steps of one training run: the range of ``rewind_step``."""
        return self.total_steps()

    def build_model(self, seed: int) -> nn.Module:
        sizes = (N_PIXELS, *self.config.hidden)
        layers: "OrderedDict[str, nn.Module]" = OrderedDict()
        # torch's default init draws from the global RNG; fork it so building leaves no trace outside
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for i in range(len(self.config.hidden)):
                layers[f"fc{i + 1}"] = MaskedLinear(sizes[i], sizes[i + 1])
                layers[f"act{i + 1}"] = nn.ReLU()
            layers["out"] = MaskedLinear(sizes[-1], N_CLASSES)
        return nn.Sequential(layers)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, seed: int = 0) -> float:
        """Test accuracy (``seed`` unused: the test set and the forward pass are fixed)."""
        was_training = model.training
        model.eval()
        pred = model(self.data.x_test).argmax(dim=1)
        model.train(was_training)
        return float((pred == self.data.y_test).float().mean())

    def train(self, model: nn.Module, seed: int, rewind_step: Optional[int] = None,
              on_progress: Optional[ProgressFn] = None) -> Tuple[TrainResult, Optional[Dict[str, torch.Tensor]]]:
        cfg = self.config
        data = self.data
        total = self.total_steps()
        if rewind_step is not None and not 0 <= rewind_step <= total:
            raise ValueError(f"DigitsTrainer.train: rewind_step={rewind_step} outside [0, {total}] optimizer steps")
        gen = torch.Generator().manual_seed(int(seed))
        # a fresh optimizer every call: no moments carried over from an earlier round
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        rewind_state = _state_copy(model) if rewind_step == 0 else None
        n = len(data.y_train)
        steps, best, loss_sum, loss_n = 0, -math.inf, 0.0, 0
        model.train()
        for epoch in range(cfg.epochs):
            perm = torch.randperm(n, generator=gen)
            loss_sum, loss_n = 0.0, 0
            for start in range(0, n, cfg.batch_size):
                idx = perm[start:start + cfg.batch_size]
                loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
                loss_sum += float(loss.detach()) * len(idx)
                loss_n += len(idx)
                if steps == rewind_step:
                    rewind_state = _state_copy(model)
                if steps == total:
                    break
            acc = self.evaluate(model, seed)
            best = max(best, acc)
            if on_progress is not None:
                on_progress({"step": float(steps), "total": float(total), "epoch": float(epoch + 1),
                             "metric": acc, "loss": loss_sum / loss_n,
                             "losses/train_loss": loss_sum / loss_n, "charts/test_accuracy": acc})
            if steps == total:
                break
        metric = self.evaluate(model, seed)
        return (TrainResult(metric=metric, best_metric=max(best, metric), steps=steps,
                            extra={"train_loss": loss_sum / max(loss_n, 1)}),
                rewind_state)
