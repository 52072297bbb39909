"""A visual navigation gridworld with an enemy on a fixed patrol (the task of the paper's Figure 1).

The agent must reach a goal cell without meeting an enemy that walks a fixed route (back and forth
along a corridor, or round a loop). The observation is an image ``[C, H, W]`` of float32 one-hot
channels ``walls, agent, goal, enemy``, optionally followed by distractor channels (a copy of a
channel, a constant, per-pixel noise; spec strings as in :mod:`lottery_fast.envs.distractors`).
Because the enemy can only ever stand on its route, a minimal representation needs the enemy
channel only at those cells: that is what IMP's input mask should find.

Rules of one step (all envs at once, batched numpy, no Python loop over envs):

1. the agent moves one cell (actions: [stay,] up, right, down, left); walls and the border block;
2. the enemy advances one cell along its route;
3. meeting the enemy (same cell, or swapping cells with it) ends the episode with
   ``collision_reward`` (-1); else reaching the goal ends it with ``goal_reward`` (+1); else the
   reward is ``-step_penalty``;
4. after ``max_steps`` steps the episode is truncated.

At reset the agent starts on a random 'A' cell of the layout, the goal is a random 'G' cell and
the enemy starts at a random point of its route (or at the route's start).

Randomness is counter based: every draw is a hash of (env key, episode index, step, draw index),
the key coming from ``numpy.random.SeedSequence(seed)``. So resets inside a batched step need no
loop and no shared generator, and env i of :class:`PatrolGridVecEnv` seeded with s is exactly a
:class:`PatrolGridEnv` seeded with s + i (gymnasium's own convention for vector seeds).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import gymnasium as gym
import numpy as np

from .distractors import DistractorSpec, distractor_names, parse_distractor, resolve_source

DEFAULT_LAYOUT: Tuple[str, ...] = (
    "#########",
    "#AAAAAAA#",
    "#AAAAAAA#",
    "#.##.##.#",
    "#.......#",
    "#.##.##.#",
    "#GGGGGGG#",
    "#GGGGGGG#",
    "#########",
)
BASE_CHANNELS: Tuple[str, ...] = ("walls", "agent", "goal", "enemy")
_MOVES_4 = np.array([[-1, 0], [0, 1], [1, 0], [0, -1]], dtype=np.int64)  # up, right, down, left
_MOVES_5 = np.concatenate([np.zeros((1, 2), dtype=np.int64), _MOVES_4])  # stay first
_LAYOUT_CHARS = set("#.AG")


@dataclass
class PatrolGridConfig:
    """The world: layout rows ('#' wall, '.' floor, 'A' agent start, 'G' goal) and the enemy's patrol.

    ``enemy_waypoints`` are (row, col) cells joined by straight horizontal or vertical segments;
    ``enemy_mode`` "pingpong" walks the path back and forth, "loop" walks it round (its last
    cell must neighbour its first). One waypoint makes a standing enemy.
    """

    layout: Sequence[str] = DEFAULT_LAYOUT
    enemy_waypoints: Sequence[Sequence[int]] = ((4, 1), (4, 7))
    enemy_mode: str = "pingpong"
    random_enemy_phase: bool = True
    n_actions: int = 5  # 5: stay, up, right, down, left; 4: without stay
    max_steps: int = 50
    goal_reward: float = 1.0
    collision_reward: float = -1.0
    step_penalty: float = 0.0
    distractors: Sequence[str] = ()  # extra channels, e.g. ("copy:enemy", "constant:1", "uniform")

    def __post_init__(self) -> None:
        _World(self)  # the checks live where the config is compiled; a bad world fails where it is made

    @classmethod
    def from_kwargs(cls, config: Optional["PatrolGridConfig"] = None, **overrides: Any) -> "PatrolGridConfig":
        """``config`` (or the defaults) with fields replaced by ``overrides`` (as gymnasium.make passes them)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"PatrolGridConfig has no field(s) {unknown}; fields are {sorted(names)}")
        base = {f.name: getattr(config, f.name) for f in fields(cls)} if config is not None else {}
        base.update(overrides)
        return cls(**base)


