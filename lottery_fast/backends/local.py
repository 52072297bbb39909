"""The local backend: ``jobs`` worker processes on this machine (spawned: a forked child would
inherit torch's thread pools and EnvPool's threads)."""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from typing import Optional, Sequence, Tuple

from . import Events, Task, TaskOptions, run_task

#: seconds a stopping worker gets to leave its unit (and remove a file it was writing) before it is killed
STOP_GRACE_S = 3.0

_stopping = False


class LocalPool:
    def __init__(self, jobs: int) -> None:
        if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
            raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
        self.jobs = jobs

    def run(self, tasks: Sequence[Task], options: TaskOptions, events: Optional[Events] = None) -> None:
        ctx = multiprocessing.get_context("spawn")
        channel = _Channel(ctx, events) if events is not None else None
        pool = ProcessPoolExecutor(max_workers=self.jobs, mp_context=ctx, initializer=_worker_init,
                                   initargs=(os.getpid(),))
        try:
            futures = [pool.submit(_pool_task, exp, group, options, channel and channel.sink())
                       for exp, group in tasks]
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
                if channel is not None:
                    channel.drain()
                for f in finished:
                    if f.exception() is not None:
                        raise f.exception()
            if channel is not None:
                channel.drain()
        except KeyboardInterrupt:
            _stop(pool)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            if channel is not None:
                channel.close()


def _worker_init(parent: int) -> None:
    # a worker stops as on Ctrl-C when terminated, and starts no queued task after that
    signal.signal(signal.SIGTERM, _worker_signal)
    signal.signal(signal.SIGINT, _worker_signal)
    _die_with(parent)


def _die_with(parent: int) -> None:
    """Be killed when the command dies, even by SIGKILL, which no handler of its own sees: a worker
    left behind would go on training and then wait forever for work. SIGKILL rather than a graceful
    stop, because an orphan may be blocked writing to a pipe nobody reads any more; its unit is lost
    (every file is written atomically; a temp file left behind is removed when the run resumes).
    Linux delivers it through ``PR_SET_PDEATHSIG``; elsewhere a daemon thread watches the parent."""
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) == 0  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            armed = False
    if not armed:
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=watch, name="lottery-fast-parent-watch", daemon=True).start()
    if os.getppid() != parent:  # it died before the signal was armed
        os._exit(137)


def _worker_signal(signum, frame) -> None:
    global _stopping
    _stopping = True
    if not _in_task:  # idle: nothing is being written, and no queued task may start
        os._exit(130)
    raise KeyboardInterrupt(f"signal {signum}")


_in_task = False


def _pool_task(exp, group: Tuple[int, ...], options: TaskOptions, events: Optional[Events]) -> None:
    global _in_task
    if _stopping:
        os._exit(130)
    _in_task = True
    try:
        run_task(exp, group, options, events)
    except KeyboardInterrupt:
        if _stopping:  # the unit's finally blocks have run (a file being written is removed): leave
            os._exit(130)
        raise
    finally:
        _in_task = False


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel queued tasks, tell every worker to stop, and kill those still running after the grace time."""
    pool.shutdown(wait=False, cancel_futures=True)
    procs = list((getattr(pool, "_processes", None) or {}).values())
    for p in procs:
        if p.is_alive():
            try:
                os.kill(p.pid, signal.SIGTERM)
            except (ProcessLookupError, TypeError):
                pass
    deadline = time.monotonic() + STOP_GRACE_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(1.0)


class _Channel:
    """Events from the workers to this process: a manager queue the workers put into, drained here."""

    def __init__(self, ctx, events: Events) -> None:
        from multiprocessing.managers import SyncManager

        # the manager is a child process too: it must not outlive a killed command either
        self.manager = SyncManager(ctx=ctx)
        self.manager.start(_die_with, (os.getpid(),))
        self.queue = self.manager.Queue()
        self.events = events

    def sink(self) -> "QueueSink":
        return QueueSink(self.queue)

    def drain(self) -> None:
        import queue

        while True:
            try:
                tag, event = self.queue.get_nowait()
            except queue.Empty:
                return
            except (EOFError, OSError, BrokenPipeError):
                return
            self.events(tag, event)

    def close(self) -> None:
        try:
            self.drain()
        finally:
            self.manager.shutdown()


class QueueSink:
    """A picklable events callback that puts (label, event) into a queue: every event but the chatty
    ones, which go at most every ``every_s`` seconds per task (tracking scalars never: they stay in
    the worker, with its tracker)."""

    def __init__(self, queue, every_s: float = 0.5) -> None:
        self.queue, self.every_s = queue, every_s
        self._last = 0.0

    def __call__(self, tag: str, event) -> None:
        if event.kind == "metrics" or event.kind == "unit_start":
            return
        if event.kind == "train":
            now = time.monotonic()
            if now - self._last < self.every_s:
                return
            self._last = now
        try:
            self.queue.put((tag, event))
        except Exception:  # a closed channel (the study is stopping) must not fail a unit
            pass

    def __getstate__(self):
        return {"queue": self.queue, "every_s": self.every_s, "_last": 0.0}
