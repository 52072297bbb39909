"""The Ray backend: every task is a Ray task (one CPU), on a local Ray instance or on the cluster at
``address``. Workers write the run folders themselves, so these must be on a path every node sees
(a shared file system); the caller writes results.csv once all tasks are done.

A task's units are checkpointed as they finish, so a worker that dies mid-task loses only the unit
it was training: Ray retries the task (``max_retries`` times, for system failures such as a killed
worker or a lost node) and the retry resumes from the folder; once retries are spent the study
fails, and rerunning the command finishes it the same way.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, List, Optional, Sequence

from . import Events, Task, TaskOptions, run_task

#: seconds cancelled tasks get to leave their unit before their workers are killed
STOP_GRACE_S = 3.0


def _ray():
    # our progress lines differ only in numbers, which Ray's log deduplication would fold together
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        import ray
    except ImportError:
        raise ValueError('--backend ray needs Ray: pip install "lottery_fast[ray]"') from None
    return ray


class RayBackend:
    """``address``: a running cluster to join ("auto", "ray://host:10001", "host:6379"); None starts a
    local instance (``num_cpus`` of them; None: all) for this study and stops it after."""

    def __init__(self, address: Optional[str] = None, num_cpus: Optional[int] = None, max_retries: int = 3) -> None:
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ValueError(f"--address: expected a Ray cluster address, got {address!r}")
        self.address, self.num_cpus, self.max_retries = address, num_cpus, max_retries
        _ray()  # a missing Ray is an input error, found before anything runs

    def run(self, tasks: Sequence[Task], options: TaskOptions, events: Optional[Events] = None) -> None:
        ray = _ray()
        started = not ray.is_initialized()
        cwd = os.getcwd()
        if started:
            if self.address is None:
                connect(num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=True)
            else:
                connect(address=self.address, log_to_driver=True)
        queue = None
        try:
            if events is not None:
                from ray.util.queue import Queue

                from .local import QueueSink

                queue = Queue(actor_options={"num_cpus": 0})
            remote = ray.remote(num_cpus=1, max_retries=self.max_retries)(_run_task_in)
            sink = QueueSink(queue) if queue is not None else None
            refs = [remote.remote(cwd, exp, group, options, sink) for exp, group in tasks]
            try:
                _wait_all(ray, refs, queue, events)
            except KeyboardInterrupt:
                _cancel(ray, refs)
                raise
            except BaseException:
                for ref in refs:
                    ray.cancel(ref)
                raise
        finally:
            if queue is not None:
                _drain(queue, events)
                queue.shutdown()
            if started:
                ray.shutdown()


def connect(**init_kwargs: Any) -> None:
    """``ray.init(**init_kwargs)`` so that Ray's workers import the lottery_fast this process runs.

    Ray puts the driver's working directory on every worker's sys.path, ahead of the installed
    packages: started from a source checkout, the workers would import its uncompiled lottery_fast.
    So connect from the folder that holds this process's lottery_fast (tasks return to the
    driver's working directory before they run, see ``_run_task_in``)."""
    ray = _ray()
    cwd = os.getcwd()
    os.chdir(Path(__file__).resolve().parents[2])
    try:
        ray.init(**init_kwargs)
    finally:
        os.chdir(cwd)


def _run_task_in(cwd: str, exp, group, options: TaskOptions, events: Optional[Events]) -> None:
    """``run_task`` from the driver's working directory, so relative run folders mean the same there
    (on a cluster the path must exist on every node: a shared file system)."""
    os.chdir(cwd)
    run_task(exp, group, options, events)


def _wait_all(ray, refs: List[Any], queue, events: Optional[Events]) -> None:
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=0.2)
        for ref in ready:
            ray.get(ref)  # raises the task's error (a worker that died: once its retries are spent)
        if queue is not None:
            _drain(queue, events)


def _drain(queue, events: Optional[Events]) -> None:
    while events is not None and not queue.empty():
        tag, event = queue.get_nowait()
        events(tag, event)


def _cancel(ray, refs: List[Any]) -> None:
    """Interrupt every task (KeyboardInterrupt in its worker: the unit stops, a file being written is
    removed), then kill the workers of those still running after the grace time."""
    for ref in refs:
        ray.cancel(ref, force=False)
    deadline = time.monotonic() + STOP_GRACE_S
    pending = list(refs)
    while pending and time.monotonic() < deadline:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.2)
    for ref in pending:
        try:
            ray.cancel(ref, force=True)
        except Exception:  # already finished or gone
            pass
