"""MinAtar games (Young & Tian 2019) as gymnasium envs with ``[C, 10, 10]`` float32 observations.

MinAtar's games are 10x10 grids with one binary channel per object kind (paddle, ball, ...):
images small enough for an MLP on the flattened input, which is what the input-mask analysis
needs to show per-channel and per-pixel pruning. The optional ``minatar`` package (PyPI, GPL,
pure Python; only numpy is needed at run time, so ``pip install --no-deps minatar`` is enough)
provides the games; this module only adapts their interface:

* observation: MinAtar's ``[10, 10, C]`` bool state as ``[C, 10, 10]`` float32;
* ``channel_names``: the game's own channel names in channel order;
* ``reset(seed=s)`` seeds the game's RandomState (dynamics and sticky actions);
* the vector env is gymnasium's ``SyncVectorEnv`` ("next step" autoreset), because the games
  are Python objects that cannot be batched.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Tuple

import gymnasium as gym
import numpy as np

GAMES = ("breakout", "space_invaders", "asterix", "freeway", "seaquest")


def _import_minatar():
    # minatar logs a warning through the *root* logger when seaborn is missing (it only needs
    # seaborn for its own GUI); logging.warning() on a handler-less root would install a
    # stderr handler for the whole process, so hold a NullHandler there during the import.
    root = logging.getLogger()
    guard = logging.NullHandler()
    root.addHandler(guard)
    previous = root.manager.disable
    logging.disable(logging.WARNING)
    try:
        import minatar
    except ImportError as e:
        raise ImportError("MinAtar envs need the optional 'minatar' package: pip install --no-deps minatar") from e
    finally:
        logging.disable(previous)
        root.removeHandler(guard)
    return minatar


class MinAtarEnv(gym.Env):
    """One MinAtar game. ``max_steps`` (optional) truncates episodes; ``minimal_action_set``
    restricts actions to those the game uses (e.g. Breakout: no-op, left, right)."""

    metadata = {"render_modes": ["ansi"], "render_fps": 10}

    def __init__(self, game: str, sticky_action_prob: float = 0.1, difficulty_ramping: bool = True,
                 minimal_action_set: bool = True, max_steps: Optional[int] = None,
                 render_mode: Optional[str] = None) -> None:
        if game not in GAMES:
            raise ValueError(f"unknown MinAtar game {game!r}; expected one of {GAMES}")
        if not 0.0 <= sticky_action_prob <= 1.0:
            raise ValueError(f"sticky_action_prob must lie in [0, 1], got {sticky_action_prob}")
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {max_steps}")
        self._game = _import_minatar().Environment(game, sticky_action_prob=sticky_action_prob,
                                                   difficulty_ramping=difficulty_ramping)
        self.game = game
        self.max_steps = max_steps
        self.render_mode = render_mode
        channels: Dict[str, int] = self._game.env.channels
        self.channel_names: Tuple[str, ...] = tuple(sorted(channels, key=channels.__getitem__))
        self._actions = (list(self._game.minimal_action_set()) if minimal_action_set
                         else list(range(self._game.num_actions())))
        h, w, c = self._game.state_shape()
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(c, h, w), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(len(self._actions))
        self._t = 0

    def _obs(self) -> np.ndarray:
        return np.ascontiguousarray(self._game.state().transpose(2, 0, 1), dtype=np.float32)

    def reset(self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None):
        super().reset(seed=seed)
        if seed is not None:
            self._game.seed(int(seed))
        self._game.reset()
        self._t = 0
        return self._obs(), {}

    def step(self, action: Any):
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is not in {self.action_space}")
        reward, terminated = self._game.act(self._actions[int(action)])
        self._t += 1
        truncated = self.max_steps is not None and self._t >= self.max_steps and not terminated
        return self._obs(), float(reward), bool(terminated), bool(truncated), {}

    def render(self) -> Optional[str]:
        if self.render_mode != "ansi":
            return None
        state = self._game.state()
        rows = []
        for r in range(state.shape[0]):
            hits = [np.flatnonzero(state[r, c]) for c in range(state.shape[1])]
            rows.append("".join(str(h[0]) if len(h) else "." for h in hits))
        return "\n".join(rows)


class MinAtarVecEnv(gym.vector.SyncVectorEnv):
    """``num_envs`` copies of a MinAtar game; ``reset(seed=s)`` seeds copy i with s + i."""

    def __init__(self, num_envs: int = 1, game: str = "breakout", **kwargs: Any) -> None:
        if int(num_envs) < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        super().__init__([lambda: MinAtarEnv(game, **kwargs) for _ in range(int(num_envs))])
        self.channel_names: Tuple[str, ...] = self.envs[0].channel_names
