"""Facts the report states, computed from curves and mask summaries (never typed in by hand).

* :func:`retention`: down to which share of weights a condition keeps a fraction (95 %) of dense
  performance, and where it first falls below.
* :func:`compare_retention`: does RL need more weights than BC at that threshold?
* :func:`condition_gaps`: how the four conditions order, averaged over the pruned levels.
* :func:`input_dim_facts`: which input dims (distractors vs the task's own) the ticket pruned.
* :func:`mode_summary` / :func:`compare_modes`: those facts over seeds, per init rescaling mode,
  and how the modes differ (distractors fully pruned in how many seeds).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .curves import Curve
from .input_mask import InputDimSurvival


@dataclass(frozen=True)
class Retention:
    """Where a curve's mean crosses ``threshold``, scanning from the densest level down."""

    threshold: float
    kept_down_to: Optional[float]  # lowest % of weights reached with every level so far >= threshold
    falls_below_at: Optional[float]  # % of weights of the first level below threshold (None: never)
    lowest_tested: float

    def describe(self) -> str:
        t = f"{100 * self.threshold:.0f}%"
        if self.falls_below_at is None:
            return f"keeps >= {t} of dense down to {_pct(self.lowest_tested)} weights (the lowest tested)"
        if self.kept_down_to is None:
            return f"is below {t} of dense already at {_pct(self.falls_below_at)} weights (its first level)"
        return f"keeps >= {t} of dense down to {_pct(self.kept_down_to)} weights; falls below at {_pct(self.falls_below_at)}"


def _pct(x: float) -> str:
    return f"{x:.3g}%"


def retention(curve: Curve, threshold: float = 0.95) -> Retention:
    """Scan ``curve`` from most to fewest weights: the last level still >= ``threshold`` before the first below."""
    if not curve.remaining:
        raise ValueError(f"retention: the curve of {curve.condition!r} has no points")
    order = sorted(range(len(curve.remaining)), key=lambda i: -curve.remaining[i])
    kept: Optional[float] = None
    for i in order:
        if curve.mean[i] < threshold:
            return Retention(threshold, kept, curve.remaining[i], min(curve.remaining))
        kept = curve.remaining[i]
    return Retention(threshold, kept, None, min(curve.remaining))


def compare_retention(rl: Retention, bc: Retention) -> Tuple[str, str]:
    """("yes" | "no" | "tie" | "undetermined", explanation): does RL need more weights than BC?

    RL needs more weights when its performance falls below the threshold at a denser level than BC's.
    A level where neither fell below within the tested range cannot be compared.
    """
    if rl.falls_below_at is None and bc.falls_below_at is None:
        return "undetermined", "neither fell below the threshold within the tested range"
    if rl.falls_below_at is None:
        return "no", f"BC fell below at {_pct(bc.falls_below_at)}, RL never did"
    if bc.falls_below_at is None:
        return "yes", f"RL fell below at {_pct(rl.falls_below_at)}, BC never did"
    if math.isclose(rl.falls_below_at, bc.falls_below_at, rel_tol=0.02):
        return "tie", f"both fell below at the same level ({_pct(rl.falls_below_at)})"
    if rl.falls_below_at > bc.falls_below_at:
        return "yes", f"RL fell below at {_pct(rl.falls_below_at)}, BC only at {_pct(bc.falls_below_at)}"
    return "no", f"RL fell below at {_pct(rl.falls_below_at)}, BC already at {_pct(bc.falls_below_at)}"


@dataclass(frozen=True)
class ConditionSummary:
    condition: str
    mean_pruned: float  # mean normalised performance over the pruned levels (iteration >= 1)
    at_lowest: float  # mean normalised performance at the fewest weights
    lowest: float  # that level, % of weights


