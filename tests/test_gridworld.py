import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from lottery_fast.envs.gridworld import (BASE_CHANNELS, DEFAULT_LAYOUT, PatrolGridConfig, PatrolGridEnv,
                                         PatrolGridVecEnv)
from lottery_fast.envs.registry import PATROL_GRID, PATROL_GRID_DISTRACTORS, register_all

# A small world: enemy patrols row 3 over columns 1..3; (2, 2) is a wall.
SMALL = dict(
    layout=("######",
            "#A...#",
            "#.#..#",
            "#...G#",
            "######"),
    enemy_waypoints=((3, 1), (3, 3)),
    random_enemy_phase=False,
)
STAY, UP, RIGHT, DOWN, LEFT = range(5)


def small_env(**kw):
    return PatrolGridEnv(**{**SMALL, **kw})


def test_default_observation_channels():
    env = PatrolGridEnv()
    obs, info = env.reset(seed=0)
    assert obs.shape == (4, 9, 9) and obs.dtype == np.float32
    assert env.channel_names == BASE_CHANNELS == ("walls", "agent", "goal", "enemy")
    assert env.observation_space.contains(obs)
    walls = np.array([[ch == "#" for ch in row] for row in DEFAULT_LAYOUT])
    np.testing.assert_array_equal(obs[0], walls)
    st = env.state
    for ch, key in ((1, "agent"), (2, "goal"), (3, "enemy")):
        assert obs[ch].sum() == 1 and obs[ch][st[key]] == 1
    assert DEFAULT_LAYOUT[st["agent"][0]][st["agent"][1]] == "A"
    assert DEFAULT_LAYOUT[st["goal"][0]][st["goal"][1]] == "G"


def test_moves_and_walls_block():
    env = small_env()
    env.reset(seed=0, options={"agent": (1, 1), "goal": (3, 4)})
    expected = [(UP, (1, 1)), (LEFT, (1, 1)), (STAY, (1, 1)), (RIGHT, (1, 2)), (DOWN, (1, 2)),  # (2, 2) wall
                (RIGHT, (1, 3)), (DOWN, (2, 3)), (UP, (1, 3)), (LEFT, (1, 2))]
    for action, cell in expected:
        obs, *_ = env.step(action)
        assert env.state["agent"] == cell, (action, cell)
        assert obs[1][cell] == 1 and obs[1].sum() == 1


def test_four_action_mode_has_no_stay():
    env = small_env(n_actions=4)
    assert env.action_space.n == 4
    env.reset(seed=0, options={"agent": (1, 2), "goal": (3, 4)})
    for action, cell in [(1, (1, 3)), (3, (1, 2)), (0, (1, 2)), (2, (1, 2))]:  # up, right, down, left
        env.step(action)
        assert env.state["agent"] == cell


def test_enemy_route_is_fixed_and_periodic():
    env = small_env()
    np.testing.assert_array_equal(env.enemy_route, [[3, 1], [3, 2], [3, 3], [3, 2]])  # ping-pong
    env.reset(seed=0, options={"agent": (1, 4), "goal": (3, 4)})
    seen = [env.state["enemy"]]
    for _ in range(8):
        obs, *_ = env.step(STAY)
        seen.append(env.state["enemy"])
        assert obs[3][seen[-1]] == 1 and obs[3].sum() == 1
    assert seen == [(3, 1), (3, 2), (3, 3), (3, 2)] * 2 + [(3, 1)]


def test_loop_route_and_random_phase_stay_on_route():
    layout = ("#######",
              "#A...G#",
              "#.....#",
              "#.....#",
              "#.....#",
              "#######")
    vec = PatrolGridVecEnv(16, layout=layout, enemy_waypoints=((2, 2), (2, 4), (4, 4), (4, 2), (2, 2)),
                           enemy_mode="loop", max_steps=20)
    route = vec.enemy_route
    assert len(route) == 8
    assert np.all(np.abs(np.diff(np.vstack([route, route[:1]]), axis=0)).sum(axis=1) == 1)  # a closed loop
    route_cells = np.zeros((6, 7), bool)
    route_cells[route[:, 0], route[:, 1]] = True
    obs, _ = vec.reset(seed=1)
    rng = np.random.default_rng(0)
    start_phases = set()
    for _ in range(100):
        assert not np.any(obs[:, 3][:, ~route_cells])  # the enemy never leaves its route
        obs, *_ = vec.step(rng.integers(0, 5, size=16))
    for s in range(20):
        env = PatrolGridEnv(layout=layout, enemy_waypoints=((2, 2), (2, 4), (4, 4), (4, 2), (2, 2)), enemy_mode="loop")
        env.reset(seed=s)
        start_phases.add(env.state["enemy_phase"])
    assert len(start_phases) > 3  # random_enemy_phase draws different starting points


