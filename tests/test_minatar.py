import importlib.util

import gymnasium as gym
import numpy as np
import pytest

# the optional minatar package is not a dependency; find_spec avoids importing it here (its import
# logs through the root logger, which lottery_fast.envs.minatar guards against)
if importlib.util.find_spec("minatar") is None:
    pytest.skip("minatar is not installed (pip install --no-deps minatar)", allow_module_level=True)

from lottery_fast.envs.minatar import MinAtarEnv, MinAtarVecEnv  # noqa: E402
from lottery_fast.envs.registry import MINATAR_GAMES  # noqa: E402

CHANNELS = {
    "breakout": ("paddle", "ball", "trail", "brick"),
    "freeway": ("chicken", "car", "speed1", "speed2", "speed3", "speed4", "speed5"),
}


@pytest.mark.parametrize("name, game", sorted(MINATAR_GAMES.items()))
def test_registered_games_step(name, game):
    vec = gym.make_vec(f"lottery_fast/MinAtar-{name}-v0", num_envs=2)
    assert isinstance(vec, MinAtarVecEnv)
    obs, _ = vec.reset(seed=0)
    c = len(vec.channel_names)
    assert obs.shape == (2, c, 10, 10) and obs.dtype == np.float32
    assert set(np.unique(obs)) <= {0.0, 1.0}
    assert vec.single_observation_space.shape == (c, 10, 10)
    if game in CHANNELS:
        assert vec.channel_names == CHANNELS[game]
    for _ in range(30):
        obs, reward, term, trunc, _ = vec.step(vec.action_space.sample())
        assert obs.shape == (2, c, 10, 10) and reward.shape == (2,)


def test_observation_is_the_game_state_transposed():
    env = MinAtarEnv("breakout")
    obs, _ = env.reset(seed=1)
    state = env._game.state()  # [10, 10, C] bool
    np.testing.assert_array_equal(obs, state.transpose(2, 0, 1).astype(np.float32))
    assert obs[0].sum() == 1  # one paddle cell
    assert env.action_space.n == 3  # minimal action set: no-op, left, right


def test_seeded_rollouts_repeat():
    def rollout(seed):
        env = MinAtarEnv("space_invaders", max_steps=40)
        obs, _ = env.reset(seed=seed)
        rng = np.random.default_rng(0)
        frames = [obs]
        for _ in range(40):
            obs, r, term, trunc, _ = env.step(int(rng.integers(env.action_space.n)))
            frames.append(obs)
            if term or trunc:
                break
        return np.stack(frames), trunc

    (a, trunc), (b, _), (c, _) = rollout(3), rollout(3), rollout(4)
    np.testing.assert_array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)
    assert trunc or len(a) < 41


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown MinAtar game"):
        MinAtarEnv("pong")
    with pytest.raises(ValueError, match="sticky"):
        MinAtarEnv("breakout", sticky_action_prob=2.0)
    env = MinAtarEnv("breakout")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="not in"):
        env.step(5)
