"""`lottery-fast report` on a tiny budget, the facts it computes, and the minimality check."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lottery_fast
from lottery_fast.analysis.curves import Curve, normalised_curves
from lottery_fast.analysis.findings import (compare_modes, compare_retention, condition_gaps, input_dim_facts,
                                           mode_summary, retention)
from lottery_fast.analysis.input_mask import input_dim_survival
from lottery_fast.analysis.minimality import kept_inputs, minimality_check
from lottery_fast.presets import get_preset
from lottery_fast.report import ReportConfig, plan, rescale_mode
from lottery_fast.train.protocol import TrainResult

PACKAGE_ROOT = str(Path(lottery_fast.__file__).resolve().parents[1])
TINY = ("--seeds", "1", "--envs", "CartPole-v1", "--parts", "performance,distractors,minimality,gridworld",
        "--set", "imp.iterations=1", "--set", "ppo.total_steps=1024", "--set", "ppo.num_evals=1",
        "--set", "ppo.eval_episodes=2", "--set", "bc.expert.total_steps=1024", "--set", "bc.expert.num_evals=0",
        "--set", "bc.steps=20", "--set", "bc.dataset_steps=256", "--set", "bc.num_evals=1",
        "--set", "bc.eval_episodes=2")


def run_report(out: Path, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in (PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", PYTHONPATH=path)
    return subprocess.run([sys.executable, "-m", "lottery_fast.cli", "report", "--preset", "quick",
                           "--out", str(out), *TINY, *extra], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_report_smoke_and_resume(tmp_path):
    out = tmp_path / "rep"
    r = run_report(out, tmp_path, "--jobs", "2")  # experiments in worker processes
    assert r.returncode == 0, r.stderr
    text = (out / "report.md").read_text()
    for heading in ("## 1. RL vs behavioural cloning", "## 2. The four conditions", "## 3. Input masks",
                    "Patrol gridworld channels", "## 4. Minimality check"):
        assert heading in text, heading
    assert "RL needs more weights than BC" in text or "cannot be normalised" in text
    if "cannot be normalised" not in text:
        assert "per seed: RL needs more weights than BC" in text and "sign test" in text
    assert "### Area under the learning curve" in text  # the mean evaluation through training, per level
    for fig in ("rl_vs_bc.png", "conditions.png", "cartpole-distractors-ppo/input_dims_seed0.png",
                "patrolgrid-ppo/input_kernels_seed0.png"):
        assert (out / "figures" / fig).stat().st_size > 1000, fig
    assert "seed_*/" in (out / "runs" / ".gitignore").read_text()
    assert sorted(p.name for p in (out / "runs" / "minimality").iterdir()) == ["full_seed0.json", "kept_seed0.json"]
    # every number comes from the run folders: the dense CartPole PPO return is the one in results.csv
    rows = (out / "runs" / "cartpole-ppo" / "results.csv").read_text().splitlines()
    dense = float(rows[1].split(",")[rows[0].split(",").index("best_metric")])
    assert f"| CartPole-v1 | RL (PPO) | {dense:.4g} |" in text
    # a second call (in this process: --jobs 1) resumes: nothing is trained again
    again = run_report(out, tmp_path)
    assert again.returncode == 0, again.stderr
    assert "seed 0 iter" not in again.stderr and "resuming" in again.stderr


def test_report_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="preset"):
        ReportConfig(out=tmp_path, preset="huge")
    with pytest.raises(ValueError, match="unknown"):
        ReportConfig(out=tmp_path, parts=("performance", "nonsense"))
    with pytest.raises(ValueError, match="distractors part"):
        ReportConfig(out=tmp_path, parts=("minimality",))
    with pytest.raises(ValueError, match="jobs"):
        ReportConfig(out=tmp_path, jobs=0)


def test_full_preset_is_paper_scale(tmp_path):
    exps = plan(ReportConfig(out=tmp_path, preset="full"))
    perf = [e for e in exps if e.part == "performance"]
    assert {(e.env_id, e.paradigm) for e in perf} == {(env, p) for env in ("CartPole-v1", "Acrobot-v1")
                                                     for p in ("ppo", "bc")}
    assert all(e.config["imp"]["iterations"] == 20 and e.config["imp"]["rate"] == 0.2
               and e.config["imp"]["seeds"] == 5 for e in exps)
    quick = {e.name: e for e in plan(ReportConfig(out=tmp_path, preset="quick", seeds=3,
                                                  overrides=("ppo.total_steps=2048",)))}
    assert quick["acrobot-ppo"].config["ppo"]["total_steps"] == 2048  # --set wins over the preset
    assert all(e.config["imp"]["seeds"] == 3 for e in quick.values())
    assert get_preset("quick").report["seeds"] >= 2  # a spread over seeds needs two


# -- facts -------------------------------------------------------------------------------------
def curve(cond, remaining, mean):
    return Curve(cond, list(remaining), list(mean), [0.0] * len(mean), [1] * len(mean), list(mean), list(mean))


def test_retention_and_rl_vs_bc():
    rl = retention(curve("mask/weights", [100, 50, 25, 12.5], [1.0, 0.97, 0.9, 0.99]))
    assert (rl.kept_down_to, rl.falls_below_at) == (50, 25)  # the recovery at 12.5 % does not count
    bc = retention(curve("mask/weights", [100, 50, 25, 12.5], [1.0, 1.0, 0.96, 0.95]))
    assert (bc.kept_down_to, bc.falls_below_at) == (12.5, None)
    assert compare_retention(rl, bc)[0] == "yes"
    assert compare_retention(bc, rl)[0] == "no"
    assert compare_retention(bc, bc)[0] == "undetermined"
    assert compare_retention(rl, rl)[0] == "tie"
    first = retention(curve("random/reinit", [50, 25], [0.5, 0.2]))
    assert first.kept_down_to is None and "already" in first.describe()


def test_condition_gaps():
    a = curve("mask/permuted", [100, 50, 25], [1.0, 0.9, 0.6])
    b = curve("permuted/permuted", [50, 25], [0.8, 0.7])
    assert condition_gaps([a, b], "mask/permuted", "permuted/permuted") == (1, 2, pytest.approx(0.0))
    assert condition_gaps([a], "mask/permuted", "random/reinit") is None


def test_normalisation_with_negative_returns():
    rows = [{"seed": "0", "condition": "mask/weights", "iteration": "0", "density": "1", "best_metric": "-100"},
            {"seed": "0", "condition": "mask/weights", "iteration": "1", "density": "0.5", "best_metric": "-300"}]
    (c,) = normalised_curves(rows, floor=-500.0)
    assert c.mean == pytest.approx([1.0, 0.5])  # worse return -> lower, not higher, performance
    assert c.low == c.high == c.mean


def test_input_dim_facts():
    history = {0: {"l": np.ones((4, 5), bool)},
               1: {"l": np.array([[1, 1, 0, 1, 0]] * 4, bool)},
               2: {"l": np.array([[1, 0, 0, 1, 0]] * 4, bool)}}
    surv = input_dim_survival(history, "l", ["a", "b", "c", "noise", "const"])
    facts = input_dim_facts(surv, 2)
    assert facts.real == ["a", "b", "c"] and facts.distractors == ["noise", "const"]
    assert facts.distractors_pruned == ["const"] and facts.real_pruned == ["b", "c"]
    assert facts.distractors_first() == "no"
    assert facts.pruned_at == {"a": None, "b": 2, "c": 1, "noise": None, "const": 1}


# -- minimality --------------------------------------------------------------------------------
def test_kept_inputs_of_hand_built_masks():
    linear = torch.zeros(3, 6, dtype=torch.bool)
    linear[0, 1] = linear[2, 4] = linear[1, 4] = True
    assert kept_inputs(linear) == (1, 4)
    conv = np.zeros((8, 3, 3, 3), bool)
    conv[5, 2, 0, 1] = True
    assert kept_inputs(conv) == (2,)
    with pytest.raises(ValueError, match="mask"):
        kept_inputs(np.ones(4, bool))


class _FakeTrainer:
    """Its 'return' is the number of inputs it sees, so the check's bookkeeping is visible."""

    def __init__(self, select, calls):
        self.select = select
        calls.append(select)

    def build_model(self, seed):
        return torch.nn.Linear(1, 1)

    def train(self, model, seed):
        width = 5 if self.select is None else len(self.select)
        return TrainResult(metric=float(width + seed), best_metric=float(width + seed), steps=1), None