def test_goal_reward_and_termination():
    env = small_env()
    env.reset(seed=0, options={"agent": (2, 4), "goal": (3, 4)})
    obs, reward, terminated, truncated, _ = env.step(DOWN)
    assert (reward, terminated, truncated) == (1.0, True, False)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(STAY)


def test_collision_same_cell_and_swap():
    env = small_env()
    # enemy at phase 0 is on (3, 1) and moves to (3, 2); the agent steps into (3, 2) too
    env.reset(seed=0, options={"agent": (3, 3), "goal": (1, 4), "enemy_phase": 0})
    _, reward, terminated, truncated, _ = env.step(LEFT)
    assert (reward, terminated, truncated) == (-1.0, True, False)
    # swap: the agent on (3, 2) moves left to (3, 1) while the enemy moves from (3, 1) to (3, 2)
    env.reset(seed=0, options={"agent": (3, 2), "goal": (1, 4), "enemy_phase": 0})
    _, reward, terminated, _, _ = env.step(LEFT)
    assert (reward, terminated) == (-1.0, True)
    # passing beside the enemy is fine
    env.reset(seed=0, options={"agent": (1, 1), "goal": (1, 4), "enemy_phase": 0})
    _, reward, terminated, _, _ = env.step(RIGHT)
    assert (reward, terminated) == (0.0, False)


def test_collision_wins_over_goal_when_enemy_reaches_goal_cell():
    layout = ("#####", "#A.G#", "#####")
    env = PatrolGridEnv(layout=layout, enemy_waypoints=((1, 2),), random_enemy_phase=False)  # a standing enemy
    env.reset(seed=0)
    _, reward, terminated, _, _ = env.step(RIGHT)
    assert (reward, terminated) == (-1.0, True)


def test_truncation_and_step_penalty():
    env = small_env(max_steps=3, step_penalty=0.1)
    env.reset(seed=0, options={"agent": (1, 1), "goal": (3, 4)})
    results = [env.step(STAY)[1:4] for _ in range(3)]
    assert [r[0] for r in results] == pytest.approx([-0.1, -0.1, -0.1])
    assert [r[1:] for r in results] == [(False, False), (False, False), (False, True)]


def test_distractor_channels():
    env = PatrolGridEnv(distractors=("copy:enemy", "constant:0.5", "uniform", "gaussian:2", "uniform"))
    assert env.channel_names == BASE_CHANNELS + ("copy of enemy", "constant 0.5", "uniform noise 0",
                                                 "gaussian noise 0", "uniform noise 1")
    obs, _ = env.reset(seed=3)
    assert obs.shape == (9, 9, 9)
    frames = [obs] + [env.step(STAY)[0] for _ in range(40)]
    for o in frames:
        assert env.observation_space.contains(o)
        np.testing.assert_array_equal(o[4], o[3])
        assert np.all(o[5] == 0.5)
        assert o[6].min() >= 0 and o[6].max() < 1
    noise = np.stack(frames)
    assert not np.array_equal(noise[0, 6], noise[1, 6])  # fresh noise every step
    assert not np.array_equal(noise[:, 6], noise[:, 8])  # independent noise channels
    assert abs(noise[:, 6].mean() - 0.5) < 0.02
    assert abs(noise[:, 7].mean()) < 0.1 and abs(noise[:, 7].std() - 2.0) < 0.1


def test_seeding_is_deterministic():
    def rollout(seed):
        env = PatrolGridEnv(distractors=("gaussian",))
        rng = np.random.default_rng(123)
        obs, _ = env.reset(seed=seed)
        out = [obs]
        for _ in range(200):
            obs, r, term, trunc, _ = env.step(int(rng.integers(5)))
            out.append(obs)
            if term or trunc:
                obs, _ = env.reset()
                out.append(obs)
        return np.stack(out)

    np.testing.assert_array_equal(rollout(7), rollout(7))
    assert not np.array_equal(rollout(7), rollout(8))
    env = PatrolGridEnv()
    starts = {tuple(env.reset(seed=0)[0][1:3].ravel())}
    starts |= {tuple(env.reset()[0][1:3].ravel()) for _ in range(10)}  # unseeded resets continue the stream
    assert len(starts) > 5


