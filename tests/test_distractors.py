import gymnasium as gym
import numpy as np
import pytest

from lottery_fast.envs.distractors import (OBS_DIM_NAMES, DistractorAdder, DistractorObservation, DistractorSpec,
                                           DistractorVectorObservation, distractor_names, obs_dim_names,
                                           parse_distractor)

CARTPOLE = OBS_DIM_NAMES["CartPole-v1"]


@pytest.mark.parametrize("env_id", sorted(OBS_DIM_NAMES))
def test_dim_name_table_matches_gymnasium(env_id):
    env = gym.make(env_id)
    assert env.observation_space.shape == (len(OBS_DIM_NAMES[env_id]),)
    assert len(set(OBS_DIM_NAMES[env_id])) == len(OBS_DIM_NAMES[env_id])


def test_obs_dim_names_lookup():
    assert obs_dim_names("CartPole-v1") == ("cart position", "cart velocity", "pole angle", "pole angular velocity")
    with pytest.raises(KeyError, match="Hopper"):
        obs_dim_names("Hopper-v4")


def test_parse_specs():
    assert parse_distractor("gaussian") == DistractorSpec("gaussian", (1.0,))
    assert parse_distractor("gaussian:0.5") == DistractorSpec("gaussian", (0.5,))
    assert parse_distractor("uniform") == DistractorSpec("uniform", (0.0, 1.0))
    assert parse_distractor("uniform:-2:2") == DistractorSpec("uniform", (-2.0, 2.0))
    assert parse_distractor("constant:3") == DistractorSpec("constant", (3.0,))
    assert parse_distractor("copy:2") == DistractorSpec("copy", (), 2)
    assert parse_distractor("copy:pole angle") == DistractorSpec("copy", (), "pole angle")


@pytest.mark.parametrize("spec, match", [
    ("laplace", "unknown kind"), ("constant", "one value"), ("uniform:1:0", "lo < hi"),
    ("gaussian:-1", "std >= 0"), ("gaussian:x", "numbers"), ("copy:", "needs a source"),
    ("constant:nan", "finite"),
])
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_distractor(spec)


def test_names():
    specs = ["gaussian", "gaussian", "uniform", "constant:1", "constant:1", "copy:pole angle", "copy:0"]
    assert distractor_names(specs, CARTPOLE) == [
        "gaussian noise 0", "gaussian noise 1", "uniform noise 0", "constant 1", "constant 1 (2)",
        "copy of pole angle", "copy of cart position"]
    with pytest.raises(ValueError, match="clash"):
        distractor_names(["constant:1"], ("constant 1", "x"))
    with pytest.raises(ValueError, match="out of range"):
        distractor_names(["copy:4"], CARTPOLE)


def test_adder_batched_values():
    adder = DistractorAdder(["gaussian:2", "uniform:-1:3", "constant:0.25", "copy:2", "copy:cart velocity"],
                            CARTPOLE, seed=0)
    assert adder.names == CARTPOLE + ("gaussian noise 0", "uniform noise 0", "constant 0.25",
                                      "copy of pole angle", "copy of cart velocity")
    obs = np.random.default_rng(1).normal(size=(20000, 4)).astype(np.float32)
    out = adder(obs)
    assert out.shape == (20000, 9) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, :4], obs)
    assert abs(out[:, 4].mean()) < 0.05 and abs(out[:, 4].std() - 2.0) < 0.05
    assert out[:, 5].min() >= -1 and out[:, 5].max() < 3 and abs(out[:, 5].mean() - 1.0) < 0.05
    assert np.all(out[:, 6] == 0.25)
    np.testing.assert_array_equal(out[:, 7], obs[:, 2])
    np.testing.assert_array_equal(out[:, 8], obs[:, 1])
    single = adder(obs[0])
    assert single.shape == (9,)
    np.testing.assert_array_equal(single[:4], obs[0])


def test_adder_seeded():
    a = DistractorAdder(["gaussian", "uniform"], CARTPOLE, seed=5)
    b = DistractorAdder(["gaussian", "uniform"], CARTPOLE, seed=5)
    x = np.zeros((3, 4), np.float32)
    np.testing.assert_array_equal(a(x), b(x))
    assert not np.array_equal(a(x), a(x))  # fresh noise per call
    a.seed(5)
    b.seed(5)
    np.testing.assert_array_equal(a(x), b(x))


def test_adder_rejects_wrong_shape():
    adder = DistractorAdder(["gaussian"], CARTPOLE, seed=0)
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        adder(np.zeros((2, 5)))


def test_adder_bounds():
    adder = DistractorAdder(["gaussian", "uniform:-1:2", "constant:4", "copy:1"], ["a", "b"], seed=0)
    lo, hi = adder.bounds(np.array([-1.0, -5.0]), np.array([1.0, 5.0]))
    np.testing.assert_array_equal(lo, [-1, -5, -np.inf, -1, 4, -5])
    np.testing.assert_array_equal(hi, [1, 5, np.inf, 2, 4, 5])


def test_gymnasium_wrapper():
    env = DistractorObservation(gym.make("CartPole-v1"), ["gaussian", "constant:1", "copy:pole angle"])
    assert env.observation_space.shape == (7,)
    assert env.names[:4] == CARTPOLE and env.names[4:] == ("gaussian noise 0", "constant 1", "copy of pole angle")

    def rollout():
        obs, _ = env.reset(seed=3)
        out = [obs]
        for t in range(20):
            obs, _, terminated, truncated, _ = env.step(t % 2)
            out.append(obs)
            assert not (terminated or truncated)
        return np.stack(out)

    a, b = rollout(), rollout()
    np.testing.assert_array_equal(a, b)
    assert all(env.observation_space.contains(o) for o in a[:5])
    np.testing.assert_array_equal(a[:, 6], a[:, 2])
    assert np.all(a[:, 5] == 1)


def test_vector_wrapper():
    vec = DistractorVectorObservation(gym.make_vec("Acrobot-v1", num_envs=3), ["uniform", "uniform", "copy:0"], seed=0)
    assert vec.single_observation_space.shape == (9,)
    assert vec.observation_space.shape == (3, 9)
    assert vec.names[:6] == OBS_DIM_NAMES["Acrobot-v1"]
    obs, _ = vec.reset(seed=1)
    obs2, *_ = vec.step(np.zeros(3, np.int64))
    for o in (obs, obs2):
        assert o.shape == (3, 9)
        np.testing.assert_array_equal(o[:, 8], o[:, 0])
        assert np.all((o[:, 6:8] >= 0) & (o[:, 6:8] < 1))
    assert not np.array_equal(obs[:, 6], obs2[:, 6])


def test_wrapper_needs_flat_box():
    from lottery_fast.envs.gridworld import PatrolGridEnv

    with pytest.raises(ValueError, match="1-D Box"):
        DistractorObservation(PatrolGridEnv(), ["gaussian"])
    with pytest.raises(ValueError, match="dim names"):
        DistractorObservation(gym.make("CartPole-v1"), ["gaussian"], base_names=["a", "b"])
