"""DQN (Mnih et al. 2015) with optional Double-DQN targets, behind the IMP Trainer protocol.

The model IMP sees is the online Q-network only: an MLP of :class:`MaskedLinear` layers named
``fc0, fc1, ..., head`` (observations are flattened first, so image envs work too). The target
network lives inside :meth:`DQNTrainer.train` as a deep copy of the online network, masks
included, refreshed by a hard copy every ``target_update_period`` optimizer steps; it is never
pruned on its own and never leaves ``train``. ``default_prune_exclude`` is therefore empty: every
layer of the Q-network, the head included, takes part in global magnitude pruning (set
``DQNConfig.prune_exclude`` to keep e.g. ``("layers.head",)`` dense).

Environments come from :func:`lottery_fast.envs.make_vec_env`, as for PPO: EnvPool when it has
the task, gymnasium otherwise, distractor dims (``DQNConfig.distractors``) and observation
selection included. Both backends autoreset on the step after an episode ends; that step's
transition is not stored. Truncated episodes bootstrap from the true last observation (which
the truncation step returns); only terminations cut the bootstrap.

Every random stream (env seeds, exploration, replay sampling, evaluation) is drawn from one
generator seeded with the ``seed`` argument (:func:`lottery_fast.train.common.generator`), and
model init runs under a forked torch RNG, so calls are deterministic in ``seed`` and leave global
RNG state alone. Config names follow :class:`~lottery_fast.train.ppo.PPOConfig` (``total_steps``,
``lr``, ``num_threads``, ``env_backend``, ``env_kwargs``, ``distractors``, ``obs_select``).
"""
from __future__ import annotations

import copy
import math
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..envs.make import EnvConfig, check_distractors, check_select
from ..nn import MaskedLinear
from .common import check_finite, check_rewind_step, draw_seed, enforce_masks, generator, snapshot, torch_threads
from .protocol import ProgressFn, TrainResult
from .rollout import evaluate_policy


