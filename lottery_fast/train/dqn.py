"""DQN (Mnih et al. 2015) with optional Double-DQN targets, behind the IMP Trainer protocol.

The model IMP sees is the online Q-network only: an MLP of :class:`MaskedLinear` layers named
``fc0, fc1, ..., head`` (observations are flattened first, so image envs work too). The target
network lives inside :meth:`DQNTrainer.train` as a deep copy of the online network, masks
included, refreshed by a hard copy every ``target_update_period`` optimizer steps; it is never
pruned on its own and never leaves ``train``. ``default_prune_exclude`` is therefore empty: every
layer of the Q-network, the head included, takes part in global magnitude pruning (set
``DQNConfig.prune_exclude`` to keep e.g. ``("head",)`` dense).

Environments come from gymnasium's vector API with "next step" autoreset: the step after an
episode ends returns the reset observation (the action is ignored), so that step's transition is
not stored. Truncated episodes bootstrap from the true last observation (which next-step
autoreset returns at the truncation step); only terminations cut the bootstrap.

Every random stream (env seeds, exploration, replay sampling, evaluation) is derived from the
``seed`` argument through ``numpy.random.SeedSequence``, and model init runs under a forked torch
RNG, so calls are deterministic in ``seed`` and leave global RNG state alone.
"""
from __future__ import annotations

import contextlib
import copy
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..nn import MaskedLinear, masked_modules
from .protocol import ProgressFn, TrainResult


