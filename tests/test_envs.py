"""Batched env makers: next-step autoreset pinned for both backends, episode bookkeeping, errors."""
import gymnasium
import numpy as np
import pytest

from lottery_fast.envs import known_env_ids, make_vec_env, resolve_backend

GYM_ONLY_ID = "LotteryFastTest/CartPoleGym-v0"
if GYM_ONLY_ID not in gymnasium.registry:
    gymnasium.register(GYM_ONLY_ID, entry_point="gymnasium.envs.classic_control.cartpole:CartPoleEnv",
                       max_episode_steps=30)

BACKENDS = ["envpool", "gymnasium"]


def _balance(obs):
    """A hand-written CartPole controller that keeps the pole up for hundreds of steps."""
    return (obs[:, 2] + obs[:, 3] > 0).astype(np.int64)


def _run_until_first_done(env, action=0):
    """Step with a constant action until env 0 ends an episode; returns the transitions."""
    trs = []
    for _ in range(600):
        trs.append(env.step(np.full(env.num_envs, action)))
        if trs[-1].terminated[0] or trs[-1].truncated[0]:
            return trs
    raise AssertionError("CartPole did not end an episode under a constant action")


@pytest.mark.parametrize("backend", BACKENDS)
def test_next_step_autoreset_is_pinned(backend):
    """The step after an episode ends returns a reset observation, reward 0, no flags, ignores the action."""
    envs = [make_vec_env("CartPole-v1", 2, seed=7, backend=backend) for _ in range(2)]
    assert all(e.backend == backend for e in envs)
    first = [e.reset() for e in envs]
    np.testing.assert_array_equal(first[0], first[1])
    trs = [_run_until_first_done(e) for e in envs]
    assert len(trs[0]) == len(trs[1])
    final_obs = trs[0][-1].obs[0]
    assert trs[0][-1].terminated[0] and abs(final_obs[2]) > 0.2  # a real terminal state (pole fell)
    assert not trs[0][-1].autoreset.any()

    # send different actions to the finished env: the env must ignore them
    a = envs[0].step(np.array([0, 0]))
    b = envs[1].step(np.array([1, 0]))
    for tr in (a, b):
        assert tr.autoreset[0] and not tr.autoreset[1]
        assert tr.reward[0] == 0.0
        assert not tr.terminated[0] and not tr.truncated[0]
        assert np.all(np.abs(tr.obs[0]) <= 0.05)  # CartPole's reset distribution
    np.testing.assert_array_equal(a.obs, b.obs)
    # and the new episode then runs normally
    c = envs[0].step(np.array([1, 1]))
    assert not c.autoreset[0] and c.reward[0] == 1.0
    for e in envs:
        e.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_episode_returns_and_lengths_skip_autoreset_steps(backend):
    env = make_vec_env("CartPole-v1", 3, seed=1, backend=backend)
    env.reset()
    rng = np.random.default_rng(0)
    rewards = [[] for _ in range(3)]
    expected = []
    for _ in range(300):
        tr = env.step(rng.integers(0, 2, size=3))
        for i in range(3):
            if not tr.autoreset[i]:
                rewards[i].append(tr.reward[i])
            if tr.terminated[i] or tr.truncated[i]:
                expected.append((sum(rewards[i]), len(rewards[i])))
                rewards[i] = []
    returns, lengths = env.episodes()
    assert len(returns) == len(expected) > 10
    assert sorted(zip(returns.tolist(), lengths.tolist())) == sorted(expected)
    np.testing.assert_array_equal(returns, lengths)  # CartPole pays 1 per step
    assert env.episodes()[0].size == 0  # handed out once
    env.close()


def test_truncation_and_env_kwargs():
    env = make_vec_env("CartPole-v1", 2, seed=0, env_kwargs={"max_episode_steps": 8})
    assert env.spec.max_episode_steps == 8
    obs = env.reset()
    trs = []
    for _ in range(9):
        trs.append(env.step(_balance(obs)))
        obs = trs[-1].obs
    assert trs[7].truncated.all() and not trs[7].terminated.any()
    assert trs[8].autoreset.all()
    returns, lengths = env.episodes()
    np.testing.assert_array_equal(lengths, [8, 8])


