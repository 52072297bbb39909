"""The distractor rank statistic on hand-made masks, and on a run folder's tables and masks."""
from __future__ import annotations

import math

import numpy as np
import pytest

from lottery_fast.analysis.distractor_rank import (DimRoles, dim_roles, rank_rounds, run_rank, summarize,
                                                   survival_from_table)
from lottery_fast.analysis.input_mask import input_dim_survival, write_table

NAMES = ["a", "b", "c", "gaussian noise 0", "copy of b", "constant 1"]


def _history(*columns_per_round, units=4):
    """Masks of a ``units`` x 6 input layer whose column j keeps ``counts[j]`` weights in each round."""
    out = {}
    for it, counts in enumerate(columns_per_round):
        m = np.zeros((units, len(counts)), bool)
        for j, k in enumerate(counts):
            m[:k, j] = True
        out[it] = {"l": m}
    return out


def test_roles_from_specs():
    roles = dim_roles(["gaussian", "copy:1", "constant:1", "uniform:-1:1"], 7)
    assert roles == DimRoles(task=(0, 1, 2), noise=(3, 6), constant=(5,), copies=((4, 1),))
    cartpole = ["cart position", "cart velocity", "pole angle", "pole angular velocity"]
    assert dim_roles(["copy:pole angle"], 5, cartpole).copies == ((4, 2),)  # a name resolves against the dims
    with pytest.raises(ValueError, match="distractors plus a task dim"):
        dim_roles(["gaussian", "constant:1"], 2)
    with pytest.raises(ValueError, match="exactly one role"):
        DimRoles(task=(0, 1), noise=(1,))
    with pytest.raises(ValueError, match="not a task dim"):
        DimRoles(task=(0,), noise=(1,), copies=((2, 1),))


def test_rounds_hand_made():
    roles = dim_roles(["gaussian", "copy:1", "constant:1"], 6)
    hist = _history([4, 4, 4, 4, 4, 4],  # dense: not scored
                    [4, 3, 2, 1, 3, 4],  # noise below c (2); copy ties b (3): its redundant one is 3, not < 2
                    [3, 0, 2, 0, 1, 4],  # b pruned but its copy keeps 1 -> task strength of b is 1
                    [2, 1, 1, 1, 0, 0])  # noise ties the weakest task dim (1): does not hold
    rounds = rank_rounds(input_dim_survival(hist, "l", NAMES), roles, seed=7)
    by = {(r.iteration, r.group): r for r in rounds}
    assert [r.group for r in rounds[:3]] == ["noise", "copy", "constant"]
    assert not by[0, "noise"].scored and not by[0, "noise"].holds and by[0, "noise"].pair_share == 0.5
    r = by[1, "noise"]
    assert r.scored and r.holds and (r.weakest_task, r.weakest_task_kept, r.strongest_kept) == ("c", 2, 1)
    assert r.pair_share == 1.0
    r = by[1, "copy"]
    assert not r.holds and r.strongest == "copy of b" and r.strongest_kept == 3
    assert r.pair_share == pytest.approx(0.5)  # 3 vs the tasks (4, 3, 2): 1, 1/2, 0
    r = by[2, "noise"]
    assert r.holds and (r.weakest_task, r.weakest_task_kept) == ("b", 1)  # b lives on through its copy
    assert by[2, "copy"].strongest == "b" and by[2, "copy"].holds  # the redundant one is the source: 0 < 1
    assert not by[2, "constant"].holds and by[2, "constant"].pair_share == 0.0
    assert not by[3, "noise"].holds and by[3, "noise"].pair_share == pytest.approx(2 / 3)  # 1 vs (2, 1, 1)
    assert by[3, "constant"].holds  # 0 < 1
    assert all(r.seed == 7 for r in rounds) and rounds[0].row()["seed"] == 7


def test_pair_share_counts_ties_half():
    roles = DimRoles(task=(0, 1), noise=(2, 3))
    hist = _history([4, 4, 4, 4], [3, 1, 1, 0])
    _, r2 = rank_rounds(input_dim_survival(hist, "l"), roles)
    assert r2.iteration == 1 and r2.group == "noise"
    # pairs (noise, task): (1,3)=1, (1,1)=1/2, (0,3)=1, (0,1)=1 -> 3.5/4
    assert r2.pair_share == pytest.approx(3.5 / 4) and not r2.holds


