"""PPO trainer: GAE with autoreset rows, learning, determinism, masks, rewinding, continuous and image tasks."""
import fnmatch
import math

import gymnasium
import numpy as np
import pytest
import torch

from lottery_fast import configs
from lottery_fast.nn import get_masks, masked_modules, set_masks, unmasked
from lottery_fast.train.ppo import PPOConfig, PPOTrainer
from lottery_fast.train.protocol import Trainer
from lottery_fast.train.rollout import compute_gae

SMALL = PPOConfig(total_steps=2048, num_evals=1, eval_episodes=4)


# -- GAE ----------------------------------------------------------------------------------------
def _reference_gae(rewards, values, terminated, dones, valid, gamma, lam):
    """Forward sums per env: A_t = sum_l (gamma*lam)^l delta_{t+l} within the episode of row t."""
    T, N = rewards.shape
    adv = np.zeros((T, N))
    for i in range(N):
        for t in range(T):
            if not valid[t, i]:
                continue
            total, scale = 0.0, 1.0
            for u in range(t, T):
                boot = 0.0 if terminated[u, i] else gamma * values[u + 1, i]
                total += scale * (rewards[u, i] + boot - values[u, i])
                if dones[u, i]:
                    break
                scale *= gamma * lam
            adv[t, i] = total
    return adv


def _episode_flags(T, N, rng):
    """Random episode ends in next-step-autoreset layout: the row after an end is an autoreset row."""
    terminated = np.zeros((T, N), np.float32)
    truncated = np.zeros((T, N), np.float32)
    valid = np.ones((T, N), np.float32)
    for i in range(N):
        t = 0
        while t < T:
            if rng.random() < 0.2:
                (terminated if rng.random() < 0.5 else truncated)[t, i] = 1
                if t + 1 < T:
                    valid[t + 1, i] = 0
                t += 2
            else:
                t += 1
    return terminated, np.maximum(terminated, truncated), valid


def test_gae_masks_autoreset_rows_and_bootstraps_truncation():
    rng = np.random.default_rng(0)
    T, N = 16, 5
    rewards = rng.normal(size=(T, N)).astype(np.float32)
    values = rng.normal(size=(T + 1, N)).astype(np.float32)
    terminated, dones, valid = _episode_flags(T, N, rng)
    assert dones.sum() >= 5 and (valid == 0).sum() >= 3
    rewards[valid == 0] = 0.0  # what the env returns on an autoreset step
    got = compute_gae(rewards, values, terminated, dones, valid, 0.99, 0.95)
    ref = _reference_gae(rewards, values, terminated, dones, valid, 0.99, 0.95)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert np.all(got[valid == 0] == 0)


def test_gae_hand_example():
    # env 0: truncated at row 0 (bootstraps from the final obs in row 1), row 1 is the autoreset row
    # env 1: terminated at row 1 (no bootstrap)
    rewards = np.array([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0]], np.float32)
    values = np.array([[0.5, 0.5], [2.0, 0.5], [0.3, 9.0], [0.7, 0.1]], np.float32)
    terminated = np.array([[0, 0], [0, 1], [0, 0]], np.float32)
    dones = np.array([[1, 0], [0, 1], [0, 0]], np.float32)
    valid = np.array([[1, 1], [0, 1], [1, 0]], np.float32)
    g, lam = 0.5, 0.5
    adv = compute_gae(rewards, values, terminated, dones, valid, g, lam)
    assert adv[0, 0] == pytest.approx(1 + g * 2.0 - 0.5)  # bootstrap from the truncated episode's final obs
    assert adv[1, 0] == 0 and adv[2, 1] == 0
    assert adv[2, 0] == pytest.approx(1 + g * 0.7 - 0.3)
    assert adv[1, 1] == pytest.approx(1 - 0.5)  # terminated: no bootstrap from the autoreset row's 9.0
    assert adv[0, 1] == pytest.approx((1 + g * 0.5 - 0.5) + g * lam * adv[1, 1])


# -- the trainer --------------------------------------------------------------------------------
def test_protocol_names_and_prune_exclude():
    trainer = PPOTrainer("CartPole-v1", SMALL)
    assert isinstance(trainer, Trainer) and trainer.name == "ppo"
    names = list(masked_modules(trainer.build_model(0)))
    excluded = {n for n in names if any(fnmatch.fnmatch(n, p) for p in trainer.default_prune_exclude)}
    assert excluded == {"critic.body.0", "critic.body.2", "critic.head"}
    assert set(names) - excluded == {"actor.body.0", "actor.body.2", "actor.head"}