def test_gymnasium_fallback_for_a_gymnasium_only_id():
    assert resolve_backend(GYM_ONLY_ID) == "gymnasium"
    with make_vec_env(GYM_ONLY_ID, 2, seed=3) as env:
        assert env.backend == "gymnasium"
        assert env.spec.obs_shape == (4,) and env.spec.discrete and env.spec.n_actions == 2
        assert env.spec.max_episode_steps == 30
        obs = env.reset()
        for t in range(31):
            tr = env.step(_balance(obs))
            obs = tr.obs
        assert tr.autoreset.all()  # truncated at 30 by the registered time limit, reset at step 31
        assert env.episodes()[1].tolist() == [30, 30]


def test_unknown_id_raises_with_close_matches():
    with pytest.raises(ValueError, match="CartPole-v1"):
        make_vec_env("CartPol-v1", 2, seed=0)
    with pytest.raises(ValueError, match="EnvPool has no environment"):
        make_vec_env(GYM_ONLY_ID, 1, seed=0, backend="envpool")
    with pytest.raises(ValueError, match="backend"):
        make_vec_env("CartPole-v1", 1, seed=0, backend="jax")
    with pytest.raises(ValueError, match="num_envs"):
        make_vec_env("CartPole-v1", 0, seed=0)
    with pytest.raises(ValueError, match="seed"):
        make_vec_env("CartPole-v1", 1, seed=-1)


def test_bad_action_shape_and_continuous_clipping():
    with make_vec_env("CartPole-v1", 2, seed=0) as env:
        env.reset()
        with pytest.raises(ValueError, match="shape"):
            env.step(np.zeros(3, np.int64))
    outs = []
    for action in (2.0, 50.0):  # Pendulum's torque bound is 2: beyond it the env must see 2
        with make_vec_env("Pendulum-v1", 2, seed=4) as env:
            assert not env.spec.discrete and env.spec.action_shape == (1,)
            env.reset()
            outs.append(env.step(np.full((2, 1), action, np.float32)).obs)
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.skipif("Hopper-v4" not in known_env_ids("envpool"), reason="EnvPool without MuJoCo")
def test_float64_observations_arrive_as_float32():
    with make_vec_env("Hopper-v4", 2, seed=0) as env:
        assert env.spec.obs_dtype == np.float32
        obs = env.reset()
        assert obs.dtype == np.float32 and obs.shape == (2, 11)
        assert env.step(np.zeros((2, 3))).obs.dtype == np.float32


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Acrobot-v1", "Pendulum-v1"])
def test_envpool_raw_path_equals_envpool_gymnasium_api(env_id):
    """VecEnv talks to EnvPool's arrays directly; every step must equal EnvPool's own gymnasium API."""
    envpool = pytest.importorskip("envpool")
    import warnings

    import numpy as np

    from lottery_fast.envs.make import make_vec_env

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = make_vec_env(env_id, 6, 123)
        theirs = envpool.make(env_id, env_type="gymnasium", num_envs=6, seed=123)
    assert ours._env._raw is not None  # the fast path is the one under test
    assert np.array_equal(ours.reset(), theirs.reset()[0])
    rng = np.random.default_rng(0)
    for _ in range(600):  # past CartPole's and Pendulum's episode ends, through autoresets
        if ours.spec.discrete:
            a = rng.integers(0, ours.spec.n_actions, 6)
        else:
            a = rng.uniform(-2, 2, (6, *ours.spec.action_shape)).astype(np.float32)
        tr = ours.step(a)
        obs, reward, terminated, truncated, _ = theirs.step(a)
        assert np.array_equal(tr.obs, obs) and np.array_equal(tr.reward, reward)
        assert np.array_equal(tr.terminated, terminated) and np.array_equal(tr.truncated, truncated)
    ours.close()
