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
        self.members = len(seeds)
        self.num_envs = int(num_envs)
        # one batch for everyone where the backend seeds each env (numpy), else one VecEnv a member
        self._joint = env.make_population(num_envs, seeds)
        self.envs: List[VecEnv] = []
        if self._joint is None:
            try:
                for seed in seeds:
                    self.envs.append(env.make(num_envs, int(seed)))
            except Exception:
                self.close()
                raise
        first = self._joint if self._joint is not None else self.envs[0]
        self.spec: EnvSpec = first.spec

    @property
    def size(self) -> int:
        return self.members

    def _split(self, t: np.ndarray) -> np.ndarray:
        return t.reshape(self.members, self.num_envs, *t.shape[1:])

    def reset(self) -> np.ndarray:
        if self._joint is not None:
            return self._split(self._joint.reset())
        return np.stack([e.reset() for e in self.envs])

    def step(self, actions: np.ndarray) -> Transition:
        """Step every member with its row of ``actions`` ([P, num_envs, ...])."""
        if self._joint is not None:
            tr = self._joint.step(actions.reshape(self.members * self.num_envs, *actions.shape[2:]))
            return Transition(*(self._split(field) for field in tr))
        for env, a in zip(self.envs, actions):
            env.step_async(a)
        steps = [env.step_wait() for env in self.envs]
        return Transition(*(np.stack(field) for field in zip(*steps)))

    def episodes(self) -> List[Tuple[np.ndarray, np.ndarray]]:
        """Per member, the returns and lengths of the episodes finished since the last call."""
        if self._joint is None:
            return [e.episodes() for e in self.envs]
        returns, lengths, env = self._joint.episodes_by_env()
        member = env // self.num_envs
        return [(returns[member == p], lengths[member == p]) for p in range(self.members)]

    def close(self) -> None:
        if self._joint is not None:
            self._joint.close()
        for e in self.envs:
            e.close()

    def __enter__(self) -> "PopulationEnv":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
