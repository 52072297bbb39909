"""Gymnasium ids of lottery_fast's own environments, registered when this module is imported.

``gymnasium.make(id)`` gives the single env, ``gymnasium.make_vec(id, n)`` the batched numpy
implementation (through ``vector_entry_point``). Registering again is a no-op, so importing this
module any number of times (or from several places) is safe.

MinAtar ids are registered whether or not the optional ``minatar`` package is installed; making
one without it raises an ImportError that says what to install.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import gymnasium as gym

PATROL_GRID = "lottery_fast/PatrolGrid-v0"
PATROL_GRID_DISTRACTORS = "lottery_fast/PatrolGridDistractors-v0"
MINATAR_GAMES: Dict[str, str] = {  # gymnasium id suffix -> minatar game name
    "Breakout": "breakout", "SpaceInvaders": "space_invaders", "Asterix": "asterix", "Freeway": "freeway",
}


def _ids() -> Tuple[Tuple[str, str, str, Dict[str, Any]], ...]:
    grid = ("lottery_fast.envs.gridworld:PatrolGridEnv", "lottery_fast.envs.gridworld:PatrolGridVecEnv")
    minatar = ("lottery_fast.envs.minatar:MinAtarEnv", "lottery_fast.envs.minatar:MinAtarVecEnv")
    out = [
        (PATROL_GRID, *grid, {}),
        # the same world with three inputs the task does not need: a copy, a constant and noise
        (PATROL_GRID_DISTRACTORS, *grid, {"distractors": ("copy:enemy", "constant:1", "uniform")}),
    ]
    out += [(f"lottery_fast/MinAtar-{name}-v0", *minatar, {"game": game}) for name, game in MINATAR_GAMES.items()]
    return tuple(out)


def register_all() -> None:
    """Register every lottery_fast env id that is not registered yet."""
    for env_id, entry, vector_entry, kwargs in _ids():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry, vector_entry_point=vector_entry, kwargs=kwargs)


register_all()
