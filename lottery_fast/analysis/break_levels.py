"""Per-seed break levels and the paired RL-vs-BC comparison behind claim 1.

A seed's **break level** is the first IMP iteration (scanning from dense to sparse) whose
normalised return, ``(metric - floor) / (dense - floor)`` with the same seed's dense ticket as
reference, falls below ``threshold``. A seed that never falls below is *censored*: it breaks
somewhere past the sparsest tested level, which is all that can be said.

Claim 1 (RL tickets need more parameters than BC tickets) is then a paired question over seeds:
does RL break at an earlier iteration (a denser network) than BC with the same seed? Run seeds of
the two IMP runs are matched by seed number; the two runs must share the density grid (the same
network and pruning schedule), which :func:`compare_break_levels` checks. The verdict comes from
the distribution of per-seed differences, not from means alone: a bootstrap confidence interval of
the mean difference and an exact two-sided sign test. Censored seeds enter at one level past the
sparsest tested, which understates how much later they break; when more than half of the seeds
are censored in both runs the verdict is "undetermined".

Everything here reads results rows (:func:`lottery_fast.imp.load_results`); nothing trains.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

TICKET = "mask/weights"


@dataclass(frozen=True)
class BreakLevel:
    """Where one seed's curve of one condition first falls below the threshold."""

    seed: int
    dense: float  # the seed's dense return (iteration 0 of the ticket)
    iteration: Optional[int]  # first iteration below threshold; None: never (censored)
    density: Optional[float]  # kept fraction of prunable weights at that iteration
    last_iteration: int  # sparsest iteration tested

    @property
    def censored(self) -> bool:
        return self.iteration is None


def break_levels(rows: Sequence[Mapping], condition: str = TICKET, metric: str = "best_metric",
                 threshold: float = 0.95, floor: float = 0.0) -> Dict[int, BreakLevel]:
    """Per seed, the break level of ``condition`` relative to the seed's own dense ticket."""
    dense = {int(r["seed"]): float(r[metric]) for r in rows
             if r["condition"] == TICKET and int(r["iteration"]) == 0}
    curves: Dict[int, List[Tuple[int, float, float]]] = {}
    for r in rows:
        if r["condition"] == condition or (int(r["iteration"]) == 0 and r["condition"] == TICKET):
            curves.setdefault(int(r["seed"]), []).append((int(r["iteration"]), float(r["density"]), float(r[metric])))
    out: Dict[int, BreakLevel] = {}
    for seed, points in sorted(curves.items()):
        if seed not in dense or dense[seed] - floor <= 0:
            continue  # a seed whose dense agent never left the floor has no scale to normalise by
        base = dense[seed] - floor
        points.sort()
        # the dense round is the reference, so the first level that can break is the first pruned one
        hit = next(((it, d) for it, d, m in points if it > 0 and (m - floor) / base < threshold), None)
        out[seed] = BreakLevel(seed, dense[seed], hit[0] if hit else None, hit[1] if hit else None, points[-1][0])
    return out


@dataclass(frozen=True)
class PairedComparison:
    """RL vs BC break levels over matched seeds: ``diff = BC's break iteration - RL's``, so a positive
    difference means RL broke at a denser network, i.e. needs more parameters."""

    seeds: Tuple[int, ...]
    diffs: Tuple[float, ...]
    mean: float
    ci: Tuple[float, float]  # bootstrap percentile interval of the mean difference
    confidence: float
    sign_p: float  # exact two-sided sign test over the non-zero differences
    positive: int
    negative: int
    censored_rl: int
    censored_bc: int
    rate: Optional[float]  # pruning rate: one level = a factor (1 - rate) in density
    verdict: str  # "yes" | "no" | "tie" | "undetermined"
    reason: str

    def describe(self) -> str:
        factor = ""
        if self.rate is not None:
            factor = f" (x{(1 - self.rate) ** -self.mean:.2f} in weights)"
        return (f"{self.verdict}: BC minus RL break iteration over {len(self.seeds)} seeds: mean {self.mean:+.2f} "
                f"levels{factor}, {100 * self.confidence:.0f}% bootstrap CI [{self.ci[0]:+.2f}, {self.ci[1]:+.2f}], "
                f"RL earlier in {self.positive}, later in {self.negative}, sign test p = {self.sign_p:.3g}; "
                f"censored (never below): RL {self.censored_rl}, BC {self.censored_bc}. {self.reason}")