def test_bad_input_is_rejected_before_training():
    with pytest.raises(ValueError, match="close matches"):
        PPOTrainer("CartPol-v1")
    with pytest.raises(ValueError, match="less than one batch"):
        PPOTrainer("CartPole-v1", PPOConfig(total_steps=100))
    with pytest.raises(ValueError, match="gamma"):
        PPOTrainer("CartPole-v1", PPOConfig(gamma=1.5))
    trainer = PPOTrainer("CartPole-v1", SMALL)
    with pytest.raises(ValueError, match="rewind_step"):
        trainer.train(trainer.build_model(0), 0, rewind_step=SMALL.optimizer_steps + 1)
    with pytest.raises(ValueError, match="seed"):
        trainer.train(trainer.build_model(0), -1)
    nan_model = trainer.build_model(0)
    with torch.no_grad():
        nan_model.actor.body[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="actor.body.0.weight holds NaN"):
        trainer.train(nan_model, 0)
    with pytest.raises(TypeError, match="ActorCritic"):
        trainer.train(torch.nn.Linear(4, 2), 0)
    pendulum = PPOTrainer("Pendulum-v1", PPOConfig.continuous_control(total_steps=2048))
    with pytest.raises(ValueError, match="norm_obs"):
        PPOTrainer("Pendulum-v1", PPOConfig(total_steps=2048)).train(pendulum.build_model(0), 0)


def test_build_model_is_deterministic_and_cleanrl_initialised():
    trainer = PPOTrainer("CartPole-v1", SMALL)
    a, b, c = trainer.build_model(3), trainer.build_model(3), trainer.build_model(4)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    assert not torch.equal(a.actor.head.weight, c.actor.head.weight)
    w = a.actor.body[0].weight  # orthogonal rows with gain sqrt(2): W^T W = 2 I on the 4 inputs
    torch.testing.assert_close(w.T @ w, 2 * torch.eye(4), atol=1e-5, rtol=0)
    assert a.actor.head.weight.abs().max() < 0.02 and a.critic.head.weight.abs().max() > 0.1
    assert all(float(m.bias.detach().abs().max()) == 0 for m in masked_modules(a).values())


def test_init_does_not_depend_on_the_thread_count():
    # orthogonal_ runs a QR; a resumed IMP run checks its init bit for bit, in whatever process
    trainer = PPOTrainer("CartPole-v1", SMALL)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = trainer.build_model(5).state_dict()
        torch.set_num_threads(4)
        four = trainer.build_model(5).state_dict()
        assert torch.get_num_threads() == 4  # restored after the init
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(one[k], four[k]) for k in one)


@pytest.mark.slow
def test_ppo_learns_cartpole_quickly():
    trainer = PPOTrainer("CartPole-v1", PPOConfig(total_steps=50_000, num_evals=2))
    progress = []
    result, rewind = trainer.train(trainer.build_model(0), seed=0, on_progress=progress.append)
    assert rewind is None
    assert result.metric >= 200, result  # deterministic evaluation; reaches ~450-500 here
    assert result.best_metric >= result.metric
    assert result.steps == 48 * 1024 and result.extra["optimizer_steps"] == 48 * 16
    assert progress[-1]["step"] == result.steps and progress[-1]["steps_per_s"] > 0
    assert math.isfinite(result.extra["train_return"])


@pytest.mark.slow
def test_same_seed_same_result():
    trainer = PPOTrainer("CartPole-v1", SMALL)
    runs = []
    for seed in (5, 5, 6):
        model = trainer.build_model(0)
        result, _ = trainer.train(model, seed)
        runs.append((result, model.state_dict()))
    (r0, s0), (r1, s1), (_, s2) = runs
    assert r0.metric == r1.metric and r0.extra["v_loss"] == r1.extra["v_loss"]
    assert all(torch.equal(s0[k], s1[k]) for k in s0)
    assert not torch.equal(s0["actor.head.weight"], s2["actor.head.weight"])


def test_pruned_weights_stay_zero_and_masks_survive():
    trainer = PPOTrainer("CartPole-v1", SMALL)
    model = trainer.build_model(0)
    g = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(m.weight.shape, generator=g) < 0.5 for n, m in masked_modules(model).items()}
    set_masks(model, masks)
    before = {n: m.weight.detach().clone() for n, m in masked_modules(model).items()}
    trainer.train(model, 1)
    for name, layer in masked_modules(model).items():
        assert torch.equal(layer.mask, masks[name])
        assert torch.all(layer.weight[~masks[name]] == 0), name
        assert torch.all(model.state_dict()[f"{name}.weight"][~masks[name]] == 0)
        assert not torch.equal(layer.weight[masks[name]], before[name][masks[name]]), name
    assert all(torch.equal(v, masks[k]) for k, v in get_masks(model).items())


@pytest.mark.slow
def test_rewind_step_returns_the_state_after_k_optimizer_steps():
    base = dict(num_evals=1, eval_episodes=2, anneal_lr=False)
    short = PPOTrainer("CartPole-v1", PPOConfig(total_steps=1024, **base))  # one update: 16 steps
    long = PPOTrainer("CartPole-v1", PPOConfig(total_steps=3072, **base))
    ref = short.build_model(0)
    short.train(ref, 2)
    model = long.build_model(0)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    _, rewind = long.train(model, 2, rewind_step=16)
    assert set(rewind) == set(ref.state_dict())
    for k, v in ref.state_dict().items():
        assert torch.equal(rewind[k], v), k
    assert not torch.equal(rewind["actor.head.weight"], model.state_dict()["actor.head.weight"])
    _, rewind0 = long.train(long.build_model(0), 2, rewind_step=0)
    assert all(torch.equal(rewind0[k], v) for k, v in init.items())


