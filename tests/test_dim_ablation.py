"""Per-dim ablation: dense agents without one input dim at a time, against the full input."""
from __future__ import annotations

import json
import math

import pytest
import torch

from lottery_fast.analysis.minimality import dim_ablation
from lottery_fast.train.protocol import TrainResult


class _Fake:
    """Return = 100 minus 40 per missing 'needed' dim (0 and 2) plus the seed; counts its trainings."""

    def __init__(self, select, calls):
        self.select = select
        calls.append(select)

    def build_model(self, seed):
        return torch.nn.Linear(1, 1)

    def train(self, model, seed):
        kept = set(range(4)) if self.select is None else set(self.select)
        ret = 100.0 - 40.0 * len({0, 2} - kept) + seed
        return TrainResult(metric=ret, best_metric=ret, steps=1), None


def test_ablation_table_and_relevant_dims(tmp_path):
    calls = []
    res = dim_ablation(lambda sel: _Fake(sel, calls), 4, [0, 2], ["x", "v", "a", "w"], cache_dir=tmp_path)
    assert calls[:2] == [None, None] and calls[2:4] == [(1, 2, 3), (1, 2, 3)] and len(calls) == 10
    assert res.full.mean == 101.0 and [r.mean for r in res.dropped] == [61.0, 101.0, 61.0, 101.0]
    assert res.relevant() == [0, 2] and res.relative(res.dropped[0]) == pytest.approx(61 / 101)
    rows = res.rows()
    assert rows[0]["dropped dim"] == "-" and rows[1]["name"] == "without x" and rows[1]["vs full"] == -40.0
    assert rows[1]["per seed"] == "60 62"
    assert json.loads((tmp_path / "drop3_seed2.json").read_text())["select"] == [0, 1, 2]
    calls.clear()  # cached: a rerun trains nothing, another dim set trains only what is new
    again = dim_ablation(lambda sel: _Fake(sel, calls), 4, [0, 2], cache_dir=tmp_path, dims=[1])
    assert calls == [] and again.dropped[0].mean == 101.0
    floored = dim_ablation(lambda sel: _Fake(sel, []), 4, [0], floor=-100.0, dims=[0])
    assert floored.relative(floored.dropped[0]) == pytest.approx(160 / 200)


def test_ablation_rejects_bad_input():
    make = lambda sel: _Fake(sel, [])  # noqa: E731
    for kwargs, match in [(dict(n_inputs=1, seeds=[0]), "at least 2"), (dict(n_inputs=4, seeds=[]), "no seeds"),
                          (dict(n_inputs=4, seeds=[0], dims=[4]), "distinct indices"),
                          (dict(n_inputs=4, seeds=[0], dim_names=["a"]), "dim names")]:
        with pytest.raises(ValueError, match=match):
            dim_ablation(make, **kwargs)


def test_ablation_with_real_ppo_on_a_tiny_budget(tmp_path):
    from lottery_fast.experiments import make_trainer

    section = {"total_steps": 1024, "num_evals": 1, "eval_episodes": 2}

    def factory(select):
        return make_trainer("ppo", "CartPole-v1", {**section, "obs_select": None if select is None else list(select)})

    res = dim_ablation(factory, 4, [0], dims=[2], cache_dir=tmp_path)
    assert len(res.dropped) == 1 and res.dropped[0].runs[0].select == (0, 1, 3)
    assert all(math.isfinite(r.metric) and r.metric > 0 for r in (res.full.runs[0], res.dropped[0].runs[0]))