class _World:
    """The validated, compiled form of a config: arrays the batched step indexes into."""

    def __init__(self, cfg: PatrolGridConfig) -> None:
        rows = [str(r) for r in cfg.layout]
        if not rows or not rows[0] or any(len(r) != len(rows[0]) for r in rows):
            raise ValueError("layout must be a non-empty list of equally long rows, "
                             f"got row lengths {[len(r) for r in rows]}")
        bad = set("".join(rows)) - _LAYOUT_CHARS
        if bad:
            raise ValueError(f"layout has unknown characters {sorted(bad)}; use '#', '.', 'A', 'G'")
        grid = np.array([list(r) for r in rows])
        self.height, self.width = grid.shape
        self.walls = grid == "#"
        self.starts = np.argwhere(grid == "A")
        self.goals = np.argwhere(grid == "G")
        if not len(self.starts) or not len(self.goals):
            raise ValueError("layout needs at least one agent start cell 'A' and one goal cell 'G'")
        if cfg.n_actions not in (4, 5):
            raise ValueError(f"n_actions must be 4 or 5, got {cfg.n_actions}")
        self.moves = _MOVES_5 if cfg.n_actions == 5 else _MOVES_4
        if cfg.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {cfg.max_steps}")
        if cfg.step_penalty < 0:
            raise ValueError(f"step_penalty must be >= 0 (it is subtracted), got {cfg.step_penalty}")
        self.route = self._patrol(cfg)
        on_route = {tuple(c) for c in self.route.tolist()}
        for what, cells in (("agent start", self.starts), ("goal", self.goals)):
            hit = sorted(on_route & {tuple(c) for c in cells.tolist()})
            if hit:
                raise ValueError(f"{what} cells {hit} lie on the enemy's route")
        self.specs: Tuple[DistractorSpec, ...] = tuple(parse_distractor(s) for s in cfg.distractors)
        self.channel_names: Tuple[str, ...] = BASE_CHANNELS + tuple(distractor_names(self.specs, BASE_CHANNELS))
        self.copy_src = [resolve_source(s, BASE_CHANNELS) if s.kind == "copy" else -1 for s in self.specs]
        self.n_noise = sum(s.kind in ("gaussian", "uniform") for s in self.specs)

    def _patrol(self, cfg: PatrolGridConfig) -> np.ndarray:
        """The enemy's cell at each phase of its period, shape [period, 2]."""
        pts = [tuple(int(v) for v in p) for p in cfg.enemy_waypoints]
        if not pts or any(len(p) != 2 for p in pts):
            raise ValueError(f"enemy_waypoints must be a non-empty list of (row, col), got {cfg.enemy_waypoints}")
        path = [pts[0]]
        for (r0, c0), (r1, c1) in zip(pts, pts[1:]):
            if r0 != r1 and c0 != c1:
                raise ValueError(f"enemy waypoints {(r0, c0)} -> {(r1, c1)} are not on one row or column")
            n = abs(r1 - r0) + abs(c1 - c0)
            dr, dc = (r1 > r0) - (r1 < r0), (c1 > c0) - (c1 < c0)
            path += [(r0 + dr * k, c0 + dc * k) for k in range(1, n + 1)]
        for r, c in path:
            if not (0 <= r < self.height and 0 <= c < self.width) or self.walls[r, c]:
                raise ValueError(f"enemy route cell {(r, c)} is outside the grid or a wall")
        if cfg.enemy_mode == "loop":
            if len(path) > 1 and path[-1] == path[0]:
                path = path[:-1]
            if len(path) > 1 and abs(path[-1][0] - path[0][0]) + abs(path[-1][1] - path[0][1]) != 1:
                raise ValueError(f"loop route must end next to its start: {path[-1]} vs {path[0]}")
            cycle = path
        elif cfg.enemy_mode == "pingpong":
            cycle = path + path[-2:0:-1]
        else:
            raise ValueError(f"enemy_mode must be 'pingpong' or 'loop', got {cfg.enemy_mode!r}")
        return np.array(cycle, dtype=np.int64)

    @property
    def period(self) -> int:
        return len(self.route)

    def observation_space(self) -> gym.spaces.Box:
        shape = (len(self.channel_names), self.height, self.width)
        low, high = np.zeros(shape, np.float32), np.ones(shape, np.float32)
        for k, s in enumerate(self.specs, start=len(BASE_CHANNELS)):
            if s.kind != "copy":
                low[k], high[k] = s.low, s.high
        return gym.spaces.Box(low, high, dtype=np.float32)