def condition_summaries(curves: Sequence[Curve]) -> List[ConditionSummary]:
    """Per condition: average over the pruned levels (< 100 % weights) and the value at the fewest weights."""
    out = []
    for c in curves:
        pruned = [m for r, m in zip(c.remaining, c.mean) if r < 99.999]
        if not pruned:
            continue
        i = int(np.argmin(c.remaining))
        out.append(ConditionSummary(c.condition, float(np.mean(pruned)), float(c.mean[i]), float(c.remaining[i])))
    return out


def condition_gaps(curves: Sequence[Curve], a: str, b: str) -> Optional[Tuple[int, int, float]]:
    """(levels where ``a`` >= ``b``, pruned levels both have, mean of a - b there); None if they share none."""
    by = {c.condition: dict(zip(c.remaining, c.mean)) for c in curves}
    if a not in by or b not in by:
        return None
    levels = sorted(set(by[a]) & set(by[b]))
    levels = [lv for lv in levels if lv < 99.999]
    if not levels:
        return None
    diffs = [by[a][lv] - by[b][lv] for lv in levels]
    return sum(d >= 0 for d in diffs), len(levels), float(np.mean(diffs))


@dataclass(frozen=True)
class InputDimFacts:
    """What the ticket's input layer did to the task's own dims and to the distractors."""

    real: List[str]
    distractors: List[str]
    pruned_at: Dict[str, Optional[int]]  # dim name -> iteration fully pruned (None: kept)
    kept_last: Dict[str, float]  # dim name -> share of weights kept at the last iteration
    last_iteration: int
    last_remaining: float  # % of prunable weights at the last iteration

    @property
    def distractors_pruned(self) -> List[str]:
        return [d for d in self.distractors if self.pruned_at[d] is not None]

    @property
    def real_pruned(self) -> List[str]:
        return [d for d in self.real if self.pruned_at[d] is not None]

    def distractors_first(self) -> str:
        """"yes" if every distractor was fully pruned no later than any real dim, "no", or "n/a"."""
        if not self.distractors:
            return "n/a"
        if len(self.distractors_pruned) < len(self.distractors):
            return "no"
        latest = max(self.pruned_at[d] for d in self.distractors)  # type: ignore[type-var]
        first_real = min((self.pruned_at[d] for d in self.real_pruned), default=None)
        return "yes" if first_real is None or latest <= first_real else "no"

    def mean_kept(self, names: Sequence[str]) -> float:
        return float(np.mean([self.kept_last[n] for n in names])) if names else math.nan


def input_dim_facts(survival: InputDimSurvival, n_distractors: int) -> InputDimFacts:
    """Split the input dims into the task's own and the last ``n_distractors`` (which distractors are)."""
    names = list(survival.dim_names)
    if not 0 <= n_distractors < len(names):
        raise ValueError(f"{n_distractors} distractors for an input layer of {len(names)} dims")
    split = len(names) - n_distractors
    last = len(survival.iterations) - 1
    frac = survival.fraction[last]
    return InputDimFacts(names[:split], names[split:], dict(zip(names, survival.fully_pruned_at)),
                         {n: float(f) for n, f in zip(names, frac)}, survival.iterations[-1],
                         100.0 * float(survival.remaining[last]))


@dataclass(frozen=True)
class ModeSummary:
    """:class:`InputDimFacts` of several seeds of one setting (e.g. an init rescaling mode), counted."""

    mode: str
    seeds: int
    all_distractors_pruned: int  # seeds in which every distractor is fully pruned at the last iteration
    distractors_pruned: int  # (seed, distractor) pairs fully pruned
    distractor_pairs: int
    task_pruned: int  # (seed, task dim) pairs fully pruned
    task_pairs: int
    distractors_first: int  # seeds where every distractor went no later than any task dim
    kept_task: float  # mean share of weights kept at the last iteration, over seeds and task dims
    kept_distractors: float
    final_return: Optional[float] = None  # mean over seeds of the ticket's return at the last iteration
    # mean iteration at which the (seed, dim) pairs that were fully pruned went; None: none went
    distractors_gone_at: Optional[float] = None
    task_gone_at: Optional[float] = None


