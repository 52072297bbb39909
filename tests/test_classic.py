"""The numpy classic-control backend against gymnasium's own CartPole-v1 and Acrobot-v1."""
from __future__ import annotations

import numpy as np
import pytest

from lottery_fast.envs.make import EnvConfig, make_vec_env

gymnasium = pytest.importorskip("gymnasium")


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Acrobot-v1"])
def test_dynamics_equal_gymnasium_step_for_step(env_id):
    ours = make_vec_env(env_id, 5, 11, backend="numpy")
    obs = ours.reset()
    ref = [gymnasium.make(env_id).unwrapped for _ in range(5)]
    for r in ref:
        r.reset(seed=0)
    rng = np.random.default_rng(1)
    checked_ends = 0
    for _ in range(400):
        state = ours._env.state.copy()
        a = rng.integers(0, ours.spec.n_actions, 5)
        tr = ours.step(a)
        for i, r in enumerate(ref):
            if tr.autoreset[i]:
                continue
            r.state = state[i].copy()
            if hasattr(r, "steps_beyond_terminated"):
                r.steps_beyond_terminated = None  # CartPole pays 1 on the step that ends an episode
            o, rew, term, _, _ = r.step(int(a[i]))
            np.testing.assert_allclose(tr.obs[i] if not term else o, o, rtol=1e-5, atol=1e-5)
            assert tr.reward[i] == rew and tr.terminated[i] == term
            checked_ends += bool(term)
    if env_id == "CartPole-v1":
        assert checked_ends > 0  # episodes ended and were compared too (random play never swings Acrobot up)


def test_time_limit_and_next_step_autoreset():
    env = make_vec_env("Acrobot-v1", 3, 0, backend="numpy")
    env.reset()
    tr = None
    for t in range(500):
        tr = env.step(np.ones(3, np.int64))  # zero torque: the acrobot never swings up
        assert not tr.terminated.any() and not tr.autoreset.any()
        assert tr.truncated.all() == (t == 499)
    after = env.step(np.ones(3, np.int64))
    assert after.autoreset.all() and (after.reward == 0).all() and not after.truncated.any()
    returns, lengths = env.episodes()
    assert list(returns) == [-500.0] * 3 and list(lengths) == [500] * 3


def test_each_env_is_a_function_of_its_own_seed():
    cfg = EnvConfig("CartPole-v1", backend="numpy")
    joint = cfg.make_population(4, [7, 100, 31])
    alone = cfg.make(4, 100)
    assert np.array_equal(joint.reset()[4:8], alone.reset())
    rng = np.random.default_rng(0)
    for _ in range(300):
        a = rng.integers(0, 2, 12)
        tj, ta = joint.step(a), alone.step(a[4:8])
        assert np.array_equal(tj.obs[4:8], ta.obs) and np.array_equal(tj.reward[4:8], ta.reward)
        assert np.array_equal(tj.terminated[4:8], ta.terminated)


def test_numpy_backend_refuses_what_it_cannot_run():
    with pytest.raises(ValueError, match="numpy env backend runs"):
        make_vec_env("Pendulum-v1", 2, 0, backend="numpy")
    with pytest.raises(ValueError, match="no env kwargs"):
        make_vec_env("CartPole-v1", 2, 0, backend="numpy", env_kwargs={"max_episode_steps": 10})
    env = make_vec_env("CartPole-v1", 2, 0, backend="numpy")
    env.reset()
    with pytest.raises(ValueError, match="actions must be in"):
        env.step(np.array([0, 5]))