# -- counter-based randomness --------------------------------------------------------------------
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
# tags are 1-element arrays: numpy warns on scalar uint64 overflow, which the hash relies on
_TAG_RESET, _TAG_NOISE = np.array([1], np.uint64), np.array([2], np.uint64)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a bijective avalanche on uint64 (wrap-around arithmetic)."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _uniform(keys: np.ndarray, tag: np.ndarray, a: np.ndarray, b: np.ndarray, size: int) -> np.ndarray:
    """U[0, 1) draws, shape [len(keys), size], a pure function of (key, tag, a, b, draw index)."""
    h = _mix64(_mix64(_mix64(keys ^ _mix64(tag)) ^ a.astype(np.uint64)) ^ b.astype(np.uint64))
    u = _mix64(h[:, None] + np.arange(size, dtype=np.uint64) * _GOLDEN)
    return (u >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _key(seed: Optional[int]) -> np.uint64:
    if seed is not None and (not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.SeedSequence(None if seed is None else int(seed)).generate_state(1, dtype=np.uint64)[0]


class _Batch:
    """State and dynamics of N envs; no autoreset policy (the env classes add that)."""

    def __init__(self, world: _World, cfg: PatrolGridConfig, n: int) -> None:
        self.w, self.cfg, self.n = world, cfg, n
        self.pos = np.zeros((n, 2), np.int64)
        self.goal = np.zeros((n, 2), np.int64)
        self.phase = np.zeros(n, np.int64)
        self.t = np.zeros(n, np.int64)
        self.keys = np.array([_key(None) for _ in range(n)], dtype=np.uint64)
        self.episode = np.zeros(n, np.uint64)

    def reset(self, idx: np.ndarray, options: Optional[Dict[str, Any]] = None) -> None:
        w = self.w
        u = _uniform(self.keys[idx], _TAG_RESET, self.episode[idx], np.zeros(len(idx), np.uint64), 3)
        self.pos[idx] = w.starts[(u[:, 0] * len(w.starts)).astype(np.int64)]
        self.goal[idx] = w.goals[(u[:, 1] * len(w.goals)).astype(np.int64)]
        self.phase[idx] = (u[:, 2] * w.period).astype(np.int64) if self.cfg.random_enemy_phase else 0
        self.t[idx] = 0
        if options:
            self._place(idx, options)

    def _place(self, idx: np.ndarray, options: Dict[str, Any]) -> None:
        """Explicit start state from reset options: 'agent', 'goal' (row, col) and 'enemy_phase'."""
        unknown = sorted(set(options) - {"agent", "goal", "enemy_phase"})
        if unknown:
            raise ValueError(f"unknown reset options {unknown}; expected 'agent', 'goal', 'enemy_phase'")
        for key, arr in (("agent", self.pos), ("goal", self.goal)):
            if key in options:
                cells = np.broadcast_to(np.asarray(options[key], dtype=np.int64), (len(idx), 2))
                r, c = cells[:, 0], cells[:, 1]
                if np.any((r < 0) | (r >= self.w.height) | (c < 0) | (c >= self.w.width)) or self.w.walls[r, c].any():
                    raise ValueError(f"reset option {key!r}: {options[key]} is outside the grid or a wall")
                arr[idx] = cells
        if "enemy_phase" in options:
            ph = np.broadcast_to(np.asarray(options["enemy_phase"], dtype=np.int64), (len(idx),))
            if np.any((ph < 0) | (ph >= self.w.period)):
                raise ValueError(f"reset option 'enemy_phase' must lie in [0, {self.w.period}), "
                                 f"got {options['enemy_phase']}")
            self.phase[idx] = ph
        if np.any(np.all(self.pos[idx] == self.goal[idx], axis=1)):
            raise ValueError("reset options put the agent on the goal")

    def check_actions(self, actions: Any) -> np.ndarray:
        a = np.asarray(actions)
        if a.shape != (self.n,) or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"expected {self.n} integer actions, got array of shape {a.shape} and dtype {a.dtype}")
        if np.any((a < 0) | (a >= len(self.w.moves))):
            raise ValueError(f"actions must lie in [0, {len(self.w.moves)}), got {a}")
        return a.astype(np.int64, copy=False)

    def enemy(self) -> np.ndarray:
        return self.w.route[self.phase]

    def step(self, actions: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        w, cfg = self.w, self.cfg
        target = self.pos + w.moves[actions]
        np.clip(target[:, 0], 0, w.height - 1, out=target[:, 0])
        np.clip(target[:, 1], 0, w.width - 1, out=target[:, 1])
        blocked = w.walls[target[:, 0], target[:, 1]]
        new_pos = np.where(blocked[:, None], self.pos, target)
        old_enemy = w.route[self.phase]
        self.phase = (self.phase + 1) % w.period
        new_enemy = w.route[self.phase]
        met = np.all(new_pos == new_enemy, axis=1)
        swapped = np.all(new_pos == old_enemy, axis=1) & np.all(self.pos == new_enemy, axis=1)
        hit = met | swapped
        reached = np.all(new_pos == self.goal, axis=1) & ~hit
        self.pos = new_pos
        self.t += 1
        reward = np.where(hit, cfg.collision_reward, np.where(reached, cfg.goal_reward, 0.0 - cfg.step_penalty))
        terminated = hit | reached
        truncated = (self.t >= cfg.max_steps) & ~terminated
        return reward.astype(np.float32), terminated, truncated

    def observe(self) -> np.ndarray:
        w, n = self.w, self.n
        obs = np.zeros((n, len(w.channel_names), w.height, w.width), np.float32)
        rows = np.arange(n)
        obs[:, 0] = w.walls
        obs[rows, 1, self.pos[:, 0], self.pos[:, 1]] = 1.0
        obs[rows, 2, self.goal[:, 0], self.goal[:, 1]] = 1.0
        enemy = self.enemy()
        obs[rows, 3, enemy[:, 0], enemy[:, 1]] = 1.0
        if w.n_noise:
            hw = w.height * w.width
            # two uniforms per pixel per noise channel: Box-Muller needs both, uniform uses the first
            u = _uniform(self.keys, _TAG_NOISE, self.episode, self.t.astype(np.uint64), 2 * w.n_noise * hw)
            u = u.reshape(n, w.n_noise, 2, w.height, w.width)
        j = 0
        for k, s in enumerate(w.specs, start=len(BASE_CHANNELS)):
            if s.kind == "copy":
                obs[:, k] = obs[:, w.copy_src[k - len(BASE_CHANNELS)]]
            elif s.kind == "constant":
                obs[:, k] = s.params[0]
            elif s.kind == "uniform":
                lo, hi = s.params
                obs[:, k] = lo + (hi - lo) * u[:, j, 0]
                j += 1
            else:
                obs[:, k] = s.params[0] * np.sqrt(-2.0 * np.log1p(-u[:, j, 0])) * np.cos(2 * np.pi * u[:, j, 1])
                j += 1
        return obs


class PatrolGridVecEnv(gym.vector.VectorEnv):
    """N patrol gridworlds stepped together, with gymnasium 1.x "next step" autoreset.

    The step after an env's episode ends ignores that env's action and returns its reset
    observation with reward 0 and terminated = truncated = False (as EnvPool and gymnasium's
    vector envs do). ``reset(seed=s)`` seeds env i with s + i.
    """

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, num_envs: int = 1, config: Optional[PatrolGridConfig] = None, **overrides: Any) -> None:
        if int(num_envs) < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.config = PatrolGridConfig.from_kwargs(config, **overrides)
        self._world = _World(self.config)
        self.num_envs = int(num_envs)
        self._b = _Batch(self._world, self.config, self.num_envs)
        self._prev_done = np.zeros(self.num_envs, dtype=bool)
        self._started = False
        self.render_mode = None
        self.single_observation_space = self._world.observation_space()
        self.single_action_space = gym.spaces.Discrete(len(self._world.moves))
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)

    @property
    def channel_names(self) -> Tuple[str, ...]:
        return self._world.channel_names

    @property
    def enemy_route(self) -> np.ndarray:
        """The enemy's cell at each phase of its patrol, [period, 2] (row, col)."""
        return self._world.route.copy()

    def reset(self, *, seed: Union[int, Sequence[int], None] = None, options: Optional[Dict[str, Any]] = None):
        n = self.num_envs
        if seed is not None:
            seeds = [seed + i for i in range(n)] if isinstance(seed, (int, np.integer)) else list(seed)
            if len(seeds) != n:
                raise ValueError(f"reset: {len(seeds)} seeds for {n} envs")
            self._b.keys = np.array([_key(s) for s in seeds], dtype=np.uint64)
            self._b.episode[:] = 0
        elif self._started:
            self._b.episode += np.uint64(1)
        self._started = True
        self._b.reset(np.arange(n), options)
        self._prev_done[:] = False
        return self._b.observe(), {}

    def step(self, actions: Any):
        if not self._started:
            raise RuntimeError("PatrolGridVecEnv.step called before reset")
        b = self._b
        actions = b.check_actions(actions)
        restart = np.flatnonzero(self._prev_done)
        reward, terminated, truncated = b.step(actions)
        if restart.size:
            b.episode[restart] += np.uint64(1)
            b.reset(restart)
            reward[restart] = 0.0
            terminated[restart] = False
            truncated[restart] = False
        self._prev_done = terminated | truncated
        return b.observe(), reward, terminated, truncated, {}