@pytest.mark.parametrize("distractors", [(), ("copy:agent", "uniform", "gaussian")])
def test_vector_env_equals_single_envs(distractors):
    n, seed = 6, 11
    kw = dict(max_steps=12, distractors=distractors)
    vec = PatrolGridVecEnv(n, **kw)
    # gymnasium's SyncVectorEnv over single envs: same autoreset semantics, env i seeded with seed + i
    sync = gym.vector.SyncVectorEnv([lambda: PatrolGridEnv(**kw) for _ in range(n)])
    assert vec.metadata["autoreset_mode"] == sync.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    ov, _ = vec.reset(seed=seed)
    os_, _ = sync.reset(seed=seed)
    np.testing.assert_array_equal(ov, os_)
    rng = np.random.default_rng(0)
    n_done = 0
    for _ in range(150):
        actions = rng.integers(0, 5, size=n)
        a = vec.step(actions)
        b = sync.step(actions)
        for x, y in zip(a[:4], b[:4]):
            np.testing.assert_array_equal(x, y)
        n_done += int(np.sum(a[2] | a[3]))
    assert n_done > 20  # the comparison went through many autoresets


def test_vector_next_step_autoreset():
    vec = PatrolGridVecEnv(2, **SMALL)
    vec.reset(seed=0, options={"agent": (2, 4), "goal": (3, 4)})
    obs, reward, term, trunc, _ = vec.step(np.array([DOWN, UP]))
    np.testing.assert_array_equal(term, [True, False])
    assert reward[0] == 1.0
    obs, reward, term, trunc, _ = vec.step(np.array([UP, UP]))  # env 0's action is ignored: it resets
    assert reward[0] == 0.0 and not term[0] and not trunc[0]
    single = PatrolGridEnv(**SMALL)
    single.reset(seed=0)
    np.testing.assert_array_equal(obs[0], single.reset()[0])  # the second episode of a seed-0 env


def test_registered_ids():
    register_all()
    register_all()  # idempotent
    env = gym.make(PATROL_GRID)
    assert env.observation_space.shape == (4, 9, 9)
    vec = gym.make_vec(PATROL_GRID_DISTRACTORS, num_envs=3)
    assert isinstance(vec.unwrapped, PatrolGridVecEnv)
    assert vec.unwrapped.channel_names[4:] == ("copy of enemy", "constant 1", "uniform noise 0")
    obs, _ = vec.reset(seed=0)
    assert obs.shape == (3, 7, 9, 9)


def test_gymnasium_env_checker_passes():
    check_env(PatrolGridEnv(distractors=("uniform", "copy:goal")), skip_render_check=True)


def test_render():
    env = small_env(render_mode="ansi")
    env.reset(seed=0, options={"agent": (1, 1), "goal": (3, 4)})
    assert env.render().splitlines() == ["######", "#A...#", "#.#..#", "#E..G#", "######"]
    img = PatrolGridEnv(render_mode="rgb_array")
    img.reset(seed=0)
    assert img.render().shape == (9 * 16, 9 * 16, 3)


@pytest.mark.parametrize("kw, match", [
    (dict(layout=("###", "#AX", "###")), "unknown characters"),
    (dict(layout=("####", "#A.#", "###")), "equally long"),
    (dict(enemy_waypoints=((4, 1), (5, 2))), "not on one row or column"),
    (dict(enemy_waypoints=((3, 1), (3, 3))), "wall"),
    (dict(enemy_waypoints=((4, 1), (4, 3)), enemy_mode="loop"), "end next to its start"),
    (dict(enemy_waypoints=((1, 1), (1, 3))), "lie on the enemy's route"),
    (dict(enemy_mode="zigzag"), "enemy_mode"),
    (dict(n_actions=6), "n_actions"),
    (dict(distractors=("copy:lava",)), "no dim named"),
])
def test_bad_config_is_rejected(kw, match):
    with pytest.raises(ValueError, match=match):
        PatrolGridEnv(**kw)


def test_bad_inputs_are_rejected():
    with pytest.raises(TypeError, match="no field"):
        PatrolGridEnv(heigth=3)
    vec = PatrolGridVecEnv(2)
    with pytest.raises(RuntimeError, match="before reset"):
        vec.step(np.zeros(2, np.int64))
    vec.reset(seed=0)
    with pytest.raises(ValueError, match="2 integer actions"):
        vec.step(np.zeros(3, np.int64))
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        vec.step(np.array([0, 5]))
    with pytest.raises(ValueError, match="wall"):
        vec.reset(options={"agent": (0, 0)})
    with pytest.raises(ValueError, match="seed"):
        vec.reset(seed=-1)
    assert isinstance(PatrolGridConfig.from_kwargs(max_steps=5), PatrolGridConfig)
