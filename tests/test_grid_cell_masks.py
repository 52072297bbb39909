"""The patrol gridworld's per-cell input mask (MLP torso), against the enemy's route."""
from __future__ import annotations

import numpy as np
import pytest

from lottery_fast.analysis.mask_images import CellMasks, gridworld_cell_masks, plot_cell_masks


def test_mean_kept_splits_route_floor_and_walls(tmp_path):
    walls = np.zeros((3, 4), bool)
    walls[0] = True
    route = np.zeros((3, 4), bool)
    route[1, 1:3] = True
    kept = np.stack([np.ones((3, 4)), np.where(route, 0.5, 0.0)])
    kept[1, 2, 0] = 0.25  # one floor cell off the route keeps a quarter
    cells = CellMasks("enemy", [0, 4], np.array([1.0, 0.4]), kept, route, walls)
    assert cells.mean_kept("route") == 0.5 and cells.mean_kept("walls") == 0.0
    assert cells.mean_kept("off route") == pytest.approx(0.25 / 6) and cells.mean_kept("route", 0) == 1.0
    assert [r["iteration"] for r in cells.rows()] == [0, 4] and cells.rows()[1]["kept route"] == 0.5
    assert plot_cell_masks(cells, tmp_path / "c.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="not in the mask history"):
        plot_cell_masks(cells, tmp_path / "bad.png", iterations=[2])


def _run(tmp_path, torso):
    from lottery_fast.experiments import Experiment, run_experiment

    cfg = {"imp": {"iterations": 1, "rate": 0.5, "conditions": "ticket", "seeds": 1},
           "ppo": {"total_steps": 1024, "num_evals": 0, "network": {"image_torso": torso}}}
    return run_experiment(Experiment(torso, "", "lottery_fast/PatrolGridDistractors-v0", "ppo", cfg), tmp_path,
                          log=lambda line: None)


def test_cell_masks_of_a_real_mlp_run(tmp_path):
    cells = gridworld_cell_masks(_run(tmp_path, "mlp"))
    assert cells.kept.shape == (2, 9, 9) and cells.iterations == [0, 1]
    assert cells.route.sum() == 7 and cells.route[4, 1:8].all() and cells.walls[0].all()
    assert (cells.kept[0] == 1.0).all() and cells.kept[1].max() <= 1.0 and cells.remaining[1] < 1.0
    with pytest.raises(ValueError, match="no channel"):
        gridworld_cell_masks(tmp_path / "mlp", channel="lava")
    # `lottery-fast masks` reads the flattened input per channel and cell, named after the env's channels
    from lottery_fast.analysis.run_masks import input_mask_report

    rep = input_mask_report(tmp_path / "mlp", tmp_path / "figs")
    assert rep.survival.kind == "linear" and rep.survival.pixel_fraction.shape == (2, 7, 9, 9)
    assert rep.survival.channel_names[:4] == ["walls", "agent", "goal", "enemy"]
    np.testing.assert_allclose(rep.survival.pixel_fraction[:, 3], cells.kept)


def test_cell_masks_refuse_a_conv_torso(tmp_path):
    with pytest.raises(ValueError, match="image_torso=mlp"):
        gridworld_cell_masks(_run(tmp_path, "conv"))
    from lottery_fast.analysis.run_masks import input_mask_report

    rep = input_mask_report(tmp_path / "conv", tmp_path / "figs")
    assert rep.survival.kind == "conv" and rep.survival.channel_names[3] == "enemy"
