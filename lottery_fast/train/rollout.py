"""Rollout storage, GAE with autoreset masking, and running a policy in batched envs.

With next-step autoreset (see :mod:`lottery_fast.envs.make`) a rollout row ``t`` whose observation
is the final observation of a finished episode is not a decision: the env ignores the action and
returns reward 0 and a reset observation. Such rows carry ``valid = 0``. They are kept in place
(fixed shapes, no per-step allocation) and weighted out of every loss and statistic, and GAE
neither gives them an advantage nor lets anything flow through them. Their observation still
serves one purpose: its value bootstraps the previous row when that episode was truncated.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..envs.make import EnvConfig, EnvSpec, as_env_config
from .common import torch_threads


class RolloutBuffer:
    """Preallocated tensors for ``num_steps`` x ``num_envs`` transitions (allocated once per run).

    ``obs`` and ``values`` have one extra row: row ``num_steps`` holds the observation after the
    last step (and its value), which becomes row 0 of the next rollout.
    """

    def __init__(self, num_steps: int, num_envs: int, spec: EnvSpec) -> None:
        T, N = num_steps, num_envs
        self.num_steps, self.num_envs = T, N
        self.obs = torch.zeros((T + 1, N, *spec.obs_shape), dtype=torch.float32)  # network inputs
        if spec.discrete:
            self.actions = torch.zeros((T, N), dtype=torch.int64)
        else:
            self.actions = torch.zeros((T, N, *spec.action_shape), dtype=torch.float32)
        self.logp = torch.zeros((T, N))
        self.values = torch.zeros((T + 1, N))
        self.rewards = torch.zeros((T, N))
        self.terminated = torch.zeros((T, N))
        self.dones = torch.zeros((T, N))  # terminated or truncated
        self.valid = torch.zeros((T, N))
        self.advantages = torch.zeros((T, N))
        self.returns = torch.zeros((T, N))

    def flat(self, name: str) -> torch.Tensor:
        """The first ``num_steps`` rows of a field as one batch dimension (a view)."""
        t = getattr(self, name)[: self.num_steps]
        return t.reshape(self.num_steps * self.num_envs, *t.shape[2:])

    def compute_gae(self, gamma: float, gae_lambda: float) -> None:
        compute_gae(self.rewards.numpy(), self.values.numpy(), self.terminated.numpy(), self.dones.numpy(),
                    self.valid.numpy(), gamma, gae_lambda, out=self.advantages.numpy())
        torch.add(self.advantages, self.values[: self.num_steps], out=self.returns)


def compute_gae(rewards: np.ndarray, values: np.ndarray, terminated: np.ndarray, dones: np.ndarray,
                valid: np.ndarray, gamma: float, gae_lambda: float,
                out: Optional[np.ndarray] = None) -> np.ndarray:
    """Generalised advantage estimates for [T, N] arrays with next-step autoreset rows masked out.

    ``values`` is [T + 1, N]. Row ``t`` bootstraps from ``values[t + 1]`` unless it terminated
    (a truncated row bootstraps from its real final observation, which row ``t + 1`` holds), and
    the recursion stops at every episode end. Invalid rows get advantage 0.
    """
    T = rewards.shape[0]
    adv = np.empty_like(rewards) if out is None else out
    running = np.zeros(rewards.shape[1:], dtype=rewards.dtype)
    for t in range(T - 1, -1, -1):
        delta = rewards[t] + gamma * values[t + 1] * (1.0 - terminated[t]) - values[t]
        running = (delta + gamma * gae_lambda * (1.0 - dones[t]) * running) * valid[t]
        adv[t] = running
    return adv


@torch.no_grad()
def evaluate_policy(model: nn.Module, env: Union[str, EnvConfig], seed: int, episodes: int,
                    max_steps: Optional[int] = None) -> np.ndarray:
    """Returns of ``episodes`` episodes of the deterministic policy ``model.greedy``, one per env.

    ``env`` is an :class:`EnvConfig` (or a bare env id).
    Every episode starts from the reset of an env seeded ``seed + i``, so short episodes are not
    over-represented. An episode still running after ``max_steps`` (default: the env's time limit,
    else 10,000) is cut there and its partial return counted.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    with as_env_config(env).make(episodes, seed) as venv:
        return _greedy_returns(model, venv, max_steps)


def _greedy_returns(model, venv, max_steps: Optional[int] = None) -> np.ndarray:
    """One greedy episode per env of ``venv`` (a VecEnv or a PopulationEnv: rewards of any shape),
    cut at ``max_steps`` (default: the env's time limit, else 10,000)."""
    limit = max_steps or venv.spec.max_episode_steps or 10_000
    obs = venv.reset()
    returns = np.zeros(obs.shape[:-len(venv.spec.obs_shape)], np.float64)
    running = np.ones(returns.shape, bool)
    for _ in range(limit):
        action = model.greedy(torch.from_numpy(obs))
        tr = venv.step(action.numpy())
        returns += np.where(running, tr.reward, 0.0)
        running &= ~(tr.terminated | tr.truncated)
        if not running.any():
            break
        obs = tr.obs
    return returns


@torch.no_grad()
def collect_states(model: nn.Module, env: Union[str, EnvConfig], seed: int, num_envs: int, steps: int,
                   generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, np.ndarray]:
    """Raw observations at which ``model`` acted during ``steps`` batched steps of ``env`` (an
    :class:`EnvConfig` or a bare env id).

    Acts with ``model.sample`` from ``generator`` or, when it is None, greedily. Observations fed
    into an autoreset step are left out (no decision was made there). Also returns the returns of
    the episodes completed meanwhile.
    """
    with as_env_config(env).make(num_envs, seed) as venv:
        dtype = torch.uint8 if venv.spec.obs_dtype == np.uint8 else torch.float32
        out = torch.empty((steps, num_envs, *venv.spec.obs_shape), dtype=dtype)
        keep = torch.empty((steps, num_envs), dtype=torch.bool)
        obs = venv.reset()
        for t in range(steps):
            out[t] = torch.from_numpy(obs)
            if generator is None:
                action = model.greedy(out[t])
            else:
                action, _ = model.sample(model.preprocess(out[t]), generator)
            tr = venv.step(action.numpy())
            keep[t] = torch.from_numpy(~tr.autoreset)
            obs = tr.obs
        returns, _ = venv.episodes()
    return out[keep], returns


def mean_return(model: nn.Module, env: Union[str, EnvConfig], seed: int, episodes: int,
                num_threads: Optional[int]) -> float:
    """Mean of :func:`evaluate_policy`'s returns on ``num_threads`` torch threads: the policy
    trainers' ``evaluate``."""
    with torch_threads(num_threads):
        return float(evaluate_policy(model, env, seed, episodes).mean())


@torch.no_grad()
def evaluate_population(model, env: EnvConfig, seeds: Sequence[int], episodes: int) -> np.ndarray:
    """Mean return per member of :func:`evaluate_policy` for a stacked population ``model``
    (anything with ``greedy`` over ``[P, N, ...]`` observations): member ``p`` plays ``episodes``
    episodes in envs seeded ``seeds[p] + i``, exactly as it would alone."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    from ..envs.population import PopulationEnv

    with PopulationEnv(env, episodes, seeds) as venv:
        return _greedy_returns(model, venv).mean(1)