def test_minimality_check_trains_full_and_kept_and_resumes(tmp_path):
    calls = []
    res = minimality_check(lambda sel: _FakeTrainer(sel, calls), {0: [1, 3], 1: (0,)}, cache_dir=tmp_path)
    assert calls == [None, None, (1, 3), (0,)]
    assert [r.metric for r in res.full] == [5.0, 6.0] and [r.metric for r in res.minimal] == [2.0, 2.0]
    assert res.full_mean == 5.5 and res.minimal_mean == 2.0
    assert json.loads((tmp_path / "kept_seed0.json").read_text())["select"] == [1, 3]
    calls.clear()
    again = minimality_check(lambda sel: _FakeTrainer(sel, calls), {0: [1, 3], 1: (0, 2)}, cache_dir=tmp_path)
    assert calls == [(0, 2)]  # only the seed whose kept dims changed is retrained
    assert again.minimal[1].metric == 3.0
    with pytest.raises(ValueError, match="no input"):
        minimality_check(lambda sel: _FakeTrainer(sel, calls), {0: []})


def test_minatar_skipped_with_reason(tmp_path, monkeypatch):
    import lottery_fast.report.run as report

    monkeypatch.setattr(report, "minatar_missing", lambda: "MinAtar envs need the optional 'minatar' package")
    path = report.run_report(ReportConfig(out=tmp_path, parts=("minatar",)), log=lambda line: None)
    assert "Skipped: MinAtar envs need the optional 'minatar' package" in path.read_text()
    assert not (tmp_path / "runs" / "minatar-breakout-ppo").exists()