@dataclass
class DQNConfig:
    """DQN hyperparameters. Steps are env steps summed over ``num_envs`` unless named otherwise."""

    env_id: str = "CartPole-v1"
    env_kwargs: Dict[str, Any] = field(default_factory=dict)
    num_envs: int = 4
    total_timesteps: int = 50_000
    hidden: Tuple[int, ...] = (64, 64)
    learning_rate: float = 1e-3
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
    exploration_fraction: float = 0.3  # share of total_timesteps over which epsilon decays linearly
    double_dqn: bool = True
    huber_delta: float = 1.0
    max_grad_norm: Optional[float] = 10.0  # None: no clipping
    eval_episodes: int = 10
    eval_every: int = 10_000  # env steps between evaluations during training (0: only at the end)
    eval_epsilon: float = 0.0
    prune_exclude: Tuple[str, ...] = ()  # becomes the trainer's default_prune_exclude
    # torch intra-op threads while training/evaluating (restored afterwards); None: leave as is.
    # DQN's networks and batches are tiny: extra threads only add synchronisation, and on a busy
    # machine spinning threads made one update 25x slower (2 ms -> 52 ms measured).
    torch_threads: Optional[int] = 1

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        self.prune_exclude = tuple(self.prune_exclude)
        unit = lambda v: 0.0 <= v <= 1.0  # noqa: E731
        ok = {k: getattr(self, k) >= 1 for k in ("num_envs", "total_timesteps", "buffer_size", "batch_size",
                                                 "train_frequency", "gradient_steps", "target_update_period",
                                                 "eval_episodes")}
        ok.update({k: getattr(self, k) >= 0 for k in ("learning_starts", "eval_every")})
        ok.update({k: unit(getattr(self, k)) for k in ("eps_start", "eps_end", "eval_epsilon", "gamma")})
        ok.update(hidden=all(h >= 1 for h in self.hidden), learning_rate=self.learning_rate > 0,
                  exploration_fraction=0.0 < self.exploration_fraction <= 1.0, huber_delta=self.huber_delta > 0,
                  max_grad_norm=self.max_grad_norm is None or self.max_grad_norm > 0,
                  torch_threads=self.torch_threads is None or self.torch_threads >= 1)
        bad = [f"{k}={getattr(self, k)}" for k, good in ok.items() if not good]
        if bad:
            raise ValueError(f"invalid DQNConfig: {', '.join(bad)}")

    def num_updates(self) -> int:
        """Optimizer steps one training run does: a phase every ``train_frequency`` vector steps,
        from the vector step at which ``learning_starts`` env steps have been collected."""
        vec_steps = -(-self.total_timesteps // self.num_envs)
        first = max(1, -(-self.learning_starts // self.num_envs))
        phases = max(0, vec_steps // self.train_frequency - (first - 1) // self.train_frequency)
        return phases * self.gradient_steps

    def epsilon(self, step: int) -> float:
        """Linear schedule from eps_start to eps_end over exploration_fraction * total_timesteps."""
        frac = min(1.0, step / (self.exploration_fraction * self.total_timesteps))
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
        return self.layers(obs.reshape(obs.shape[0], -1))


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


def _make_vec_env(env_id: str, num_envs: int, env_kwargs: Dict[str, Any]) -> gym.vector.VectorEnv:
    """A gymnasium vector env with next-step autoreset (the batched implementation when one is registered)."""
    from ..envs import registry  # noqa: F401  (registers lottery_fast's own ids)

    try:
        envs = gym.make_vec(env_id, num_envs=num_envs, **env_kwargs)
    except gym.error.Error as e:
        raise ValueError(f"cannot make env {env_id!r}: {e}") from e
    mode = envs.metadata.get("autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP)
    if mode != gym.vector.AutoresetMode.NEXT_STEP:
        envs.close()
        raise ValueError(f"env {env_id!r}: DQN expects next-step autoreset, the vector env uses {mode}")
    if not isinstance(envs.single_action_space, gym.spaces.Discrete):
        envs.close()
        raise ValueError(f"env {env_id!r}: DQN needs a discrete action space, got {envs.single_action_space}")
    return envs


@contextlib.contextmanager
def _torch_threads(n: Optional[int]):
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n is not None:
            torch.set_num_threads(previous)


def _seed_ints(seed: int, n: int) -> list:
    """n independent non-negative int seeds derived from ``seed``."""
    return [int(s) for s in np.random.SeedSequence(int(seed)).generate_state(n, dtype=np.uint32)]


class DQNTrainer:
    """Trainer protocol implementation for DQN on gymnasium vector envs (discrete actions)."""

    name = "dqn"

    def __init__(self, config: Optional[DQNConfig] = None) -> None:
        self.config = config if config is not None else DQNConfig()
        self.default_prune_exclude: Tuple[str, ...] = tuple(self.config.prune_exclude)
        probe = _make_vec_env(self.config.env_id, 1, self.config.env_kwargs)
        self.obs_shape: Tuple[int, ...] = tuple(probe.single_observation_space.shape)
        self.n_actions = int(probe.single_action_space.n)
        probe.close()

    def build_model(self, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return QNetwork(self.obs_shape, self.n_actions, self.config.hidden)

    # -- acting --------------------------------------------------------------------------------
    @staticmethod
    @torch.no_grad()
    def _act(model: nn.Module, obs: np.ndarray, eps: float, rng: np.random.Generator, n_actions: int) -> np.ndarray:
        greedy = model(torch.as_tensor(obs, dtype=torch.float32)).argmax(dim=1).numpy()
        if eps <= 0.0:
            return greedy
        explore = rng.random(len(greedy)) < eps
        return np.where(explore, rng.integers(0, n_actions, size=len(greedy)), greedy)

    def _evaluate(self, model: nn.Module, env_seed: int, act_seed: int) -> float:
        cfg = self.config
        envs = _make_vec_env(cfg.env_id, cfg.eval_episodes, cfg.env_kwargs)
        rng = np.random.default_rng(act_seed)
        was_training = model.training
        model.eval()
        try:
            obs, _ = envs.reset(seed=env_seed)
            returns = np.zeros(cfg.eval_episodes)
            done = np.zeros(cfg.eval_episodes, dtype=bool)
            # an env without a time limit (or a policy that never ends an episode) must not hang IMP
            limit = getattr(envs.spec, "max_episode_steps", None) or 10_000
            for _ in range(limit):  # each env plays exactly one episode; later ones are ignored
                if done.all():
                    break
                actions = self._act(model, obs, cfg.eval_epsilon, rng, self.n_actions)
                obs, reward, terminated, truncated, _ = envs.step(actions)
                returns += np.where(done, 0.0, reward)
                done |= terminated | truncated
        finally:
            envs.close()
            model.train(was_training)
        return float(returns.mean())

    def evaluate(self, model: nn.Module, seed: int) -> float:
        """Mean return of ``eval_episodes`` greedy (``eval_epsilon``) episodes, deterministic in ``seed``."""
        env_seed, act_seed = _seed_ints(int(seed) + 0x5EED_0000, 2)  # distinct from training's env seeds
        with _torch_threads(self.config.torch_threads):
            return self._evaluate(model, env_seed, act_seed)

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
        with _torch_threads(self.config.torch_threads):
            return self._train(model, seed, rewind_step, on_progress)

    def _train(self, model: nn.Module, seed: int, rewind_step: Optional[int],
               on_progress: Optional[ProgressFn]) -> Tuple[TrainResult, Optional[Dict[str, torch.Tensor]]]:
        cfg = self.config
        if rewind_step is not None and not 0 <= rewind_step <= cfg.num_updates():
            raise ValueError(f"rewind_step={rewind_step} outside [0, {cfg.num_updates()}], "
                             "the optimizer steps of this run")
        for name, p in model.named_parameters():
            if not torch.isfinite(p).all():
                raise ValueError(f"DQN train: parameter {name!r} has NaN or infinite values")
        env_seed, explore_seed, replay_seed, eval_seed = _seed_ints(seed, 4)
        rng = np.random.default_rng(explore_seed)
        buffer = ReplayBuffer(cfg.buffer_size, self.obs_shape, torch.Generator().manual_seed(replay_seed))
        target = copy.deepcopy(model).requires_grad_(False)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps)
        rewind_state = self._snapshot(model) if rewind_step == 0 else None
        model.train()

        envs = _make_vec_env(cfg.env_id, cfg.num_envs, cfg.env_kwargs)
        n = cfg.num_envs
        start = time.perf_counter()
        steps = updates = vec_steps = evals = 0
        best, losses, next_eval = -np.inf, deque(maxlen=100), cfg.eval_every or np.inf
        ep_return, recent, episodes = np.zeros(n), deque(maxlen=10), 0
        try:
            obs, _ = envs.reset(seed=env_seed)
            prev_done = np.zeros(n, dtype=bool)
            while steps < cfg.total_timesteps:
                actions = self._act(model, obs, cfg.epsilon(steps), rng, self.n_actions)
                next_obs, reward, terminated, truncated, _ = envs.step(actions)
                live = ~prev_done  # envs whose step was a real transition, not an autoreset
                buffer.add(obs[live], actions[live], reward[live], next_obs[live], terminated[live])
                ep_return = np.where(live, ep_return + reward, 0.0)
                done = live & (terminated | truncated)
                recent.extend(ep_return[done].tolist())
                episodes += int(done.sum())
                prev_done, obs = terminated | truncated, next_obs
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
                            rewind_state = self._snapshot(model)

                if steps >= next_eval and steps < cfg.total_timesteps:  # the final evaluation follows below
                    next_eval += cfg.eval_every
                    metric = self._evaluate(model, *_seed_ints(eval_seed + evals, 2))
                    evals += 1
                    best = max(best, metric)
                    if on_progress is not None:
                        on_progress({"step": float(steps), "total": float(cfg.total_timesteps), "metric": metric,
                                     "epsilon": cfg.epsilon(steps),
                                     "steps_per_s": steps / max(time.perf_counter() - start, 1e-9)})
        finally:
            envs.close()

        for layer in masked_modules(model).values():  # pruned weights exactly zero on return
            layer.apply_mask_()
        assert rewind_step is None or rewind_state is not None, "num_updates() disagrees with the training loop"
        elapsed = time.perf_counter() - start
        metric = self.evaluate(model, seed)
        best = max(best, metric)
        if on_progress is not None:
            on_progress({"step": float(steps), "total": float(cfg.total_timesteps), "metric": metric,
                         "steps_per_s": steps / max(elapsed, 1e-9)})
        extra = {"updates": float(updates), "episodes": float(episodes),
                 "train_return_last10": float(np.mean(recent)) if recent else float("nan"),
                 "loss_last100": float(np.mean(losses)) if losses else float("nan"),
                 "steps_per_s": steps / max(elapsed, 1e-9)}
        return TrainResult(metric=metric, best_metric=float(best), steps=steps, extra=extra), rewind_state

    @staticmethod
    def _snapshot(model: nn.Module) -> Dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
