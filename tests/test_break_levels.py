"""Per-seed break levels and the paired RL-vs-BC verdict, on hand-made results rows."""
from __future__ import annotations

import math

import pytest

from lottery_fast.analysis.break_levels import (bootstrap_ci, break_levels, compare_break_levels, metric_by_level,
                                                sign_test)


def rows_for(breaks, iterations=6, rate=0.3, dense=500.0, condition="mask/weights", eval_mean=None):
    """One run's ticket rows: seed s keeps the dense return until iteration breaks[s] (None: never)."""
    rows = []
    for seed, b in breaks.items():
        for it in range(iterations + 1):
            broke = b is not None and it >= b
            rows.append({"seed": seed, "condition": "mask/weights" if it == 0 else condition, "iteration": it,
                         "density": (1 - rate) ** it, "metric": 0.0, "best_metric": 100.0 if broke else dense,
                         "extra/eval_mean": eval_mean if eval_mean is not None else (100.0 if broke else dense)})
    return rows


def test_break_level_is_first_level_below_threshold_and_censoring():
    got = break_levels(rows_for({0: 3, 1: None, 2: 1}))
    assert got[0].iteration == 3 and got[0].density == pytest.approx(0.7 ** 3)
    assert got[1].censored and got[1].last_iteration == 6
    assert got[2].iteration == 1


def test_break_level_is_relative_to_the_seeds_own_dense_return_and_floor():
    rows = rows_for({0: None})
    for r in rows:
        if r["iteration"] == 3:
            r["best_metric"] = -480.0  # Acrobot-like: floor -500, dense -100 -> normalised 0.05
        else:
            r["best_metric"] = -100.0
    assert break_levels(rows, floor=-500.0)[0].iteration == 3
    assert break_levels(rows, floor=-500.0, threshold=0.04)[0].censored


def test_rl_breaking_earlier_in_every_seed_is_yes():
    rl = break_levels(rows_for({s: 2 for s in range(10)}))
    bc = break_levels(rows_for({s: 4 + s % 2 for s in range(10)}))
    cmp = compare_break_levels(rl, bc, rate=0.3)
    assert cmp.verdict == "yes" and cmp.positive == 10 and cmp.mean == pytest.approx(2.5)
    assert cmp.ci[0] > 0 and cmp.sign_p == pytest.approx(2 / 2 ** 10)
    assert "x" in cmp.describe()


def test_mixed_differences_are_a_tie_and_mostly_censored_is_undetermined():
    rl = break_levels(rows_for({s: 3 for s in range(8)}))
    bc = break_levels(rows_for({s: 3 + (1 if s % 2 else -1) for s in range(8)}))
    assert compare_break_levels(rl, bc).verdict == "tie"
    rl = break_levels(rows_for({s: None for s in range(8)}))
    bc = break_levels(rows_for({s: (5 if s < 2 else None) for s in range(8)}))
    assert compare_break_levels(rl, bc).verdict == "undetermined"


def test_censored_seed_counts_one_level_past_the_last():
    rl = break_levels(rows_for({0: 2}))
    bc = break_levels(rows_for({0: None}))
    assert compare_break_levels(rl, bc).diffs == (5.0,)  # (6 + 1) - 2


def test_schedules_must_match():
    with pytest.raises(ValueError, match="same schedule"):
        compare_break_levels(break_levels(rows_for({0: 2}, iterations=6)), break_levels(rows_for({0: 2}, iterations=5)))
    with pytest.raises(ValueError, match="share no seed"):
        compare_break_levels(break_levels(rows_for({0: 2})), break_levels(rows_for({1: 2})))


def test_sign_test_and_bootstrap():
    assert sign_test(0, 0) == 1.0
    assert sign_test(5, 5) == 1.0
    assert sign_test(8, 0) == pytest.approx(2 / 256)
    lo, hi = bootstrap_ci([1.0] * 5)
    assert lo == hi == 1.0
    lo, hi = bootstrap_ci([-1.0, 1.0] * 10)
    assert lo < 0 < hi
    assert all(math.isnan(v) for v in bootstrap_ci([]))


def test_metric_by_level_means_over_seeds():
    rows = rows_for({0: 2, 1: None}, iterations=3)
    stats = metric_by_level(rows, "mask/weights", "extra/eval_mean")
    assert [s.iteration for s in stats] == [0, 1, 2, 3]
    assert stats[2].mean == pytest.approx(300.0) and stats[2].n == 2