def test_masked_dense_matches_plain_dense():
    """At 0% sparsity the masked network trains like the same network of plain nn.Linear."""
    trainer = PPOTrainer("CartPole-v1", PPOConfig(total_steps=1024, num_evals=1, eval_episodes=2))
    masked_model = trainer.build_model(0)
    plain_model = unmasked(trainer.build_model(0))
    assert not masked_modules(plain_model)
    trainer.train(masked_model, 0)
    trainer.train(plain_model, 0)
    for k, v in masked_model.state_dict().items():
        torch.testing.assert_close(plain_model.state_dict()[k], v, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_continuous_ppo_runs_on_pendulum_with_obs_norm_in_the_model():
    cfg = PPOConfig.continuous_control(total_steps=4096, num_evals=1, eval_episodes=2)
    trainer = PPOTrainer("Pendulum-v1", cfg)
    model = trainer.build_model(0)
    assert "obs_norm.mean" in model.state_dict() and "actor.log_std" in dict(model.named_parameters())
    assert "actor.log_std" not in masked_modules(model)
    result, rewind = trainer.train(model, 0, rewind_step=0)
    assert math.isfinite(result.metric) and -2000 < result.metric <= 0
    # statistics saw the first observation and every step of both rollouts; rewind holds the fresh ones
    assert float(model.obs_norm.count) == pytest.approx(1e-4 + 8 * (1 + 2 * 256))
    assert float(rewind["obs_norm.count"]) == pytest.approx(1e-4)
    assert model.obs_norm.mean.abs().sum() > 0
    # evaluation goes through the stored statistics: changing them changes the policy's actions
    obs = torch.randn(5, 3)
    a = model.greedy(obs)
    model.obs_norm.mean += 1.0
    assert not torch.allclose(a, model.greedy(obs))


class _SideEnv(gymnasium.Env):
    """Tiny image task (channels-last uint8): a bright column on one side says which action pays."""

    observation_space = gymnasium.spaces.Box(0, 255, (12, 12, 1), np.uint8)
    action_space = gymnasium.spaces.Discrete(2)

    def _obs(self):
        self._side = int(self.np_random.integers(2))
        img = np.zeros((12, 12, 1), np.uint8)
        img[:, 11 * self._side] = 255
        return img

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return self._obs(), {}

    def step(self, action):
        reward = float(action == self._side)
        self._t += 1
        return self._obs(), reward, False, self._t >= 10, {}


IMAGE_ID = "LotteryFastTest/Side-v0"
if IMAGE_ID not in gymnasium.registry:
    gymnasium.register(IMAGE_ID, entry_point=_SideEnv)


@pytest.mark.slow
def test_conv_torso_on_image_observations():
    trainer = PPOTrainer(IMAGE_ID, PPOConfig(total_steps=2048, num_envs=4, num_steps=64, lr=1e-3,
                                             num_evals=1, eval_episodes=4))
    assert trainer.spec.obs_shape == (1, 12, 12) and trainer.spec.is_image
    model = trainer.build_model(0)
    names = list(masked_modules(model))
    assert {"actor.encoder.0", "actor.encoder.2", "critic.encoder.0"} <= set(names)
    result, _ = trainer.train(model, 0)
    assert 0 <= result.metric <= 10 and math.isfinite(result.extra["v_loss"])
    assert result.metric >= 8  # random play earns 5 of 10; the side is easy to see


def test_config_json_round_trip():
    import dataclasses
    import json

    from lottery_fast.train.bc import BCConfig
    from lottery_fast.train.networks import NetworkConfig

    cfg = PPOConfig.continuous_control(network=NetworkConfig(hidden=(32, 16), conv=((8, 3, 1),)))
    assert configs.build(PPOConfig, json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg
    bc = BCConfig(expert=cfg, dagger_rounds=2, expert_path="e.pt")
    assert configs.build(BCConfig, json.loads(json.dumps(dataclasses.asdict(bc)))) == bc
    with pytest.raises(ValueError, match="learning_rate and lr are one option"):  # CleanRL's name is an alias
        configs.build(PPOConfig, {"lr": 1e-3, "learning_rate": 1e-3})
    with pytest.raises(ValueError, match="unknown option"):
        configs.build(PPOConfig, {"learning_rat": 1e-3})


def test_configs_validate_at_construction():
    from lottery_fast.train.bc import BCConfig
    from lottery_fast.train.networks import NetworkConfig

    with pytest.raises(ValueError, match="gamma"):
        PPOConfig(gamma=1.5)
    with pytest.raises(ValueError, match="activation"):
        NetworkConfig(activation="sigmoidish")
    with pytest.raises(ValueError, match="BCConfig.steps"):
        BCConfig(steps=0)