def mode_summary(mode: str, facts: Sequence[InputDimFacts], final_return: Optional[float] = None) -> ModeSummary:
    """Count over seeds what the input layers of one setting pruned (``final_return``: the ticket's
    mean return at the last iteration, so a mask that prunes everything is seen to be useless)."""
    if not facts:
        raise ValueError(f"mode_summary({mode!r}): no seeds")

    def gone_at(dims: str) -> Optional[float]:
        its = [f.pruned_at[d] for f in facts for d in getattr(f, dims) if f.pruned_at[d] is not None]
        return float(np.mean(its)) if its else None

    return ModeSummary(
        mode, len(facts),
        sum(len(f.distractors_pruned) == len(f.distractors) for f in facts),
        sum(len(f.distractors_pruned) for f in facts), sum(len(f.distractors) for f in facts),
        sum(len(f.real_pruned) for f in facts), sum(len(f.real) for f in facts),
        sum(f.distractors_first() == "yes" for f in facts),
        float(np.mean([f.mean_kept(f.real) for f in facts])),
        float(np.mean([f.mean_kept(f.distractors) for f in facts])), final_return,
        gone_at("distractors"), gone_at("real"))


def _gone_at(m: ModeSummary) -> Optional[str]:
    if m.distractors_gone_at is None or m.task_gone_at is None:
        return None
    return f"{m.distractors_gone_at:.2g} and {m.task_gone_at:.2g}"


def compare_modes(summaries: Sequence[ModeSummary]) -> List[str]:
    """One sentence per mode after the first (the baseline): distractors and task dims fully pruned,
    counted over seeds, the share kept, the ticket's final return and when pruned dims went, each
    against the baseline."""
    if len(summaries) < 2:
        raise ValueError("compare_modes needs a baseline and at least one other mode")
    base = summaries[0]
    out = []
    for m in summaries[1:]:
        clauses = [f"with {m.mode}, every distractor is fully pruned in {m.all_distractors_pruned}/{m.seeds} seeds "
                   f"vs {base.all_distractors_pruned}/{base.seeds} with {base.mode} (distractor dims fully pruned "
                   f"over seeds: {m.distractors_pruned}/{m.distractor_pairs} vs "
                   f"{base.distractors_pruned}/{base.distractor_pairs})",
                   f"task dims fully pruned: {m.task_pruned}/{m.task_pairs} vs {base.task_pruned}/{base.task_pairs}",
                   f"mean share kept, distractors vs task dims: {100 * m.kept_distractors:.1f}% vs "
                   f"{100 * m.kept_task:.1f}% ({100 * base.kept_distractors:.1f}% vs {100 * base.kept_task:.1f}% "
                   f"with {base.mode})"]
        if m.final_return is not None and base.final_return is not None:
            clauses.append(f"ticket return at the last iteration {m.final_return:.4g} vs {base.final_return:.4g}")
        if _gone_at(m) is not None:
            then = f" ({_gone_at(base)} with {base.mode})" if _gone_at(base) is not None else ""
            clauses.append(f"mean iteration at which the pruned distractors and the pruned task dims went: "
                           f"{_gone_at(m)}{then}")
        out.append("; ".join(clauses))
    return out


def channel_table(channel_names: Sequence[str], fraction: np.ndarray, iterations: Sequence[int],
                  pruned_at: Sequence[Optional[int]]) -> List[Mapping[str, str]]:
    """Rows for a markdown table: channel, kept at the first and last iteration, fully pruned at."""
    return [{"channel": name, f"kept at iter {iterations[0]}": f"{100 * fraction[0, c]:.1f}%",
             f"kept at iter {iterations[-1]}": f"{100 * fraction[-1, c]:.1f}%",
             "fully pruned at": "-" if pruned_at[c] is None else f"iter {pruned_at[c]}"}
            for c, name in enumerate(channel_names)]
