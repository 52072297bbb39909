"""Experiment tracking (``--track``): every training's scalars, under CleanRL's names, to TensorBoard or
W&B, one tracked run per IMP unit, named ``<experiment>/seed<s>/iter<ii>/<condition>`` so that a
sweep's runs group by experiment, seed and round.

The trainers know nothing of this: they put their scalars (keys with a "/", see
:mod:`lottery_fast.train.protocol`) in the progress dicts they already send, and the IMP engine
turns them into events naming the unit. A :class:`Tracker` is such an event callback; it only reads
numbers the trainers computed anyway, so tracking cannot change results.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from .imp.progress import IMPEvent
from .imp.store import condition_slug
from .train.protocol import tracking_scalars

TRACKERS = ("none", "tensorboard", "wandb")
_EXTRAS = {"tensorboard": ("tensorboard", "track"), "wandb": ("wandb", "wandb")}


def check_tracker(kind: str) -> None:
    """A clear error, before anything runs, for an unknown tracker or one whose package is missing."""
    if kind not in TRACKERS:
        raise ValueError(f"--track {kind!r}: choose from {', '.join(TRACKERS)}")
    if kind == "none":
        return
    module, extra = _EXTRAS[kind]
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ValueError(f"--track {kind} needs the {module} package: pip install \"lottery_fast[{extra}]\"")


def run_name(experiment: str, seed: int, iteration: int, condition: str) -> str:
    """The tracked run of one unit: ``<experiment>/seed<s>/iter<ii>/<condition>``."""
    return f"{experiment}/seed{seed}/iter{iteration:02d}/{condition_slug(condition)}"


UnitKey = Tuple[int, int, str]


class Tracker:
    """An IMP progress callback that writes each unit's tracking scalars to its own run under ``root``
    (TensorBoard: ``root/tensorboard/<run name>``; W&B: ``root/wandb``, offline with ``WANDB_MODE=offline``).
    A unit trained again (after a kill) starts its TensorBoard run afresh."""

    def __init__(self, kind: str, root: Path, experiment: str) -> None:
        check_tracker(kind)
        if kind == "none":
            raise ValueError("Tracker: kind 'none' tracks nothing; build no Tracker")
        self.kind, self.root, self.experiment = kind, Path(root), experiment
        self._writers: Dict[UnitKey, Any] = {}
        self._last_step: Dict[UnitKey, int] = {}

    def __call__(self, event: IMPEvent) -> None:
        if event.kind == "done":
            self.close()
            return
        if event.seed is None:  # run-wide events and a population's combined progress
            return
        key = (event.seed, event.iteration, event.condition)
        if event.kind == "unit_start":
            self._close(key)
            if self.kind == "tensorboard":
                for old in self._logdir(key).glob("events.out.tfevents.*"):
                    old.unlink()  # the unit trains again from scratch: its old curves are not its
        elif event.kind in ("train", "metrics"):
            scalars = {k: float(v) for k, v in tracking_scalars(event.info).items() if math.isfinite(v)}
            if scalars:
                step = int(event.info.get("step", 0))
                self._last_step[key] = step
                self._writer(key).log(scalars, step)
        elif event.kind == "unit_done":
            final = {"imp/metric": event.metric, "imp/best_metric": event.best_metric, "imp/density": event.density}
            self._writer(key).log({k: float(v) for k, v in final.items() if v is not None},
                                  self._last_step.get(key, 0))
            self._close(key)

    def close(self) -> None:
        for key in list(self._writers):
            self._close(key)

    def _logdir(self, key: UnitKey) -> Path:
        return self.root / "tensorboard" / run_name(self.experiment, *key)

    def _writer(self, key: UnitKey):
        if key not in self._writers:
            if self.kind == "tensorboard":
                self._writers[key] = _TensorBoard(self._logdir(key))
            else:
                self._writers[key] = _WandB(self.root, self.experiment, key)
        return self._writers[key]

    def _close(self, key: UnitKey) -> None:
        writer = self._writers.pop(key, None)
        self._last_step.pop(key, None)
        if writer is not None:
            writer.close()

    def __getstate__(self) -> Dict[str, Any]:  # open writers stay in the process that opened them
        return {**self.__dict__, "_writers": {}, "_last_step": {}}


class _TensorBoard:
    def __init__(self, logdir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(logdir))

    def log(self, scalars: Dict[str, float], step: int) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, root: Path, experiment: str, key: UnitKey) -> None:
        import wandb

        seed, iteration, condition = key
        root.mkdir(parents=True, exist_ok=True)
        # a population trains its units at once: one open W&B run per unit in this process
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "lottery-fast"), dir=str(root),
                              name=run_name(experiment, *key), group=experiment, job_type=condition_slug(condition),
                              config={"experiment": experiment, "seed": seed, "iteration": iteration,
                                      "condition": condition},
                              reinit="create_new")

    def log(self, scalars: Dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()