@dataclass(frozen=True)
class DQNConfig:
    """DQN hyperparameters. Steps are env steps summed over ``num_envs`` unless named otherwise."""

    total_steps: int = 50_000
    num_envs: int = 4
    hidden: Tuple[int, ...] = (64, 64)
    lr: float = 1e-3
    adam_eps: float = 1e-8
    gamma: float = 0.99
    buffer_size: int = 50_000
    batch_size: int = 64
    learning_starts: int = 1_000  # env steps of pure exploration before the first update
    train_frequency: int = 1  # vector steps between training phases
    gradient_steps: int = 1  # optimizer steps per training phase
    target_update_period: int = 250  # optimizer steps between hard target-network copies
    eps_start: float = 1.0
    eps_end: float = 0.05
    exploration_fraction: float = 0.3  # share of total_steps over which epsilon decays linearly
    double_dqn: bool = True
    huber_delta: float = 1.0
    max_grad_norm: Optional[float] = 10.0  # None: no clipping
    eval_episodes: int = 10
    eval_every: int = 10_000  # env steps between evaluations during training (0: only at the end)
    eval_epsilon: float = 0.0
    prune_exclude: Tuple[str, ...] = ()  # becomes the trainer's default_prune_exclude
    env_backend: str = "auto"
    env_kwargs: Dict[str, Any] = field(default_factory=dict)
    #: extra task-irrelevant observation dims (spec strings of lottery_fast.envs.distractors)
    distractors: Tuple[str, ...] = ()
    #: train on these observation dims only (after the distractors); None: all
    obs_select: Optional[Tuple[int, ...]] = None
    #: torch intra-op threads while training/evaluating (restored afterwards); None: leave as is.
    #: DQN's networks and batches are tiny: extra threads only add synchronisation, and on a busy
    #: machine spinning threads made one update 25x slower (2 ms -> 52 ms measured).
    num_threads: Optional[int] = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "prune_exclude", tuple(self.prune_exclude))
        object.__setattr__(self, "distractors", check_distractors(self.distractors, "DQNConfig.distractors"))
        if self.obs_select is not None:
            object.__setattr__(self, "obs_select", check_select(self.obs_select, where="DQNConfig.obs_select"))
        self.validate()

    def validate(self) -> None:
        unit = lambda v: 0.0 <= v <= 1.0  # noqa: E731
        ok = {k: getattr(self, k) >= 1 for k in ("num_envs", "total_steps", "buffer_size", "batch_size",
                                                 "train_frequency", "gradient_steps", "target_update_period",
                                                 "eval_episodes")}
        ok.update({k: getattr(self, k) >= 0 for k in ("learning_starts", "eval_every")})
        ok.update({k: unit(getattr(self, k)) for k in ("eps_start", "eps_end", "eval_epsilon", "gamma")})
        ok.update(hidden=all(h >= 1 for h in self.hidden), lr=self.lr > 0 and math.isfinite(self.lr),
                  exploration_fraction=0.0 < self.exploration_fraction <= 1.0, huber_delta=self.huber_delta > 0,
                  max_grad_norm=self.max_grad_norm is None or self.max_grad_norm > 0,
                  num_threads=self.num_threads is None or self.num_threads >= 1)
        bad = [f"{k}={getattr(self, k)}" for k, good in ok.items() if not good]
        if bad:
            raise ValueError(f"invalid DQNConfig: {', '.join(bad)}")

    def env_config(self, env_id: str) -> EnvConfig:
        """The envs this config trains and evaluates on."""
        return EnvConfig(env_id, self.env_backend, dict(self.env_kwargs), tuple(self.distractors),
                         None if self.obs_select is None else tuple(self.obs_select))

    def num_updates(self) -> int:
        """Optimizer steps one training run does: a phase every ``train_frequency`` vector steps,
        from the vector step at which ``learning_starts`` env steps have been collected."""
        vec_steps = -(-self.total_steps // self.num_envs)
        first = max(1, -(-self.learning_starts // self.num_envs))
        phases = max(0, vec_steps // self.train_frequency - (first - 1) // self.train_frequency)
        return phases * self.gradient_steps

    def epsilon(self, step: int) -> float:
        """Linear schedule from eps_start to eps_end over exploration_fraction * total_steps."""
        frac = min(1.0, step / (self.exploration_fraction * self.total_steps))
        return self.eps_start + frac * (self.eps_end - self.eps_start)


class QNetwork(nn.Module):
    """Flatten -> [MaskedLinear -> ReLU]* -> MaskedLinear head, modules named fc0.., head."""

    def __init__(self, obs_shape: Sequence[int], n_actions: int, hidden: Sequence[int]) -> None:
        super().__init__()
        layers: "OrderedDict[str, nn.Module]" = OrderedDict()
        width = int(np.prod(obs_shape))
        for i, h in enumerate(hidden):
            layers[f"fc{i}"] = MaskedLinear(width, h)
            layers[f"act{i}"] = nn.ReLU()
            width = h
        layers["head"] = MaskedLinear(width, n_actions)
        self.layers = nn.Sequential(layers)
        self.obs_shape = tuple(obs_shape)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.layers(obs.reshape(obs.shape[0], -1).to(torch.float32))

    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        """argmax-Q actions for raw observations (what :func:`evaluate_policy` calls)."""
        return self.forward(obs).argmax(dim=1)


class _EpsilonGreedy:
    """``model``'s greedy policy with probability 1 - eps, else a uniform action (for evaluation)."""

    def __init__(self, model: QNetwork, eps: float, rng: np.random.Generator, n_actions: int) -> None:
        self.model, self.eps, self.rng, self.n_actions = model, eps, rng, n_actions

    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(_act(self.model, obs.numpy(), self.eps, self.rng, self.n_actions))


class ReplayBuffer:
    """Preallocated ring buffer of transitions (torch tensors, CPU); uniform sampling."""

    def __init__(self, capacity: int, obs_shape: Sequence[int], generator: torch.Generator) -> None:
        self.capacity = int(capacity)
        self.obs = torch.zeros((self.capacity, *obs_shape), dtype=torch.float32)
        self.next_obs = torch.zeros_like(self.obs)
        self.actions = torch.zeros(self.capacity, dtype=torch.int64)
        self.rewards = torch.zeros(self.capacity, dtype=torch.float32)
        self.terminated = torch.zeros(self.capacity, dtype=torch.float32)
        self.size = 0
        self._next = 0
        self._gen = generator

    def add(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, next_obs: np.ndarray,
            terminated: np.ndarray) -> None:
        n = len(actions)
        if n == 0:
            return
        if n > self.capacity:
            raise ValueError(f"ReplayBuffer.add: {n} transitions exceed the capacity {self.capacity}")
        idx = (self._next + torch.arange(n)) % self.capacity
        self.obs[idx] = torch.as_tensor(obs, dtype=torch.float32)
        self.next_obs[idx] = torch.as_tensor(next_obs, dtype=torch.float32)
        self.actions[idx] = torch.as_tensor(actions, dtype=torch.int64)
        self.rewards[idx] = torch.as_tensor(rewards, dtype=torch.float32)
        self.terminated[idx] = torch.as_tensor(terminated, dtype=torch.float32)
        self._next = (self._next + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int) -> Tuple[torch.Tensor, ...]:
        if self.size == 0:
            raise RuntimeError("ReplayBuffer.sample: the buffer is empty")
        idx = torch.randint(0, self.size, (batch_size,), generator=self._gen)
        return self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx], self.terminated[idx]


@torch.no_grad()
def _act(model: nn.Module, obs: np.ndarray, eps: float, rng: np.random.Generator, n_actions: int) -> np.ndarray:
    greedy = model(torch.as_tensor(obs, dtype=torch.float32)).argmax(dim=1).numpy()
    if eps <= 0.0:
        return greedy
    explore = rng.random(len(greedy)) < eps
    return np.where(explore, rng.integers(0, n_actions, size=len(greedy)), greedy)


class DQNTrainer:
    """Trainer protocol implementation for DQN on one env id (discrete actions)."""

    name = "dqn"

    def __init__(self, env_id: str, config: Optional[DQNConfig] = None) -> None:
        self.config = config if config is not None else DQNConfig()
        self.default_prune_exclude: Tuple[str, ...] = tuple(self.config.prune_exclude)
        self.env_id = env_id
        #: how every env of this trainer is made (training and evaluation)
        self.env = self.config.env_config(env_id)
        with self.env.make(1, 0) as probe:
            spec = probe.spec
        if not spec.discrete:
            raise ValueError(f"env {env_id!r}: DQN needs a discrete action space, got continuous actions "
                             f"of shape {spec.action_shape}")
        self.spec = spec
        self.obs_shape: Tuple[int, ...] = tuple(spec.obs_shape)
        self.n_actions = int(spec.n_actions)

    def input_names(self) -> Dict[str, List[str]]:
        """The observation's dim (or channel) names, recorded by IMP in the run folder."""
        return self.spec.input_names()

    def build_model(self, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return QNetwork(self.obs_shape, self.n_actions, self.config.hidden)

    def optimizer_steps(self) -> int:
        """Optimizer steps of one training run: the range of ``rewind_step``."""
        return self.config.num_updates()

    # -- evaluation ----------------------------------------------------------------------------
    def _evaluate(self, model: nn.Module, env_seed: int, act_seed: int) -> float:
        cfg = self.config
        policy = model if cfg.eval_epsilon <= 0.0 else _EpsilonGreedy(
            model, cfg.eval_epsilon, np.random.default_rng(act_seed), self.n_actions)
        was_training = model.training
        model.eval()
        try:
            return float(evaluate_policy(policy, self.env, env_seed, cfg.eval_episodes).mean())
        finally:
            model.train(was_training)

    def evaluate(self, model: nn.Module, seed: int) -> float:
        """Mean return of ``eval_episodes`` greedy (``eval_epsilon``) episodes, deterministic in ``seed``."""
        g = generator(int(seed) + 0x5EED_0000)  # distinct from training's streams
        with torch_threads(self.config.num_threads):
            return self._evaluate(model, draw_seed(g), draw_seed(g))

    # -- learning ------------------------------------------------------------------------------
    def _td_loss(self, model: nn.Module, target: nn.Module, batch: Tuple[torch.Tensor, ...]) -> torch.Tensor:
        obs, actions, rewards, next_obs, terminated = batch
        q = model(obs).gather(1, actions[:, None]).squeeze(1)
        with torch.no_grad():
            next_q_target = target(next_obs)
            if self.config.double_dqn:
                best = model(next_obs).argmax(dim=1, keepdim=True)
                next_q = next_q_target.gather(1, best).squeeze(1)
            else:
                next_q = next_q_target.max(dim=1).values
            td_target = rewards + self.config.gamma * (1.0 - terminated) * next_q
        return F.huber_loss(q, td_target, delta=self.config.huber_delta)

    def train(self, model: nn.Module, seed: int, rewind_step: Optional[int] = None,
              on_progress: Optional[ProgressFn] = None) -> Tuple[TrainResult, Optional[Dict[str, torch.Tensor]]]:
        with torch_threads(self.config.num_threads):
            return self._train(model, seed, rewind_step, on_progress)

    def _train(self, model: nn.Module, seed: int, rewind_step: Optional[int],
               on_progress: Optional[ProgressFn]) -> Tuple[TrainResult, Optional[Dict[str, torch.Tensor]]]:
        cfg = self.config
        check_rewind_step(rewind_step, cfg.num_updates())
        check_finite(model, "DQN train")
        g = generator(seed)
        env_seed, explore_seed, replay_seed, eval_seed = (draw_seed(g) for _ in range(4))
        rng = np.random.default_rng(explore_seed)
        buffer = ReplayBuffer(cfg.buffer_size, self.obs_shape, torch.Generator().manual_seed(replay_seed))
        target = copy.deepcopy(model).requires_grad_(False)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
        rewind_state = snapshot(model) if rewind_step == 0 else None
        model.train()

        n = cfg.num_envs
        start = time.perf_counter()
        steps = updates = vec_steps = evals = 0
        best, losses, next_eval = -np.inf, deque(maxlen=100), cfg.eval_every or np.inf
        recent, episodes = deque(maxlen=10), 0
        with self.env.make(n, env_seed) as env:
            obs = env.reset()
            while steps < cfg.total_steps:
                actions = _act(model, obs, cfg.epsilon(steps), rng, self.n_actions)
                tr = env.step(actions)
                live = ~tr.autoreset  # an autoreset step is no transition: its action was ignored
                buffer.add(obs[live], actions[live], tr.reward[live], tr.obs[live], tr.terminated[live])
                finished, _ = env.episodes()
                recent.extend(finished.tolist())
                episodes += len(finished)
                obs = tr.obs
                steps += n
                vec_steps += 1

                if steps >= cfg.learning_starts and vec_steps % cfg.train_frequency == 0:
                    for _ in range(cfg.gradient_steps):
                        loss = self._td_loss(model, target, buffer.sample(cfg.batch_size))
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        if cfg.max_grad_norm is not None:
                            nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                        optimizer.step()
                        updates += 1
                        losses.append(loss.item())
                        if updates % cfg.target_update_period == 0:
                            target.load_state_dict(model.state_dict())
                        if rewind_step is not None and updates == rewind_step:
                            enforce_masks(model)
                            rewind_state = snapshot(model)

                if steps >= next_eval and steps < cfg.total_steps:  # the final evaluation follows below
                    next_eval += cfg.eval_every
                    metric = self._evaluate(model, eval_seed + evals, eval_seed + evals + 1)
                    evals += 1
                    best = max(best, metric)
                    if on_progress is not None:
                        sps = steps / max(time.perf_counter() - start, 1e-9)
                        on_progress({"step": float(steps), "total": float(cfg.total_steps), "metric": metric,
                                     "epsilon": cfg.epsilon(steps), "steps_per_s": sps,
                                     **_dqn_scalars(metric, recent, losses, cfg.epsilon(steps), sps)})

        enforce_masks(model)  # pruned weights exactly zero on return
        assert rewind_step is None or rewind_state is not None, "num_updates() disagrees with the training loop"
        elapsed = time.perf_counter() - start
        metric = self.evaluate(model, seed)
        best = max(best, metric)
        if on_progress is not None:
            on_progress({"step": float(steps), "total": float(cfg.total_steps), "metric": metric,
                         "steps_per_s": steps / max(elapsed, 1e-9)})
        extra = {"updates": float(updates), "episodes": float(episodes),
                 "train_return_last10": float(np.mean(recent)) if recent else float("nan"),
                 "loss_last100": float(np.mean(losses)) if losses else float("nan"),
                 "steps_per_s": steps / max(elapsed, 1e-9)}
        return TrainResult(metric=metric, best_metric=float(best), steps=steps, extra=extra), rewind_state


def _dqn_scalars(eval_return: float, recent, losses, epsilon: float, sps: float) -> Dict[str, float]:
    """Tracking scalars at an evaluation, under CleanRL's dqn.py names where it has them."""
    out = {"charts/eval_return": float(eval_return), "charts/epsilon": float(epsilon), "charts/SPS": float(sps)}
    if recent:
        out["charts/episodic_return"] = float(np.mean(recent))
    if losses:
        out["losses/td_loss"] = float(np.mean(losses))
    return out
