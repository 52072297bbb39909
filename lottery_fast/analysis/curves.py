"""The paper's main figure: normalised performance vs remaining weights, one line per condition.

Reads only result files (``results.csv`` of one or more run folders, typed by
:func:`lottery_fast.imp.load_results`), never a live trainer.
Performance is normalised per seed by the dense network's value (iteration 0 of the ticket line),
so 1.0 means "as good as dense"; the paper plots the best evaluation of each training run.
"""
from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Sequence

from .._atomic import atomic_write
from ..imp.config import TICKET
from ..imp.results import load_results

#: the lowest return of a task, so that tasks with negative returns normalise the right way round
#: (anything not listed: 0, right for tasks whose returns are >= 0 such as CartPole)
RETURN_FLOOR: Dict[str, float] = {"Acrobot-v1": -500.0, "MountainCar-v0": -200.0}


def return_floor(env_id: str | None) -> float:
    return RETURN_FLOOR.get(env_id or "", 0.0)


@dataclass(frozen=True)
class Curve:
    condition: str
    remaining: List[float]  # percent of prunable weights kept, one entry per IMP iteration
    mean: List[float]
    std: List[float]
    n: List[int]
    low: List[float]  # min over seeds
    high: List[float]  # max over seeds


def normalised_curves(rows: Sequence[dict], metric: str = "best_metric", floor: float = 0.0) -> List[Curve]:
    """Mean, SD, min and max over seeds of (metric - floor) / (dense metric - floor), per condition
    and IMP iteration. ``floor`` is the worst return of the task (0 for CartPole, -500 for Acrobot),
    so that tasks with negative returns normalise the right way round."""
    dense: Dict[str, float] = {}
    for r in rows:
        if r["condition"] == TICKET and int(r["iteration"]) == 0:
            dense[r["seed"]] = float(r[metric]) - floor
    by_cond: Dict[str, Dict[int, list]] = defaultdict(lambda: defaultdict(list))
    density: Dict[int, float] = {}
    for r in rows:
        base = dense.get(r["seed"])
        if base is None or base == 0:
            continue
        it = int(r["iteration"])
        by_cond[r["condition"]][it].append((float(r[metric]) - floor) / base)
        if r["condition"] == TICKET:
            density[it] = float(r["density"])
    curves = []
    for cond, per_it in by_cond.items():
        its = sorted(i for i in per_it if i in density)
        vals = [per_it[i] for i in its]
        means = [sum(v) / len(v) for v in vals]
        stds = [math.sqrt(sum((x - m) ** 2 for x in v) / len(v)) for v, m in zip(vals, means)]
        curves.append(Curve(cond, [100.0 * density[i] for i in its], means, stds, [len(v) for v in vals],
                            [min(v) for v in vals], [max(v) for v in vals]))
    from ..prune import condition_names

    order = list(condition_names())
    curves.sort(key=lambda c: order.index(c.condition) if c.condition in order else len(order))
    return curves


def figure_format(path: os.PathLike | str) -> str:
    """The matplotlib format a figure path asks for by its suffix (``x.pdf``: PDF); ``ValueError``
    for a suffix matplotlib cannot write, so that no file gets bytes its name does not promise."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    supported = FigureCanvasAgg.get_supported_filetypes()
    suffix = Path(path).suffix
    if suffix.lower().lstrip(".") not in supported:
        what = f"the suffix {suffix!r}" if suffix else "a name without a suffix"
        raise ValueError(f"{path}: no figure format for {what}; use one of "
                         f"{', '.join('.' + k for k in sorted(supported))}")
    return suffix.lower().lstrip(".")


def plot_runs(run_dirs: Sequence[os.PathLike | str], out_png: os.PathLike | str,
              titles: Sequence[str] | None = None, metric: str = "best_metric",
              floors: Sequence[float] | None = None) -> Path:
    """One panel per run folder (e.g. RL and BC side by side), written atomically to ``out_png``.
    Bands are one SD over seeds; ``floors`` (per run folder) as in :func:`normalised_curves`."""
    floors = list(floors) if floors is not None else [0.0] * len(run_dirs)
    panels = [{c.condition: c for c in normalised_curves(load_results(d), metric, f)} for d, f in zip(run_dirs, floors)]
    titles = list(titles) if titles else [Path(d).name for d in run_dirs]
    return plot_panels(panels, out_png, titles, band="std", ylabel=f"normalised {metric.replace('_', ' ')} (dense = 1)")


def plot_panels(panels: Sequence[Mapping[str, Curve]], out_png: os.PathLike | str, titles: Sequence[str],
                band: str = "std", ylabel: str = "normalised return (dense = 1)") -> Path:
    """One panel per mapping label -> curve, log x axis of weights remaining; ``band`` "std" (mean ± SD)
    or "range" (min..max over seeds). The format follows the suffix of ``out_png`` (:func:`figure_format`)."""
    fmt = figure_format(out_png)
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if band not in ("std", "range"):
        raise ValueError(f"band must be 'std' or 'range', got {band!r}")
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False, sharey=True)
    for ax, curves_by_label, title in zip(axes[0], panels, titles):
        curves = list(curves_by_label.values())
        for label, c in curves_by_label.items():
            if band == "std":
                lo = [m - s for m, s in zip(c.mean, c.std)]
                hi = [m + s for m, s in zip(c.mean, c.std)]
            else:
                lo, hi = c.low, c.high
            ax.plot(c.remaining, c.mean, marker="o", ms=3, label=label)
            ax.fill_between(c.remaining, lo, hi, alpha=0.2)
        ax.set_xscale("log")
        ticks = [100, 50, 20, 10, 5, 2, 1, 0.5, 0.2, 0.1]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        lows = [min(c.remaining) for c in curves if c.remaining]
        ax.set_xlim(105, 0.9 * min(lows) if lows else 1)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("weights remaining [%]")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    try:
        return atomic_write(out_png, lambda p: fig.savefig(p, dpi=120, format=fmt))
    finally:
        plt.close(fig)