class PatrolGridEnv(gym.Env):
    """One patrol gridworld (gymnasium.Env); the same dynamics as :class:`PatrolGridVecEnv`."""

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}

    def __init__(self, config: Optional[PatrolGridConfig] = None, render_mode: Optional[str] = None,
                 **overrides: Any) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.config = PatrolGridConfig.from_kwargs(config, **overrides)
        self._world = _World(self.config)
        self._b = _Batch(self._world, self.config, 1)
        self._done = True
        self._started = False
        self.render_mode = render_mode
        self.observation_space = self._world.observation_space()
        self.action_space = gym.spaces.Discrete(len(self._world.moves))

    @property
    def channel_names(self) -> Tuple[str, ...]:
        return self._world.channel_names

    @property
    def enemy_route(self) -> np.ndarray:
        return self._world.route.copy()

    @property
    def state(self) -> Dict[str, Any]:
        """Agent, goal and enemy cells, the enemy's phase and the step count (for tests and debugging)."""
        b = self._b
        return {"agent": tuple(b.pos[0].tolist()), "goal": tuple(b.goal[0].tolist()),
                "enemy": tuple(b.enemy()[0].tolist()), "enemy_phase": int(b.phase[0]), "t": int(b.t[0])}

    def reset(self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None):
        super().reset(seed=seed)
        if seed is not None:
            self._b.keys[0] = _key(seed)
            self._b.episode[0] = 0
        elif self._started:
            self._b.episode[0] += np.uint64(1)
        self._started = True
        self._b.reset(np.zeros(1, np.int64), options)
        self._done = False
        return self._b.observe()[0], {}

    def step(self, action: Any):
        if self._done:
            raise RuntimeError("PatrolGridEnv.step called on a finished episode; call reset() first")
        a = self._b.check_actions(np.asarray(action).reshape(1))
        reward, terminated, truncated = self._b.step(a)
        self._done = bool(terminated[0] or truncated[0])
        return self._b.observe()[0], float(reward[0]), bool(terminated[0]), bool(truncated[0]), {}

    def render(self) -> Union[str, np.ndarray, None]:
        if self.render_mode is None:
            return None
        w, st = self._world, self.state
        if self.render_mode == "ansi":
            cells: List[List[str]] = [["#" if wall else "." for wall in row] for row in w.walls]
            for key, ch in (("goal", "G"), ("enemy", "E"), ("agent", "A")):
                r, c = st[key]
                cells[r][c] = "X" if ch == "A" and st["agent"] == st["enemy"] else ch
            return "\n".join("".join(r) for r in cells)
        img = np.full((w.height, w.width, 3), 235, np.uint8)
        img[w.walls] = (60, 60, 60)
        for key, colour in (("goal", (40, 170, 60)), ("enemy", (210, 40, 40)), ("agent", (40, 90, 220))):
            img[st[key]] = colour
        return np.kron(img, np.ones((16, 16, 1), np.uint8))
