import gymnasium as gym
import numpy as np
import pytest
import torch

from lottery_fast.nn import MaskedLinear, get_masks, masked_modules, set_masks
from lottery_fast.train.dqn import DQNConfig, DQNTrainer, QNetwork, ReplayBuffer
from lottery_fast.train.protocol import Trainer, TrainResult

COUNTER = "lottery_fast_test/Counter-v0"


class CounterEnv(gym.Env):
    """obs = [t]; the episode terminates after ``length`` steps; reward 1 per step."""

    def __init__(self, length: int = 3):
        self.length = length
        self.observation_space = gym.spaces.Box(0, 100, shape=(1,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([self.t], np.float32), 1.0, self.t >= self.length, False, {}


if COUNTER not in gym.registry:
    gym.register(COUNTER, entry_point=CounterEnv)


def small_config(**kw):
    base = dict(num_envs=2, total_steps=1_000, learning_starts=200, hidden=(16, 16),
                batch_size=32, eval_episodes=2, eval_every=0, target_update_period=50)
    return DQNConfig(**{**base, **kw})


def make(env_id="CartPole-v1", **kw):
    return DQNTrainer(env_id, small_config(**kw))


def test_protocol_and_module_names():
    trainer = make()
    assert isinstance(trainer, Trainer)
    assert trainer.name == "dqn" and trainer.default_prune_exclude == ()
    model = trainer.build_model(0)
    assert list(masked_modules(model)) == ["layers.fc0", "layers.fc1", "layers.head"]
    assert model(torch.zeros(5, 4)).shape == (5, 2)
    a, b = trainer.build_model(3), trainer.build_model(3)
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(x, y)
    assert not torch.equal(a.layers.fc0.weight, trainer.build_model(4).layers.fc0.weight)
    assert make(prune_exclude=("layers.head",)).default_prune_exclude == ("layers.head",)


@pytest.mark.slow
def test_learns_cartpole():
    cfg = DQNConfig(num_envs=4, total_steps=10_000, learning_starts=1_000,
                    eval_every=2_500, eval_episodes=5)
    trainer = DQNTrainer("CartPole-v1", cfg)
    model = trainer.build_model(0)
    before = trainer.evaluate(model, seed=0)
    seen = []
    result, rewind = trainer.train(model, seed=0, on_progress=seen.append)
    assert isinstance(result, TrainResult) and rewind is None
    assert result.steps == 10_000 and result.extra["updates"] == 1 + 9_000 / 4  # from step 1000 on, inclusive
    assert [p["step"] for p in seen] == [2_500, 5_000, 7_500, 10_000]
    assert result.best_metric == max(p["metric"] for p in seen)
    # untrained greedy nets fall within ~10 steps; a loose bar of 100 shows learning
    assert before < 50 and result.best_metric >= 100, (before, result)


@pytest.mark.slow
def test_masked_weights_stay_zero_and_masks_unchanged():
    trainer = make(total_steps=1_200, lr=1e-2)
    model = trainer.build_model(1)
    gen = torch.Generator().manual_seed(0)
    masks = {name: torch.rand(m.weight.shape, generator=gen) < 0.3 for name, m in masked_modules(model).items()}
    set_masks(model, masks)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result, _ = trainer.train(model, seed=1)
    assert result.extra["updates"] > 100
    for name, layer in masked_modules(model).items():
        assert torch.equal(layer.mask, masks[name])
        assert torch.all(layer.weight[~masks[name]] == 0), name
        assert not torch.equal(layer.weight, before[f"{name}.weight"])  # the kept weights did train
    assert all(torch.equal(get_masks(model)[k], masks[k]) for k in masks)


def test_rejects_nan_weights():
    trainer = make()
    model = trainer.build_model(0)
    with torch.no_grad():
        model.layers.fc1.bias[3] = float("nan")
    with pytest.raises(ValueError, match="layers.fc1.bias"):
        trainer.train(model, seed=0)


@pytest.mark.slow
def test_deterministic_in_seed():
    trainer = make(total_steps=600, eval_every=300)

    def run(seed):
        model = trainer.build_model(0)
        result, _ = trainer.train(model, seed=seed)
        return result, model.state_dict()

    (r1, s1), (r2, s2), (r3, s3) = run(5), run(5), run(6)
    assert r1.metric == r2.metric and r1.best_metric == r2.best_metric
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)
    model = trainer.build_model(0)
    assert trainer.evaluate(model, 2) == trainer.evaluate(model, 2)


@pytest.mark.slow
def test_rewind_state():
    trainer = make(total_steps=600)
    model = trainer.build_model(0)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    _, at0 = trainer.train(model, seed=0, rewind_step=0)
    assert all(torch.equal(at0[k], init[k]) for k in init)
    model = trainer.build_model(0)
    _, at10 = trainer.train(model, seed=0, rewind_step=10)
    assert not torch.equal(at10["layers.fc0.weight"], init["layers.fc0.weight"])
    assert not torch.equal(at10["layers.fc0.weight"], model.layers.fc0.weight)
    last = trainer.config.num_updates()
    _, at_end = trainer.train(trainer.build_model(0), seed=0, rewind_step=last)
    assert torch.equal(at_end["layers.fc0.weight"], model.layers.fc0.weight)  # same seed: same final weights
    with pytest.raises(ValueError, match="rewind_step"):
        trainer.train(trainer.build_model(0), seed=0, rewind_step=last + 1)


@pytest.mark.parametrize("kw", [dict(), dict(num_envs=3, total_steps=1_000, learning_starts=7),
                                dict(train_frequency=3, gradient_steps=2, learning_starts=0),
                                dict(learning_starts=5_000)])
@pytest.mark.slow
def test_num_updates_matches_training(kw):
    cfg = small_config(**{"total_steps": 300, "learning_starts": 100, **kw})
    t = DQNTrainer("CartPole-v1", cfg)
    result, _ = t.train(t.build_model(0), seed=0)
    assert result.extra["updates"] == cfg.num_updates()


@pytest.mark.parametrize("max_episode_steps", [None, 2])
def test_autoreset_step_is_not_stored(monkeypatch, max_episode_steps):
    stored = []
    original = ReplayBuffer.add

    def spy(self, obs, actions, rewards, next_obs, terminated):
        stored.extend(zip(obs[:, 0].tolist(), next_obs[:, 0].tolist(), terminated.tolist()))
        original(self, obs, actions, rewards, next_obs, terminated)

    monkeypatch.setattr(ReplayBuffer, "add", spy)
    kwargs = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
    trainer = make(COUNTER, env_kwargs=kwargs, num_envs=3, total_steps=60,
                   learning_starts=30)
    trainer.train(trainer.build_model(0), seed=0)
    if max_episode_steps is None:  # episodes 0 -> 1 -> 2 -> 3 (terminal), then the reset step
        assert set(stored) == {(0, 1, False), (1, 2, False), (2, 3, True)}
        assert len(stored) == 3 * (20 - 20 // 4)  # 20 vector steps, every 4th resets
    else:  # truncated at t = 2: bootstraps (terminated False)
        assert set(stored) == {(0, 1, False), (1, 2, False)}
        assert len(stored) == 3 * (20 - 20 // 3)  # every 3rd resets


def test_replay_buffer_ring():
    buf = ReplayBuffer(5, (2,), torch.Generator().manual_seed(0))
    for start in range(0, 12, 3):
        n = np.arange(start, start + 3)
        buf.add(np.stack([n, n], 1), n % 2, n.astype(np.float32), np.stack([n + 1, n + 1], 1), n % 3 == 0)
    assert buf.size == 5
    # 12 transitions into 5 slots: the survivors are 7..11, slot i holds transition with i == t mod 5
    assert sorted(buf.rewards.tolist()) == [7, 8, 9, 10, 11]
    assert buf.rewards[11 % 5] == 11 and buf.obs[7 % 5].tolist() == [7, 7]
    obs, actions, rewards, next_obs, terminated = buf.sample(64)
    assert torch.equal(obs[:, 0], rewards) and torch.equal(next_obs[:, 0], rewards + 1)
    assert torch.equal(actions, rewards.long() % 2)
    assert torch.equal(terminated, (rewards.long() % 3 == 0).float())


def test_double_dqn_target():
    trainer = make(gamma=0.5, huber_delta=100.0)
    online = QNetwork((4,), 2, (8,))
    target = QNetwork((4,), 2, (8,))
    obs = torch.randn(6, 4)
    nxt = torch.randn(6, 4)
    batch = (obs, torch.tensor([0, 1, 0, 1, 0, 1]), torch.ones(6), nxt, torch.tensor([0, 0, 0, 1, 0, 0.0]))
    with torch.no_grad():
        q = online(obs).gather(1, batch[1][:, None]).squeeze(1)
        pick = online(nxt).argmax(1, keepdim=True)
        y_double = 1 + 0.5 * (1 - batch[4]) * target(nxt).gather(1, pick).squeeze(1)
        y_plain = 1 + 0.5 * (1 - batch[4]) * target(nxt).max(1).values
    loss = trainer._td_loss(online, target, batch)  # huber with large delta = 0.5 * MSE
    assert loss.item() == pytest.approx(0.5 * torch.mean((q - y_double) ** 2).item(), rel=1e-5)
    plain = make(gamma=0.5, huber_delta=100.0, double_dqn=False)
    assert plain._td_loss(online, target, batch).item() == pytest.approx(
        0.5 * torch.mean((q - y_plain) ** 2).item(), rel=1e-5)


def test_runs_on_patrol_grid_images():
    trainer = make("lottery_fast/PatrolGrid-v0", total_steps=400, learning_starts=100)
    model = trainer.build_model(0)
    assert trainer.obs_shape == (4, 9, 9) and trainer.n_actions == 5
    assert model.layers.fc0.in_features == 4 * 9 * 9
    result, _ = trainer.train(model, seed=0)
    assert -1.0 <= result.metric <= 1.0


@pytest.mark.parametrize("kw, match", [
    (dict(num_envs=0), "num_envs"), (dict(gamma=1.5), "gamma"), (dict(exploration_fraction=0), "exploration"),
    (dict(hidden=(0,)), "hidden"), (dict(lr=-1), "lr"),
])
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        small_config(**kw)


def test_bad_env():
    with pytest.raises(ValueError, match="NoSuchEnv"):
        make("NoSuchEnv-v0")
    with pytest.raises(ValueError, match="discrete"):
        make("Pendulum-v1")


def test_epsilon_schedule():
    cfg = small_config(total_steps=1000, exploration_fraction=0.5, eps_start=1.0, eps_end=0.1)
    assert [cfg.epsilon(s) for s in (0, 250, 500, 900)] == pytest.approx([1.0, 0.55, 0.1, 0.1])


def test_distractors_through_make_vec_env():
    t = make(distractors=("gaussian", "constant:1"), total_steps=300, learning_starts=100)
    assert t.obs_shape == (6,) and t.spec.obs_names[-1] == "constant 1"
    model = t.build_model(0)
    assert model.layers.fc0.in_features == 6
    result, _ = t.train(model, seed=0)
    assert result.steps == 300 and np.isfinite(result.metric)
    picked = make(distractors=("gaussian", "constant:1"), obs_select=(2, 3, 5))
    assert picked.obs_shape == (3,) and picked.spec.obs_names == ("pole angle", "pole angular velocity", "constant 1")
    with pytest.raises(ValueError, match="distractor"):
        small_config(distractors=("nonsense",))


def test_masked_linear_is_what_build_model_uses():
    model = make().build_model(0)
    assert all(isinstance(m, MaskedLinear) for m in masked_modules(model).values())
