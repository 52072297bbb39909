"""Progress events of an IMP run and a plain-text renderer for scripts (the CLI draws its own)."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, TextIO

#: event kinds, in the order a run emits them
#: "start" (units_done > 0 on resume), "unit_start", "train" (trainer progress, in ``info``), "metrics" (one
#: unit's tracking scalars from inside a population, in ``info``), "unit_done", "done"
EVENT_KINDS = ("start", "unit_start", "train", "metrics", "unit_done", "done")


@dataclass(frozen=True)
class IMPEvent:
    kind: str
    units_done: int  # finished (seed, iteration, condition) units, resumed ones included
    units_total: int
    elapsed_s: float  # since this call of run_imp started
    eta_s: Optional[float]  # None until a unit has been trained in this call
    seed: Optional[int] = None
    iteration: Optional[int] = None
    condition: Optional[str] = None
    density: Optional[float] = None  # kept fraction of prunable weights
    metric: Optional[float] = None
    best_metric: Optional[float] = None
    info: Dict[str, float] = field(default_factory=dict)  # the trainer's own progress dict ("train")


ProgressCallback = Callable[[IMPEvent], None]


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_event(event: IMPEvent) -> Optional[str]:
    """One line for an event, or None for the chatty ones (trainer progress, unit start)."""
    head = f"[{event.units_done}/{event.units_total} {_duration(event.elapsed_s)} eta {_duration(event.eta_s)}]"
    if event.kind == "start":
        what = "resuming" if event.units_done else "starting"
        return f"{head} {what} IMP run"
    if event.kind == "unit_done":
        return (f"{head} seed {event.seed} iter {event.iteration:2d} {event.condition:<17} "
                f"density {100 * (event.density or 0.0):6.2f}% metric {event.metric:.4g} best {event.best_metric:.4g}")
    if event.kind == "done":
        return f"{head} done"
    return None


def text_progress(stream: Optional[TextIO] = None) -> ProgressCallback:
    """A callback that writes :func:`format_event` lines to ``stream`` (stderr by default)."""

    def callback(event: IMPEvent) -> None:
        line = format_event(event)
        if line is not None:
            out = stream if stream is not None else sys.stderr
            out.write(line + "\n")
            out.flush()

    return callback


def _num(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class ProgressLines:
    """A picklable callback that writes labelled :func:`format_event` lines through ``write``, plus,
    every ``every_s`` seconds while a unit trains, a line of the trainer's own progress (none when
    ``every_s`` is None)."""

    def __init__(self, label: str, write: Callable[[str], None], every_s: Optional[float] = None) -> None:
        self.label, self.write, self.every_s = label, write, every_s
        self._last = 0.0

    def __call__(self, event: IMPEvent) -> None:
        if event.kind == "train":
            now = time.monotonic()
            if self.every_s is None or now - self._last < self.every_s:
                return
            self._last = now
            # keys with a "/" are tracking scalars (for TensorBoard and W&B), not progress
            parts = ", ".join(f"{k} {_num(v)}" for k, v in event.info.items() if "/" not in k)
            who = "" if event.seed is None else f"seed {event.seed} "  # None: a population's progress
            line: Optional[str] = f"{who}iter {event.iteration} {event.condition}: {parts}"
        else:
            line = format_event(event)
        if line is not None:
            self.write(f"[{self.label}] {line}")