def sign_test(positive: int, negative: int) -> float:
    """Exact two-sided binomial p-value of ``positive`` successes in ``positive + negative`` fair trials."""
    n = positive + negative
    if n == 0:
        return 1.0
    k = min(positive, negative)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def bootstrap_ci(values: Sequence[float], confidence: float = 0.95, resamples: int = 10_000,
                 seed: int = 0) -> Tuple[float, float]:
    """Percentile bootstrap interval of the mean (fixed seed: the report is reproducible)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - confidence) / 2, 1 - (1 - confidence) / 2])
    return float(lo), float(hi)


def compare_break_levels(rl: Mapping[int, BreakLevel], bc: Mapping[int, BreakLevel], rate: Optional[float] = None,
                         confidence: float = 0.95, alpha: float = 0.05) -> PairedComparison:
    """The paired comparison of two runs' break levels (see the module docstring)."""
    seeds = tuple(sorted(set(rl) & set(bc)))
    if not seeds:
        raise ValueError("compare_break_levels: the two runs share no seed with a usable dense return")
    diffs = []
    for s in seeds:
        a, b = rl[s], bc[s]
        if a.last_iteration != b.last_iteration:
            raise ValueError(f"compare_break_levels: seed {s} was pruned to iteration {a.last_iteration} in one "
                             f"run and {b.last_iteration} in the other; compare runs with the same schedule")
        past = a.last_iteration + 1  # censored: beyond the sparsest level tested
        diffs.append(float((past if b.censored else b.iteration) - (past if a.censored else a.iteration)))
    pos = sum(d > 0 for d in diffs)
    neg = sum(d < 0 for d in diffs)
    mean = float(np.mean(diffs))
    ci = bootstrap_ci(diffs, confidence)
    p = sign_test(pos, neg)
    cens_rl = sum(rl[s].censored for s in seeds)
    cens_bc = sum(bc[s].censored for s in seeds)
    both = sum(rl[s].censored and bc[s].censored for s in seeds)
    if 2 * both > len(seeds):
        verdict, reason = "undetermined", (f"{both} of {len(seeds)} seeds never fell below the threshold in either "
                                           f"run: prune further")
    elif ci[0] > 0 and p < alpha:
        verdict, reason = "yes", "RL breaks at a denser level than BC in a significant majority of seeds"
    elif ci[1] < 0 and p < alpha:
        verdict, reason = "no", "BC breaks at a denser level than RL in a significant majority of seeds"
    elif ci[0] <= 0 <= ci[1]:
        verdict, reason = "tie", "the interval of the mean difference contains 0"
    else:
        verdict, reason = "undetermined", f"the interval excludes 0 but the sign test does not reach p < {alpha}"
    return PairedComparison(seeds, tuple(diffs), mean, ci, confidence, p, pos, neg, cens_rl, cens_bc, rate, verdict,
                            reason)


@dataclass(frozen=True)
class LevelStat:
    iteration: int
    density: float
    mean: float
    std: float
    n: int


def metric_by_level(rows: Sequence[Mapping], condition: str, metric: str) -> List[LevelStat]:
    """Mean and SD over seeds of ``metric`` (e.g. ``extra/eval_mean``, the area under the learning
    curve) per iteration of ``condition``; the dense ticket stands in at iteration 0."""
    per: Dict[int, List[float]] = {}
    density: Dict[int, List[float]] = {}
    for r in rows:
        it = int(r["iteration"])
        if r["condition"] == condition or (it == 0 and r["condition"] == TICKET):
            value = r.get(metric)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            per.setdefault(it, []).append(float(value))
            density.setdefault(it, []).append(float(r["density"]))
    return [LevelStat(it, float(np.mean(density[it])), float(np.mean(v)), float(np.std(v)), len(v))
            for it, v in sorted(per.items())]
