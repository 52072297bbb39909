"""PPO (clipped objective, GAE) over batched EnvPool environments, as an IMP :class:`Trainer`.

The algorithm follows CleanRL's ``ppo.py`` (discrete) and ``ppo_continuous_action.py``
(continuous) with these deliberate differences:

* next-step autoreset rows are masked out of every loss, advantage and statistic (see
  :mod:`lottery_fast.train.rollout`), and truncated episodes bootstrap from their real final
  observation;
* more envs per batch (EnvPool steps them together): 8 envs x 128 steps for classic control,
  8 envs x 256 steps (CleanRL's 2048-transition batch) for continuous control;
* observation statistics live in the model (``obs_norm`` buffers), so evaluation uses them and
  IMP rewinds them with the weights; reward scaling is training-only state, fresh per run.

Metrics. ``TrainResult.metric`` is the mean return of ``eval_episodes`` deterministic episodes
(argmax / Gaussian mean) of the final model; evaluations run ``num_evals`` times evenly through
training on the same eval seed, and ``best_metric`` is the best of them. With ``num_evals = 0``
no evaluation runs and both are the mean return of the last ``return_window`` training episodes
(stochastic policy). ``extra["train_return"]`` always reports that training mean.
``rewind_step`` counts optimizer (minibatch) steps; the total is
``updates * update_epochs * num_minibatches``.
"""
from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..envs.make import EnvConfig, check_distractors, check_select
from .common import (check_finite, check_rewind_step, draw_seed, enforce_masks, eval_points, generator,
                     snapshot, torch_threads)
from .networks import ActorCritic, NetworkConfig, ObsNormalizer, build_actor_critic
from .protocol import ProgressFn, TrainResult, one_by_one
from .rollout import RolloutBuffer, mean_return


@dataclass(frozen=True)
class PPOConfig:
    """Defaults: CleanRL's classic-control PPO with 8 envs; see :meth:`continuous_control`."""

    total_steps: int = 500_000  # env steps (all envs together)
    num_envs: int = 8
    num_steps: int = 128  # steps per env per rollout
    lr: float = 2.5e-4
    anneal_lr: bool = True
    gamma: float = 0.99
    gae_lambda: float = 0.95
    num_minibatches: int = 4
    update_epochs: int = 4
    norm_adv: bool = True
    clip_coef: float = 0.2
    clip_vloss: bool = True
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    target_kl: Optional[float] = None  # stop an update's epochs early past this KL estimate
    norm_obs: bool = False
    norm_reward: bool = False
    network: NetworkConfig = field(default_factory=NetworkConfig)
    eval_episodes: int = 10
    num_evals: int = 10
    return_window: int = 20
    env_backend: str = "auto"
    env_kwargs: Dict[str, Any] = field(default_factory=dict)
    #: extra task-irrelevant observation dims (spec strings of lottery_fast.envs.distractors), e.g.
    #: ("gaussian", "constant:1", "copy:0"); vector observations only
    distractors: Tuple[str, ...] = ()
    #: train on these observation dims only (indices after the distractors; image channels for
    #: images); None: all. The minimality check retrains agents on the dims a ticket kept.
    obs_select: Optional[Tuple[int, ...]] = None
    #: torch intra-op threads while training/evaluating (restored after); None leaves torch's setting.
    #: One is fastest for these small networks; run seeds in parallel processes instead.
    num_threads: Optional[int] = 1

    @classmethod
    def continuous_control(cls, **overrides: Any) -> "PPOConfig":
        """CleanRL ``ppo_continuous_action.py``: obs/reward normalisation, 10 epochs, 32 minibatches."""
        base = cls(total_steps=1_000_000, num_envs=8, num_steps=256, lr=3e-4, num_minibatches=32,
                   update_epochs=10, ent_coef=0.0, norm_obs=True, norm_reward=True)
        return replace(base, **overrides)

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        return self.total_steps // self.batch_size

    @property
    def optimizer_steps(self) -> int:
        return self.num_updates * self.update_epochs * self.num_minibatches

    def __post_init__(self) -> None:
        self.validate()  # a bad value fails where the config is made, not when training starts

    def validate(self) -> None:
        for name in ("total_steps", "num_envs", "num_steps", "num_minibatches", "update_epochs", "eval_episodes",
                     "return_window"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"PPOConfig.{name} must be a positive integer, got {v!r}")
        if self.num_threads is not None and (isinstance(self.num_threads, bool) or not isinstance(
                self.num_threads, int) or self.num_threads < 1):
            raise ValueError(f"PPOConfig.num_threads must be a positive integer or None, got {self.num_threads!r}")
        if self.num_evals < 0:
            raise ValueError(f"PPOConfig.num_evals must be >= 0, got {self.num_evals}")
        if self.num_updates < 1:
            raise ValueError(f"PPOConfig.total_steps={self.total_steps} is less than one batch "
                             f"(num_envs * num_steps = {self.batch_size})")
        if self.num_minibatches > self.batch_size:
            raise ValueError(f"PPOConfig.num_minibatches={self.num_minibatches} exceeds the batch {self.batch_size}")
        for name in ("gamma", "gae_lambda"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"PPOConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("lr", "clip_coef", "max_grad_norm"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"PPOConfig.{name} must be positive and finite, got {v}")
        check_distractors(self.distractors, "PPOConfig.distractors")
        if self.obs_select is not None:
            check_select(self.obs_select, where="PPOConfig.obs_select")
        self.network.validate()

    def env_config(self, env_id: str) -> EnvConfig:
        """The envs this config trains and evaluates on."""
        return EnvConfig(env_id, self.env_backend, dict(self.env_kwargs), tuple(self.distractors),
                         None if self.obs_select is None else tuple(self.obs_select))


class RewardScaler:
    """Divide rewards by the running std of each env's discounted return (CleanRL's NormalizeReward)."""

    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0) -> None:
        self.gamma, self.clip = gamma, clip
        self.discounted = np.zeros(num_envs, np.float64)
        self.stats = ObsNormalizer(())  # reused for its running variance only

    def __call__(self, reward: np.ndarray, done: np.ndarray, live: np.ndarray) -> np.ndarray:
        self.discounted = np.where(live, self.discounted * self.gamma + reward, self.discounted)
        if live.any():
            self.stats.update(torch.from_numpy(self.discounted[live]))
        self.discounted[done] = 0.0
        scale = 1.0 / math.sqrt(float(self.stats.var) + 1e-8)
        return np.clip(reward * scale, -self.clip, self.clip).astype(np.float32)


