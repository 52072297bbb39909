"""The envs of a population: one :class:`VecEnv` per member, stepped together.

Each member's envs are seeded from that member's own seed, so what a member sees does not depend
on who else is in the population (one EnvPool of ``P x num_envs`` envs would seed env ``i`` with
``seed + i``, tying a member's episodes to its position). All members' steps are sent before any is
received, so EnvPool's worker threads step them while Python handles the others.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

from .make import EnvConfig, EnvSpec, Transition, VecEnv


class PopulationEnv:
    """``len(seeds)`` members of ``num_envs`` envs each; arrays are ``[P, num_envs, ...]``."""

    def __init__(self, env: EnvConfig, num_envs: int, seeds: Sequence[int]) -> None:
        if not seeds:
            raise ValueError("PopulationEnv needs at least one member seed")
        self.envs: List[VecEnv] = []
        try:
            for seed in seeds:
                self.envs.append(env.make(num_envs, int(seed)))
        except Exception:
            self.close()
            raise
        self.num_envs = int(num_envs)
        self.spec: EnvSpec = self.envs[0].spec

    @property
    def size(self) -> int:
        return len(self.envs)

    def reset(self) -> np.ndarray:
        return np.stack([e.reset() for e in self.envs])

    def step(self, actions: np.ndarray) -> Transition:
        """Step every member with its row of ``actions`` ([P, num_envs, ...])."""
        for env, a in zip(self.envs, actions):
            env.step_async(a)
        steps = [env.step_wait() for env in self.envs]
        return Transition(*(np.stack(field) for field in zip(*steps)))

    def episodes(self) -> List[Tuple[np.ndarray, np.ndarray]]:
        """Per member, the returns and lengths of the episodes finished since the last call."""
        return [e.episodes() for e in self.envs]

    def close(self) -> None:
        for e in self.envs:
            e.close()

    def __enter__(self) -> "PopulationEnv":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
