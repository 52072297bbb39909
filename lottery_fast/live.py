"""The live progress display of ``lottery-fast imp`` and ``report`` in a terminal: one bar of every
unit of the study with its ETA, and the training in progress (its steps/s and return). It takes
(task label, event) pairs from every task, wherever it runs. Finished units are printed above the
bar as the plain progress lines would print them. Uses tqdm when installed, else redraws one line.
"""
from __future__ import annotations

import sys
import time
from typing import Dict, List, Optional, TextIO

from .imp.progress import IMPEvent, _duration, format_event


class LiveDisplay:
    def __init__(self, stream: Optional[TextIO] = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self._tasks: Dict[str, List[int]] = {}  # label -> [done, total]
        self._trained = 0  # units trained since this display started (for the ETA)
        self._t0 = time.monotonic()
        self._current = ""
        try:
            from tqdm import tqdm
        except ImportError:
            self._bar = None
        else:
            self._bar = tqdm(total=0, file=self.stream, dynamic_ncols=True, leave=True,
                             bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} units{postfix}")
            self._bar.set_description_str("study")

    def __call__(self, label: str, event: IMPEvent) -> None:
        if event.kind == "start":
            self._tasks[label] = [event.units_done, event.units_total]
        elif event.kind == "unit_done":
            self._tasks.setdefault(label, [0, event.units_total])[0] = event.units_done
            self._trained += 1
            self.write(f"[{label}] {format_event(event)}")
        elif event.kind == "train":
            info = event.info
            who = f"seed {event.seed} " if event.seed is not None else ""
            ret = info.get("train_return", info.get("metric"))
            self._current = (f"{label}: {who}iter {event.iteration} {event.condition} "
                             f"{_rate(info.get('steps_per_s'))} steps/s"
                             + ("" if ret is None or ret != ret else f" return {ret:.4g}"))
        self._draw()

    def write(self, line: str) -> None:
        """A line above the bar (the bar is redrawn under it)."""
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            self.stream.write("\r\033[K" + line + "\n")
            self._draw()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        else:
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self) -> None:
        done = sum(d for d, _ in self._tasks.values())
        total = sum(t for _, t in self._tasks.values())
        elapsed = time.monotonic() - self._t0
        eta = elapsed / self._trained * (total - done) if self._trained else None
        tail = f"[{_duration(elapsed)} eta {_duration(eta)}] {self._current}"
        if self._bar is not None:
            self._bar.total, self._bar.n = total, done
            self._bar.set_postfix_str(tail, refresh=False)
            self._bar.refresh()
        else:
            self.stream.write(f"\r\033[Kstudy {done}/{total} units {tail}")
            self.stream.flush()


def _rate(value: Optional[float]) -> str:
    if value is None:
        return "?"
    return f"{value / 1000:.1f}k" if value >= 1000 else f"{value:.0f}"