# -- init rescaling ----------------------------------------------------------------------------
def _facts(kept_by_dim):
    """InputDimFacts of a 3-task-dim + 2-distractor input layer; ``kept_by_dim``: last-iteration columns."""
    history = {0: {"l": np.ones((4, 5), bool)}, 1: {"l": np.array([kept_by_dim] * 4, bool)}}
    return input_dim_facts(input_dim_survival(history, "l", ["a", "b", "c", "noise", "const"]), 2)


def test_mode_summary_and_comparison_count_seeds():
    none = mode_summary("none", [_facts([1, 1, 1, 0, 1]), _facts([1, 1, 1, 1, 1])])
    rms = mode_summary("rms", [_facts([1, 1, 1, 0, 0]), _facts([0, 1, 1, 0, 0])], final_return=120.0)
    assert (none.all_distractors_pruned, none.distractors_pruned, none.distractor_pairs) == (0, 1, 4)
    assert (rms.all_distractors_pruned, rms.distractors_pruned, rms.task_pruned, rms.task_pairs) == (2, 4, 1, 6)
    assert rms.distractors_first == 2 and rms.kept_distractors == 0.0 and rms.kept_task == pytest.approx(5 / 6)
    (line,) = compare_modes([none, rms])
    assert line.startswith("with rms, every distractor is fully pruned in 2/2 seeds vs 0/2 with none")
    assert "task dims fully pruned: 1/6 vs 0/6" in line
    assert "return" not in line  # the baseline has no return to compare with
    (line,) = compare_modes([mode_summary("none", [_facts([1, 1, 1, 0, 1])], 500.0), rms])
    assert line.endswith("ticket return at the last iteration 120 vs 500; mean iteration at which the pruned "
                         "distractors and the pruned task dims went: 1 and 1")
    assert none.distractors_gone_at == 1.0 and none.task_gone_at is None
    with pytest.raises(ValueError, match="baseline"):
        compare_modes([none])


def test_rescale_part_plans_one_run_per_mode(tmp_path):
    with pytest.raises(ValueError, match="rescale-modes"):
        ReportConfig(out=tmp_path, parts=("rescale",), rescale_modes=("none", "bogus"))
    with pytest.raises(ValueError, match="rescale-modes"):
        ReportConfig(out=tmp_path, parts=("rescale",), rescale_modes=("rms",))
    alone = plan(ReportConfig(out=tmp_path, parts=("rescale",), rescale_modes=("none", "rms")))
    assert [(e.name, rescale_mode(e)) for e in alone] == [("cartpole-distractors-ppo-rescale-none", "none"),
                                                         ("cartpole-distractors-ppo-rescale-rms", "rms")]
    assert alone[0].config["ppo"] == alone[1].config["ppo"]  # only the init differs
    # with the distractors part, its run is the `none` run: not planned twice
    both = plan(ReportConfig(out=tmp_path, parts=("distractors", "rescale")))
    assert [(e.name, rescale_mode(e)) for e in both] == [("cartpole-distractors-ppo", "none"),
                                                        ("cartpole-distractors-ppo-rescale-fan-in", "fan_in"),
                                                        ("cartpole-distractors-ppo-rescale-rms", "rms")]


@pytest.mark.slow
def test_rescale_part_writes_figure_table_and_finding(tmp_path):
    from lottery_fast.report import run_report as report_in_process

    tiny = ("imp.iterations=1", "ppo.total_steps=1024", "ppo.num_evals=1", "ppo.eval_episodes=2")
    cfg = ReportConfig(out=tmp_path, seeds=1, parts=("rescale",), rescale_modes=("none", "rms"), overrides=tiny)
    text = report_in_process(cfg, log=lambda line: None).read_text()
    assert "## 5. Init rescaling: the input mask with vs without" in text
    assert "--rescale-modes none,rms" in text
    assert (tmp_path / "figures" / "rescale_input_dims.png").stat().st_size > 1000
    for dim in ("cart position", "pole angular velocity", "gaussian"):
        assert f"| {dim} |" in text or f"| {dim} " in text, dim
    assert "- **Finding:** with rms, every distractor is fully pruned in " in text
    assert "ticket return at the last iteration" in text
    # rms puts every prunable layer at one scale: the table of initial RMS shows one value per layer
    (rms_row,) = [line for line in text.splitlines() if line.startswith("| rms | 0")]
    assert len(set(rms_row.strip("| ").split(" | ")[1:])) == 1, rms_row
    for mode in ("none", "rms"):  # each run folder records the mode it ran with
        stored = (tmp_path / "runs" / f"cartpole-distractors-ppo-rescale-{mode}" / "config.json").read_text()
        assert json.loads(stored)["experiment"]["imp"]["rescale"] == mode
