"""Distractor dims in the batched RL envs and their path through PPO and BC configs."""
import gymnasium
import numpy as np
import pytest
import torch

from lottery_fast import configs
from lottery_fast.envs import EnvConfig, as_env_config, make_vec_env
from lottery_fast.envs.distractors import OBS_DIM_NAMES
from lottery_fast.train.ppo import PPOConfig, PPOTrainer
from lottery_fast.train.rollout import collect_states, evaluate_policy

CARTPOLE = OBS_DIM_NAMES["CartPole-v1"]
SPECS = ("gaussian", "uniform:-2:2", "constant:1", "copy:0")


@pytest.mark.parametrize("backend", ["envpool", "gymnasium"])
def test_shape_names_and_values(backend):
    with make_vec_env("CartPole-v1", 3, seed=5, backend=backend, distractors=SPECS) as env:
        assert env.spec.obs_shape == (8,)
        assert env.obs_names == env.spec.obs_names == CARTPOLE + (
            "gaussian noise 0", "uniform noise 0", "constant 1", "copy of cart position")
        obs = env.reset()
        for _ in range(20):
            assert obs.shape == (3, 8) and obs.dtype == np.float32
            assert np.all(obs[:, 6] == 1.0)
            np.testing.assert_array_equal(obs[:, 7], obs[:, 0])
            assert np.all((obs[:, 5] >= -2) & (obs[:, 5] < 2))
            obs = env.step(np.zeros(3, np.int64)).obs
    with make_vec_env("CartPole-v1", 3, seed=5, backend=backend) as plain:
        # the env's own dims are untouched: same seed, same states with or without distractors
        np.testing.assert_array_equal(plain.reset(), make_vec_env("CartPole-v1", 3, seed=5, backend=backend,
                                                                  distractors=SPECS).reset()[:, :4])
        assert plain.obs_names == CARTPOLE and plain.spec.obs_shape == (4,)


def _trajectory(seed: int, steps: int = 30) -> np.ndarray:
    with make_vec_env("CartPole-v1", 2, seed=seed, distractors=("gaussian", "gaussian")) as env:
        out = [env.reset()]
        out += [env.step(np.ones(2, np.int64)).obs for _ in range(steps)]
        out.append(env.reset())  # a reset replays the same noise (EnvPool's own state goes on)
    return np.stack(out)


def test_noise_is_deterministic_in_the_env_seed():
    a, b, c = _trajectory(1), _trajectory(1), _trajectory(2)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[0, :, 4:], a[-1, :, 4:])
    assert not np.allclose(a[:, :, 4:], c[:, :, 4:])
    noise = a[:, :, 4:]
    assert 0.5 < noise.std() < 1.5 and abs(noise.mean()) < 0.5  # standard normal
    assert not np.allclose(noise[:, :, 0], noise[:, :, 1])  # the two noise dims differ


class _ImageEnv(gymnasium.Env):
    observation_space = gymnasium.spaces.Box(0, 255, (1, 6, 6), np.uint8)
    action_space = gymnasium.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros((1, 6, 6), np.uint8), {}

    def step(self, action):
        return np.zeros((1, 6, 6), np.uint8), 0.0, True, False, {}


IMAGE_ID = "LotteryFastTest/DistractorImage-v0"
if IMAGE_ID not in gymnasium.registry:
    gymnasium.register(IMAGE_ID, entry_point=_ImageEnv)


def test_bad_distractors_are_rejected():
    with pytest.raises(ValueError, match="vector observations"):
        make_vec_env(IMAGE_ID, 1, seed=0, distractors=("gaussian",))
    assert make_vec_env(IMAGE_ID, 1, seed=0).obs_names is None
    with pytest.raises(ValueError, match="unknown kind"):
        make_vec_env("CartPole-v1", 1, seed=0, distractors=("pink",))
    with pytest.raises(ValueError, match="out of range"):
        make_vec_env("CartPole-v1", 1, seed=0, distractors=("copy:9",))
    with pytest.raises(ValueError, match="list of distractor specs"):
        make_vec_env("CartPole-v1", 1, seed=0, distractors="gaussian")
    with pytest.raises(ValueError, match="PPOConfig.distractors"):
        PPOTrainer("CartPole-v1", PPOConfig(distractors=("gaussian", 3)))
    with pytest.raises(ValueError, match="vector observations"):
        PPOTrainer(IMAGE_ID, PPOConfig(distractors=("constant:0",)))


def test_env_config_bundles_the_settings():
    cfg = PPOConfig(env_kwargs={"max_episode_steps": 9}, distractors=["gaussian"])
    env = cfg.env_config("CartPole-v1")
    assert env == EnvConfig("CartPole-v1", "auto", {"max_episode_steps": 9}, ("gaussian",))
    assert as_env_config(env) is env and as_env_config("CartPole-v1") == EnvConfig("CartPole-v1")
    with env.make(2, 0) as venv:
        assert venv.spec.obs_shape == (5,) and venv.spec.max_episode_steps == 9


def test_config_builder_and_json_round_trip_give_a_tuple_of_str():
    section = configs.parse_assignment('ppo.distractors=["gaussian","gaussian","constant:1","copy:0"]')["ppo"]
    cfg = configs.build(PPOConfig, section, "ppo")
    assert cfg.distractors == ("gaussian", "gaussian", "constant:1", "copy:0")
    cfg.validate()
    import dataclasses
    import json

    back = configs.build(PPOConfig, json.loads(json.dumps(dataclasses.asdict(cfg))))
    assert back == cfg


def test_ppo_trains_and_evaluates_with_distractors():
    cfg = PPOConfig(total_steps=2048, num_evals=1, eval_episodes=3, distractors=("gaussian", "constant:1", "copy:2"))
    trainer = PPOTrainer("CartPole-v1", cfg)
    assert trainer.spec.obs_shape == (7,) and trainer.spec.obs_names[-1] == "copy of pole angle"
    model = trainer.build_model(0)
    assert model.actor.body[0].in_features == 7
    result, _ = trainer.train(model, seed=0)
    assert np.isfinite(result.metric) and result.steps == 2048
    again = trainer.build_model(0)
    assert trainer.train(again, seed=0)[0].metric == result.metric  # deterministic with noise inputs
    # every env maker of the trainer sees the same distractors
    returns = evaluate_policy(model, trainer.env, seed=1, episodes=2)
    assert returns.shape == (2,)
    obs, _ = collect_states(model, trainer.env, seed=1, num_envs=2, steps=10,
                            generator=torch.Generator().manual_seed(0))
    assert obs.shape[1] == 7 and torch.all(obs[:, 4 + 1] == 1.0)
    np.testing.assert_array_equal(obs[:, 6].numpy(), obs[:, 2].numpy())


def test_bc_student_sees_the_experts_distractors():
    from lottery_fast.train.bc import BCConfig, BCTrainer

    expert = PPOConfig(total_steps=1024, num_evals=1, eval_episodes=2, distractors=("gaussian", "uniform"))
    trainer = BCTrainer("CartPole-v1", BCConfig(expert=expert, dataset_steps=64, num_envs=4, steps=5,
                                                 num_evals=1, eval_episodes=2))
    assert trainer.env.distractors == ("gaussian", "uniform") and trainer.spec.obs_shape == (6,)
    obs, _ = trainer.dataset()
    assert obs.shape[1] == 6
    result, _ = trainer.train(trainer.build_model(0), seed=0)
    assert np.isfinite(result.metric)