class PPOTrainer:
    """IMP trainer: PPO on one environment id. Prunable layers: ``actor.*`` (critic excluded)."""

    name = "ppo"
    #: matched by fnmatch against masked_modules(model) names: "critic.body.0", "critic.head", ...
    default_prune_exclude: Tuple[str, ...] = ("critic*",)
    #: pruned at a reduced rate by IMP (IMPConfig.output_rate_factor): its init gain is 0.01
    output_layers: Tuple[str, ...] = ("actor.head",)

    def __init__(self, env_id: str, config: Optional[PPOConfig] = None) -> None:
        if config is not None:
            config.validate()
        env = (config or PPOConfig()).env_config(env_id)
        with env.make(1, 0) as probe:
            self.spec = probe.spec
        if config is None:
            config = PPOConfig() if self.spec.discrete else PPOConfig.continuous_control()
            config.validate()
        self.env_id = env_id
        #: how every env of this trainer is made (training, evaluation, and a BC student's data)
        self.env = env
        self.config = config

    # -- Trainer protocol ------------------------------------------------------------------
    def input_names(self) -> Dict[str, List[str]]:
        """The observation's dim (or channel) names, recorded by IMP in the run folder."""
        return self.spec.input_names()

    def build_model(self, seed: int) -> ActorCritic:
        return build_actor_critic(self.spec, seed, self.config.network, norm_obs=self.config.norm_obs)

    def optimizer_steps(self) -> int:
        """Optimizer steps of one training run: the range of ``rewind_step``."""
        return self.config.optimizer_steps

    def check_model(self, model: nn.Module) -> None:
        """A clear error for a model this trainer did not build (or one holding NaN weights)."""
        if not isinstance(model, ActorCritic):
            raise TypeError(f"{self.name}: expected an ActorCritic from build_model, got {type(model).__name__}")
        if (model.obs_norm is not None) != self.config.norm_obs:
            raise ValueError(f"{self.name}: the model {'has' if model.obs_norm is not None else 'lacks'} "
                             f"observation normalisation but the config says norm_obs={self.config.norm_obs}")
        check_finite(model)

    def evaluate(self, model: nn.Module, seed: int) -> float:
        return mean_return(model, self.env, seed, self.config.eval_episodes, self.config.num_threads)

    def train(self, model: nn.Module, seed: int, rewind_step: Optional[int] = None,
              on_progress: Optional[ProgressFn] = None) -> Tuple[TrainResult, Optional[Dict[str, torch.Tensor]]]:
        with torch_threads(self.config.num_threads):
            return self._train(model, seed, rewind_step, on_progress)

    def train_population(self, models: Sequence[nn.Module], seeds: Sequence[int], rewind_step: Optional[int] = None,
                         on_progress: Optional[ProgressFn] = None) -> List[Tuple[TrainResult, Optional[Dict[str, torch.Tensor]]]]:
        """Train ``models`` together, member ``p`` from ``seeds[p]`` (:mod:`.ppo_population`); one
        (result, rewind state) per member, as :meth:`train` returns for one. Image models (conv
        torsos) are not stacked: they train one after another."""
        from .population_net import stackable

        if not stackable(models):
            return [self.train(m, s, rewind_step=rewind_step, on_progress=one_by_one(on_progress, p))
                    for p, (m, s) in enumerate(zip(models, seeds))]
        from .ppo_population import train_ppo_population

        return train_ppo_population(self, models, seeds, rewind_step, on_progress)

    def _train(self, model: nn.Module, seed: int, rewind_step: Optional[int],
               on_progress: Optional[ProgressFn]) -> Tuple[TrainResult, Optional[Dict[str, torch.Tensor]]]:
        cfg = self.config
        check_rewind_step(rewind_step, cfg.optimizer_steps)
        self.check_model(model)
        g = generator(seed)
        env_seed, eval_seed = draw_seed(g), draw_seed(g)
        T, N, U = cfg.num_steps, cfg.num_envs, cfg.num_updates
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, eps=1e-5)
        rewind_state = snapshot(model) if rewind_step == 0 else None
        buf = RolloutBuffer(T, N, self.spec)
        scaler = RewardScaler(N, cfg.gamma) if cfg.norm_reward else None
        recent: deque = deque(maxlen=cfg.return_window)
        evals, evaluate_at = [], eval_points(U, cfg.num_evals)
        stats: Dict[str, float] = {}
        opt_steps, start = 0, time.perf_counter()

        with self.env.make(N, env_seed) as env:
            with torch.no_grad():
                buf.obs[T] = model.preprocess(torch.from_numpy(env.reset()), update_stats=cfg.norm_obs)
                buf.values[T] = model.value(buf.obs[T])
            for update in range(1, U + 1):
                if cfg.anneal_lr:
                    for group in optimizer.param_groups:
                        group["lr"] = cfg.lr * (1.0 - (update - 1) / U)
                self._collect(model, env, buf, g, scaler)
                finished = env.episodes()[0].tolist()
                recent.extend(finished)
                buf.compute_gae(cfg.gamma, cfg.gae_lambda)
                for _ in self._update(model, optimizer, buf, g, stats):
                    opt_steps += 1
                    if opt_steps == rewind_step:
                        enforce_masks(model)
                        rewind_state = snapshot(model)
                if update in evaluate_at:
                    evals.append(self.evaluate(model, eval_seed))
                if on_progress is not None:
                    sps = update * T * N / (time.perf_counter() - start)
                    on_progress({"step": float(update * T * N), "total": float(U * T * N),
                                 "metric": evals[-1] if evals else float("nan"),
                                 "train_return": _mean(recent), "steps_per_s": sps,
                                 **ppo_scalars(stats, optimizer.param_groups[0]["lr"], finished, sps)})
        enforce_masks(model)
        if rewind_step is not None and rewind_state is None:  # target_kl stopped epochs early
            rewind_state = snapshot(model)
        seconds = time.perf_counter() - start
        train_return = _mean(recent)
        metric = evals[-1] if evals else train_return
        extra = dict(stats, train_return=train_return, optimizer_steps=float(opt_steps), seconds=seconds,
                     steps_per_s=U * T * N / seconds)
        return TrainResult(metric=metric, best_metric=max(evals) if evals else train_return,
                           steps=U * T * N, extra=extra, evals=list(evals)), rewind_state

    # -- the two phases of an update ---------------------------------------------------------
    @torch.no_grad()
    def _collect(self, model: ActorCritic, env, buf: RolloutBuffer, g: torch.Generator,
                 scaler: Optional[RewardScaler]) -> None:
        T, norm_obs = buf.num_steps, self.config.norm_obs
        buf.obs[0] = buf.obs[T]
        buf.values[0] = buf.values[T]
        for t in range(T):
            action, logp = model.sample(buf.obs[t], g)
            buf.actions[t] = action
            buf.logp[t] = logp
            tr = env.step(action.numpy())
            done = tr.terminated | tr.truncated
            reward = tr.reward if scaler is None else scaler(tr.reward, done, ~tr.autoreset)
            buf.valid[t] = torch.from_numpy(~tr.autoreset)
            buf.rewards[t] = torch.from_numpy(reward)
            buf.terminated[t] = torch.from_numpy(tr.terminated)
            buf.dones[t] = torch.from_numpy(done)
            buf.obs[t + 1] = model.preprocess(torch.from_numpy(tr.obs), update_stats=norm_obs)
            buf.values[t + 1] = model.value(buf.obs[t + 1])

    def _update(self, model: ActorCritic, optimizer: torch.optim.Optimizer, buf: RolloutBuffer,
                g: torch.Generator, stats: Dict[str, float]):
        """PPO epochs over the rollout; yields after every optimizer step (for rewinding)."""
        cfg = self.config
        obs, actions, logp_old = buf.flat("obs"), buf.flat("actions"), buf.flat("logp")
        adv_all, ret_all = buf.flat("advantages"), buf.flat("returns")
        val_old, valid = buf.flat("values"), buf.flat("valid")
        params = [p for p in model.parameters() if p.requires_grad]
        sums = {"pg_loss": 0.0, "v_loss": 0.0, "entropy": 0.0, "approx_kl": 0.0, "clipfrac": 0.0}
        count = 0
        for _ in range(cfg.update_epochs):
            kl_epoch = 0.0
            for idx in torch.tensor_split(torch.randperm(buf.num_steps * buf.num_envs, generator=g),
                                          cfg.num_minibatches):
                w = valid[idx]
                n = w.sum().clamp(min=1.0)
                logp, entropy = model.log_prob_entropy(obs[idx], actions[idx])
                value = model.value(obs[idx])
                log_ratio = logp - logp_old[idx]
                ratio = log_ratio.exp()
                adv = adv_all[idx]
                if cfg.norm_adv:
                    mean = (adv * w).sum() / n
                    std = torch.sqrt(((adv - mean).square() * w).sum() / (n - 1).clamp(min=1.0))
                    adv = (adv - mean) / (std + 1e-8)
                pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef))
                pg_loss = (pg * w).sum() / n
                v_err = (value - ret_all[idx]).square()
                if cfg.clip_vloss:
                    v_clipped = val_old[idx] + (value - val_old[idx]).clamp(-cfg.clip_coef, cfg.clip_coef)
                    v_err = torch.maximum(v_err, (v_clipped - ret_all[idx]).square())
                v_loss = 0.5 * (v_err * w).sum() / n
                ent = (entropy * w).sum() / n
                loss = pg_loss - cfg.ent_coef * ent + cfg.vf_coef * v_loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                with torch.no_grad():
                    ratio, log_ratio = ratio.detach(), log_ratio.detach()
                    kl = float((((ratio - 1) - log_ratio) * w).sum() / n)
                    clipfrac = float((((ratio - 1).abs() > cfg.clip_coef).float() * w).sum() / n)
                pg_value, v_value = pg_loss.item(), v_loss.item()
                if not (math.isfinite(pg_value) and math.isfinite(v_value)):
                    raise FloatingPointError(f"PPO diverged: policy loss {pg_value}, value loss {v_value} "
                                             f"after {count} optimizer steps of this update")
                sums["pg_loss"] += pg_value
                sums["v_loss"] += v_value
                sums["entropy"] += ent.item()
                sums["approx_kl"] += kl
                sums["clipfrac"] += clipfrac
                count += 1
                kl_epoch = kl
                yield
            if cfg.target_kl is not None and kl_epoch > cfg.target_kl:
                break
        stats.update({k: v / max(count, 1) for k, v in sums.items()})


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


#: PPO's update statistics under CleanRL's tracking names
_CLEANRL_LOSSES = {"pg_loss": "losses/policy_loss", "v_loss": "losses/value_loss", "entropy": "losses/entropy",
                   "approx_kl": "losses/approx_kl", "clipfrac": "losses/clipfrac"}


def ppo_scalars(stats: Dict[str, float], lr: float, episodes: List[float], sps: float) -> Dict[str, float]:
    """One update's tracking scalars as CleanRL's ppo.py names them (the episodic return is the mean
    of the episodes finished in the update; absent when none did)."""
    out = {name: float(stats[k]) for k, name in _CLEANRL_LOSSES.items() if k in stats}
    out["charts/learning_rate"] = float(lr)
    out["charts/SPS"] = float(sps)
    if len(episodes):
        out["charts/episodic_return"] = float(np.mean(episodes))
    return out
