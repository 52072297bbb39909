"""make_vec_env: observation selection (minimality check) and float image observations (MinAtar, gridworld)."""
import numpy as np
import pytest
import torch

from lottery_fast.envs import make_vec_env
from lottery_fast.envs.registry import PATROL_GRID_DISTRACTORS
from lottery_fast.train.ppo import PPOConfig, PPOTrainer


def test_select_picks_columns_after_distractors():
    full = make_vec_env("CartPole-v1", 3, 7, distractors=("gaussian", "constant:2"))
    part = make_vec_env("CartPole-v1", 3, 7, distractors=("gaussian", "constant:2"), select=(5, 0, 4))
    try:
        assert part.spec.obs_shape == (3,)
        assert part.obs_names == ("constant 2", "cart position", "gaussian noise 0")
        a, b = full.reset(), part.reset()
        np.testing.assert_array_equal(b, a[:, [5, 0, 4]])
        for _ in range(5):
            act = np.array([0, 1, 1])
            np.testing.assert_array_equal(part.step(act).obs, full.step(act).obs[:, [5, 0, 4]])
    finally:
        full.close()
        part.close()


@pytest.mark.parametrize("select, match", [((), "empty"), ((0, 0), "duplicates"), ((4,), "out of range"),
                                           ((-1,), "non-negative"), ("01", "list")])
def test_bad_select(select, match):
    with pytest.raises(ValueError, match=match):
        make_vec_env("CartPole-v1", 1, 0, select=select)


@pytest.mark.slow
def test_float_image_env_and_channel_select(one_thread):
    with make_vec_env(PATROL_GRID_DISTRACTORS, 2, 0) as env:
        assert env.spec.is_image and env.spec.obs_dtype == np.float32 and env.spec.obs_shape == (7, 9, 9)
        full = env.reset()
    with make_vec_env(PATROL_GRID_DISTRACTORS, 2, 0, select=(3, 0)) as env:
        assert env.spec.obs_shape == (2, 9, 9)
        np.testing.assert_array_equal(env.reset(), full[:, [3, 0]])
    # PPO picks the conv torso for it and feeds the one-hot grid unscaled
    trainer = PPOTrainer(PATROL_GRID_DISTRACTORS, PPOConfig(obs_select=(0, 1, 2, 3), total_steps=1024, num_evals=0))
    model = trainer.build_model(0)
    assert model.actor.encoder[0].in_channels == 4
    x = torch.from_numpy(full[:, :4].copy())
    assert torch.equal(model.preprocess(x), x)
    result, _ = trainer.train(model, 0)
    assert np.isfinite(result.metric)


@pytest.mark.slow
def test_resume_keeps_conv_layer_order(tmp_path, one_thread):
    """Unit records are JSON with sorted keys; results.csv must keep the model's layer order on resume."""
    from lottery_fast.imp import IMPConfig, run_imp
    from lottery_fast.prune import PruneConfig

    trainer = PPOTrainer(PATROL_GRID_DISTRACTORS, PPOConfig(total_steps=1024, num_evals=0))
    cfg = IMPConfig(iterations=1, prune=PruneConfig(rate=0.5), conditions=("mask/weights",))
    run_imp(trainer, cfg, tmp_path / "run")
    fresh = (tmp_path / "run" / "results.csv").read_text()
    assert fresh.splitlines()[0].index("density/actor.encoder.0") < fresh.splitlines()[0].index("density/actor.body.0")
    run_imp(trainer, cfg, tmp_path / "run")  # resumes: rows rebuilt from the JSON records
    assert (tmp_path / "run" / "results.csv").read_text() == fresh
