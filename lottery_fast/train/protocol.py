"""The small contract between the IMP loop and any training procedure (supervised, PPO, BC, DQN).

The IMP loop knows nothing about RL: it asks a trainer for a fresh model, trains it in place
(masks already installed on its masked layers), and reads a metric. Parameters and masks are moved
with ``state_dict``/``load_state_dict`` and :func:`lottery_fast.nn.get_masks`/``set_masks``.
Every call must be deterministic in ``seed`` so that a resumed IMP run equals an uninterrupted one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Protocol, Tuple, runtime_checkable

import torch
from torch import nn

#: progress callback: receives a flat dict such as {"step": 1000, "total": 50000, "metric": 120.0, "steps_per_s": 3e4}.
#: Keys with a "/" are tracking scalars under CleanRL's names ("losses/value_loss", "charts/SPS"),
#: for experiment trackers, not progress lines. A population trainer reports its members' scalars
#: in dicts of their own that carry ``MEMBER`` (the member's index) and "step".
ProgressFn = Callable[[Dict[str, float]], None]

#: the key of a progress dict that holds one population member's tracking scalars
MEMBER = "member"


def tracking_scalars(info: Dict[str, float]) -> Dict[str, float]:
    """The tracking scalars of a progress dict (its keys with a "/")."""
    return {k: v for k, v in info.items() if "/" in k}


def report_member(on_progress: Optional[ProgressFn], member: int, step: float, scalars: Dict[str, float]) -> None:
    """Send population member ``member``'s tracking scalars at ``step`` (nothing without a callback)."""
    if on_progress is not None and scalars:
        on_progress({**scalars, "step": float(step), MEMBER: float(member)})


def one_by_one(on_progress: Optional[ProgressFn], member: int) -> Optional[ProgressFn]:
    """The callback for member ``member`` of a population that trains its members one after another:
    its progress dicts go on as they are, and its tracking scalars also as the member's."""
    if on_progress is None:
        return None

    def forward(info: Dict[str, float]) -> None:
        on_progress(info)
        report_member(on_progress, member, info.get("step", 0.0), tracking_scalars(info))
    return forward


@dataclass
class TrainResult:
    """What one training run reports. ``metric`` is higher-is-better (return, accuracy)."""

    metric: float  # evaluation at the end of training
    best_metric: float  # best evaluation seen during training (the paper plots the best)
    steps: int  # optimizer or environment steps done
    extra: Dict[str, float] = field(default_factory=dict)  # losses, throughput, anything worth logging
    evals: List[float] = field(default_factory=list)  # every evaluation through training, in order (not saved)


@runtime_checkable
class Trainer(Protocol):
    #: short identifier recorded in results ("digits", "ppo", "bc", "dqn")
    name: str
    #: fnmatch patterns of module names IMP should never prune by default (e.g. the PPO critic)
    default_prune_exclude: Tuple[str, ...]
    # Optional: ``output_layers: Tuple[str, ...]`` names layers IMP prunes at a reduced rate
    # (IMPConfig.output_rate_factor); trainers without the attribute get plain global pruning.
    # Optional: ``optimizer_steps() -> int``, the optimizer steps of one ``train`` call, lets
    # IMP check ``rewind_step`` before anything is written (lottery_fast.imp.preflight).
    # Optional: ``input_names() -> Dict[str, List[str]]`` (``obs_names`` per input dim, or
    # ``channel_names`` per image channel): IMP records it in config.json when the run starts, so
    # that analysis names the input dims from the run folder alone.

    def build_model(self, seed: int) -> nn.Module:
        """A freshly initialised model, deterministic in ``seed``; its prunable layers are masked layers."""
        ...

    def train(
        self,
        model: nn.Module,
        seed: int,
        rewind_step: Optional[int] = None,
        on_progress: Optional[ProgressFn] = None,
    ) -> Tuple[TrainResult, Optional[Dict[str, torch.Tensor]]]:
        """Train ``model`` in place from its current weights and masks (fresh optimizer state).

        If ``rewind_step`` is given, also return a copy of ``model.state_dict()`` taken after that
        many optimizer steps (late rewinding); otherwise return None in its place.
        """
        ...

    def evaluate(self, model: nn.Module, seed: int) -> float:
        """The metric of ``model`` as it is (no training), deterministic in ``seed``."""
        ...