def test_summary_counts_rounds_and_seeds():
    roles = DimRoles(task=(0, 1), noise=(2,), constant=(3,))
    s0 = _history([4] * 4, [4, 3, 1, 4], [3, 2, 0, 4], [2, 2, 1, 4])  # noise holds in rounds 1, 2, 3
    s1 = _history([4] * 4, [4, 3, 3, 4], [3, 2, 1, 2], [2, 2, 2, 1])  # noise holds in round 2 only
    rounds = (rank_rounds(input_dim_survival(s0, "l"), roles, 0)
              + rank_rounds(input_dim_survival(s1, "l"), roles, 1))
    summ = summarize(rounds)
    noise, const = summ["noise"], summ["constant"]
    assert (noise.seeds, noise.rounds, noise.holds, noise.seeds_always, noise.seeds_last) == (2, 6, 4, 1, 1)
    assert noise.share == pytest.approx(4 / 6) and noise.holds_from == {0: 1, 1: None}
    assert (const.holds, const.seeds_last) == (1, 1) and const.holds_from == {0: None, 1: 3}
    assert "copy" not in summ
    assert noise.sentence().startswith("noise: below the weakest task dim in 4/6 scored rounds (67%)")
    only_dense = summarize(rank_rounds(input_dim_survival(_history([4] * 4), "l"), roles))
    assert only_dense["noise"].rounds == 0 and math.isnan(only_dense["noise"].share)


def test_table_round_trip(tmp_path):
    hist = _history([4] * 6, [4, 3, 2, 1, 3, 4], [3, 0, 2, 0, 1, 4])
    surv = input_dim_survival(hist, "l", NAMES)
    back = survival_from_table(write_table(surv.rows(), tmp_path / "t.csv"))
    assert back.iterations == surv.iterations and back.dim_names == NAMES and back.total == 4
    np.testing.assert_array_equal(back.surviving, surv.surviving)
    np.testing.assert_allclose(back.remaining, surv.remaining)
    (tmp_path / "bad.csv").write_text("layer,iteration\nl,0\n")
    with pytest.raises(ValueError, match="not an input-dims table"):
        survival_from_table(tmp_path / "bad.csv")


@pytest.fixture(scope="module")
def distractor_run(tmp_path_factory):
    """A real two-round PPO IMP run on CartPole with one distractor of each kind (seconds)."""
    from lottery_fast.experiments import Experiment, run_experiment

    cfg = {"imp": {"iterations": 2, "rate": 0.5, "conditions": "ticket", "seeds": 2},
           "ppo": {"total_steps": 1024, "num_evals": 0, "distractors": ["gaussian", "copy:2", "constant:1"]}}
    runs = tmp_path_factory.mktemp("runs")
    return run_experiment(Experiment("d", "", "CartPole-v1", "ppo", cfg), runs, log=lambda line: None)


def test_run_rank_reads_masks_and_tables(distractor_run, tmp_path):
    from lottery_fast.analysis.run_masks import input_mask_report

    rank = run_rank(distractor_run)
    assert rank.roles == DimRoles(task=(0, 1, 2, 3), noise=(4,), constant=(6,), copies=((5, 2),))
    assert rank.dim_names[4:] == ["gaussian noise 0", "copy of pole angle", "constant 1"]
    assert {(r.seed, r.iteration) for r in rank.rounds} == {(s, it) for s in (0, 1) for it in (0, 1, 2)}
    assert set(rank.summary) == {"noise", "copy", "constant"}
    assert all(s.rounds == 4 for s in rank.summary.values())  # rounds 1 and 2 of two seeds
    assert "noise: below the weakest task dim in" in rank.text()
    for seed in (0, 1):
        input_mask_report(distractor_run, tmp_path, seed=seed)
    from_tables = run_rank(distractor_run, table_dir=tmp_path)
    assert [r.row() for r in from_tables.rounds] == [r.row() for r in rank.rounds]
    with pytest.raises(FileNotFoundError):
        run_rank(distractor_run, seeds=[5])
