"""Where the tasks of a study run: ``local`` (worker processes on this machine, the default) or
``ray`` (a local Ray instance, or a cluster). A task is one (experiment, seed group) pair: one call of
:func:`lottery_fast.experiments.run_experiment` for those seeds, which trains their missing units
and checkpoints each as it finishes. Both backends run the same tasks, so a study's folders (and
its results.csv, which the caller writes afterwards) do not depend on where it ran.

A backend is an object with ``run(tasks, options, events)``: it runs every task (in any order, any
number at a time), raises the first task's failure, and on KeyboardInterrupt stops its workers
within a few seconds, each leaving only finished (atomically written) units behind.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence, Tuple

BACKENDS = ("local", "ray")

#: (experiment, seed group): the unit of scheduling
Task = Tuple[Any, Tuple[int, ...]]
#: receives (task label, IMP event) from every running task, in the calling process
Events = Callable[[str, Any], None]


@dataclass(frozen=True)
class TaskOptions:
    """How every task of a study runs (the arguments of run_experiment besides experiment and seeds)."""

    runs_dir: Path
    every_s: Optional[float] = None
    population: bool = True
    track: str = "none"


class Backend(Protocol):
    def run(self, tasks: Sequence[Task], options: TaskOptions, events: Optional[Events] = None) -> None: ...


def make_backend(name: str, jobs: int, address: Optional[str] = None) -> Backend:
    """The backend called ``name``; ``address`` (a Ray cluster's) only for ``ray``."""
    if name == "local":
        if address is not None:
            raise ValueError("--address is for --backend ray (the cluster to join)")
        from .local import LocalPool

        return LocalPool(jobs)
    if name == "ray":
        from .ray_backend import RayBackend

        return RayBackend(address=address)
    raise ValueError(f"--backend {name!r}: choose from {', '.join(BACKENDS)}")


def run_task(exp: Any, group: Tuple[int, ...], options: TaskOptions, events: Optional[Events]) -> None:
    """A task's body, in whatever process runs it."""
    from ..experiments import log_to_stderr, run_experiment

    run_experiment(exp, options.runs_dir, log_to_stderr, group, options.every_s, options.population,
                   track=options.track, events=events)


def interrupt_on_sigterm() -> None:
    """Make SIGTERM stop this process as Ctrl-C does (KeyboardInterrupt: ``finally`` blocks run, so a
    file being written is removed, never left half-written). Main thread only."""
    signal.signal(signal.SIGTERM, _raise_interrupt)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
