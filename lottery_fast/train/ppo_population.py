"""PPO for a population: P members (seeds x IMP conditions) trained in lockstep in one process.

The algorithm is :mod:`lottery_fast.train.ppo`'s, member by member: each member has its own random
stream (from its seed: env seed, eval seed, action noise, minibatch order), its own envs, masks,
Adam state, gradient-norm clip, advantage normalisation, target-KL stop and evaluations. What is
shared is only the work: one batched forward and backward per step for all members
(:class:`~lottery_fast.train.population_net.PopulationActorCritic`), and all members' env steps in
flight together (:class:`~lottery_fast.envs.population.PopulationEnv`). A member's results do not
depend on who else is in its population (a test checks this bitwise), so IMP units stay
independent and resumable. They are not bitwise those of the per-agent trainer: action noise is
drawn per rollout rather than per step, and batched kernels round differently.
"""
from __future__ import annotations

import math
import time
from collections import deque
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..envs.population import PopulationEnv
from .common import check_rewind_step, draw_seed, enforce_masks, eval_points, generator, torch_threads
from .population_net import PopulationActorCritic
from .population_optim import PopulationAdam, clip_grad_norm_
from .ppo import ppo_scalars
from .protocol import ProgressFn, TrainResult, report_member
from .rollout import RolloutBuffer, evaluate_population

Result = Tuple[TrainResult, Optional[Dict[str, torch.Tensor]]]
_STATS = ("pg_loss", "v_loss", "entropy", "approx_kl", "clipfrac")


def _member_major(t: torch.Tensor, P: int) -> torch.Tensor:
    """[T, P*N, ...] rollout rows -> [P, T*N, ...] (each member's rows in time-major order)."""
    T, PN = t.shape[:2]
    return t.reshape(T, P, PN // P, *t.shape[2:]).transpose(0, 1).reshape(P, T * (PN // P), *t.shape[2:])


def train_ppo_population(trainer, models: Sequence[nn.Module], seeds: Sequence[int],
                         rewind_step: Optional[int] = None, on_progress: Optional[ProgressFn] = None) -> List[Result]:
    """Train ``models`` in place, member ``p`` from ``seeds[p]``; one (result, rewind state) per member."""
    with torch_threads(trainer.config.num_threads):
        return _Run(trainer, models, seeds, rewind_step).train(on_progress)


class _Run:
    def __init__(self, trainer, models: Sequence[nn.Module], seeds: Sequence[int], rewind_step: Optional[int]) -> None:
        cfg = trainer.config
        if len(models) != len(seeds) or not models:
            raise ValueError(f"train_population: {len(models)} models for {len(seeds)} seeds")
        check_rewind_step(rewind_step, cfg.optimizer_steps)
        for m in models:
            trainer.check_model(m)
        self.trainer, self.cfg, self.rewind_step = trainer, cfg, rewind_step
        self.P = len(models)
        self.gens = [generator(s) for s in seeds]
        seeds2 = [(draw_seed(g), draw_seed(g)) for g in self.gens]  # (env seed, eval seed), as PPOTrainer
        self.env_seeds = [a for a, _ in seeds2]
        self.eval_seeds = [b for _, b in seeds2]
        self.models = list(models)
        self.pop = PopulationActorCritic(models)
        self.opt = PopulationAdam(self.pop.parameters(), lr=cfg.lr, eps=1e-5)
        self.rewind: List[Optional[Dict[str, torch.Tensor]]] = [None] * self.P
        if rewind_step == 0:
            self.rewind = [self.pop.member_state(p) for p in range(self.P)]
        self.opt_steps = [0] * self.P

    def train(self, on_progress: Optional[ProgressFn]) -> List[Result]:
        cfg, P, pop = self.cfg, self.P, self.pop
        T, N, U = cfg.num_steps, cfg.num_envs, cfg.num_updates
        spec = self.trainer.spec
        buf = RolloutBuffer(T, P * N, spec)
        scalers = None
        if cfg.norm_reward:
            from .ppo import RewardScaler

            scalers = [RewardScaler(N, cfg.gamma) for _ in range(P)]
        recent = [deque(maxlen=cfg.return_window) for _ in range(P)]
        evals: List[List[float]] = [[] for _ in range(P)]
        evaluate_at = eval_points(U, cfg.num_evals)
        stats: List[Dict[str, float]] = [{} for _ in range(P)]
        start = time.perf_counter()
        with PopulationEnv(self.trainer.env, N, self.env_seeds) as env:
            with torch.no_grad():
                obs = pop.preprocess(torch.from_numpy(env.reset()), update_stats=cfg.norm_obs)
                buf.obs[T] = obs.reshape(P * N, *obs.shape[2:])
                buf.values[T] = pop.value(obs).reshape(P * N)
            for update in range(1, U + 1):
                if cfg.anneal_lr:
                    self.opt.lr = cfg.lr * (1.0 - (update - 1) / U)
                self._collect(env, buf, scalers)
                finished = [returns.tolist() for returns, _ in env.episodes()]
                for p, returns in enumerate(finished):
                    recent[p].extend(returns)
                buf.compute_gae(cfg.gamma, cfg.gae_lambda)
                self._update(buf, stats)
                if update in evaluate_at:
                    for p, r in enumerate(evaluate_population(pop, self.trainer.env, self.eval_seeds,
                                                              cfg.eval_episodes)):
                        evals[p].append(float(r))
                if on_progress is not None:
                    member_sps = update * T * N / (time.perf_counter() - start)
                    for p in range(P):
                        report_member(on_progress, p, update * T * N,
                                      ppo_scalars(stats[p], self.opt.lr, finished[p], member_sps))
                    on_progress({"step": float(update * T * N), "total": float(U * T * N),
                                 "metric": float(np.mean([e[-1] for e in evals])) if evals[0] else float("nan"),
                                 "train_return": float(np.mean([_mean(r) for r in recent])),
                                 "steps_per_s": P * update * T * N / (time.perf_counter() - start),
                                 "members": float(P)})
        seconds = time.perf_counter() - start
        results: List[Result] = []
        for p, model in enumerate(self.models):
            pop.write_member(p)
            enforce_masks(model)
            rewind = self.rewind[p]
            if self.rewind_step is not None and rewind is None:  # target_kl stopped epochs early
                rewind = pop.member_state(p)
            train_return = _mean(recent[p])
            metric = evals[p][-1] if evals[p] else train_return
            # the population's wall time, shared out evenly among its members
            share = seconds / P
            extra = dict(stats[p], train_return=train_return, optimizer_steps=float(self.opt_steps[p]),
                         seconds=share, steps_per_s=U * T * N / share, population_size=float(P))
            results.append((TrainResult(metric=metric, best_metric=max(evals[p]) if evals[p] else train_return,
                                        steps=U * T * N, extra=extra, evals=list(evals[p])), rewind))
        return results

    # -- the two phases of an update ---------------------------------------------------------
    @torch.no_grad()
    def _collect(self, env: PopulationEnv, buf: RolloutBuffer, scalers) -> None:
        cfg, P, pop, spec = self.cfg, self.P, self.pop, self.trainer.spec
        T, N = cfg.num_steps, cfg.num_envs
        buf.obs[0] = buf.obs[T]
        buf.values[0] = buf.values[T]
        # each member's action noise for the whole rollout, from its own stream
        shape = (T, N, spec.n_actions) if spec.discrete else (T, N, *spec.action_shape)
        draw = torch.rand if spec.discrete else torch.randn
        noise = torch.stack([draw(shape, generator=g) for g in self.gens], dim=1)  # [T, P, N, A]
        obs_t = buf.obs.view(T + 1, P, N, *buf.obs.shape[2:])
        for t in range(T):
            action, logp = pop.sample(obs_t[t], noise[t])
            buf.actions[t] = action.reshape(P * N, *action.shape[2:])
            buf.logp[t] = logp.reshape(P * N)
            tr = env.step(action.numpy())
            done = tr.terminated | tr.truncated
            reward = tr.reward
            if scalers is not None:
                reward = np.stack([s(r, d, ~a) for s, r, d, a in zip(scalers, tr.reward, done, tr.autoreset)])
            buf.valid[t] = torch.from_numpy(~tr.autoreset).reshape(P * N)
            buf.rewards[t] = torch.from_numpy(reward).reshape(P * N)
            buf.terminated[t] = torch.from_numpy(tr.terminated).reshape(P * N)
            buf.dones[t] = torch.from_numpy(done).reshape(P * N)
            nxt = pop.preprocess(torch.from_numpy(tr.obs), update_stats=cfg.norm_obs)
            obs_t[t + 1] = nxt
            buf.values[t + 1] = pop.value(nxt).reshape(P * N)

    def _update(self, buf: RolloutBuffer, stats: List[Dict[str, float]]) -> None:
        cfg, P, pop = self.cfg, self.P, self.pop
        n_rows = cfg.num_steps * cfg.num_envs
        T = cfg.num_steps

        def flat(name: str) -> torch.Tensor:
            return _member_major(getattr(buf, name)[:T], P)

        obs, actions, logp_old = flat("obs"), flat("actions"), flat("logp")
        adv_all, ret_all, val_old, valid = flat("advantages"), flat("returns"), flat("values"), flat("valid")
        params = list(pop.parameters())
        sums = torch.zeros(P, len(_STATS), dtype=torch.float64)
        count = torch.zeros(P, dtype=torch.float64)
        active = torch.ones(P, dtype=torch.bool)
        rows = torch.arange(P).unsqueeze(1)
        identity = torch.arange(n_rows)
        for _ in range(cfg.update_epochs):
            if not bool(active.any()):
                break
            # a stopped member draws no permutation, as it would not alone
            perm = torch.stack([torch.randperm(n_rows, generator=g) if a else identity
                                for g, a in zip(self.gens, active.tolist())])
            kl_epoch = torch.zeros(P, dtype=torch.float64)
            for idx in torch.tensor_split(perm, cfg.num_minibatches, dim=1):
                w = valid[rows, idx]
                n = w.sum(1).clamp(min=1.0)
                mb_obs = obs[rows, idx]
                logp, entropy = pop.log_prob_entropy(mb_obs, actions[rows, idx])
                value = pop.value(mb_obs)
                log_ratio = logp - logp_old[rows, idx]
                ratio = log_ratio.exp()
                adv = adv_all[rows, idx]
                if cfg.norm_adv:
                    mean = (adv * w).sum(1, keepdim=True) / n.unsqueeze(1)
                    std = torch.sqrt(((adv - mean).square() * w).sum(1, keepdim=True)
                                     / (n - 1).clamp(min=1.0).unsqueeze(1))
                    adv = (adv - mean) / (std + 1e-8)
                pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef))
                pg_loss = (pg * w).sum(1) / n
                ret = ret_all[rows, idx]
                v_err = (value - ret).square()
                if cfg.clip_vloss:
                    v0 = val_old[rows, idx]
                    v_clipped = v0 + (value - v0).clamp(-cfg.clip_coef, cfg.clip_coef)
                    v_err = torch.maximum(v_err, (v_clipped - ret).square())
                v_loss = 0.5 * (v_err * w).sum(1) / n
                ent = (entropy * w).sum(1) / n
                loss = pg_loss - cfg.ent_coef * ent + cfg.vf_coef * v_loss  # [P]
                self.opt.zero_grad()
                # members' parameters are disjoint: the sum's gradient is each member's own
                (loss * active.to(loss.dtype)).sum().backward()
                clip_grad_norm_(params, cfg.max_grad_norm)
                self.opt.step(active)
                with torch.no_grad():
                    ratio, log_ratio = ratio.detach(), log_ratio.detach()
                    kl = (((ratio - 1) - log_ratio) * w).sum(1) / n
                    clipfrac = (((ratio - 1).abs() > cfg.clip_coef).to(w.dtype) * w).sum(1) / n
                    row = torch.stack([pg_loss.detach(), v_loss.detach(), ent.detach(), kl, clipfrac], 1).double()
                bad = active & ~torch.isfinite(row[:, :2]).all(1)
                if bool(bad.any()):
                    members = bad.nonzero().flatten().tolist()
                    raise FloatingPointError(f"PPO diverged for population members {members}: policy loss "
                                             f"{row[bad, 0].tolist()}, value loss {row[bad, 1].tolist()}")
                sums += row * active.unsqueeze(1)
                count += active
                kl_epoch = torch.where(active, row[:, 3], kl_epoch)
                self._count_steps(active)
            if cfg.target_kl is not None:
                active &= ~(kl_epoch > cfg.target_kl)
        means = (sums / count.clamp(min=1.0).unsqueeze(1)).tolist()
        for p in range(P):
            stats[p].update(dict(zip(_STATS, means[p])))

    def _count_steps(self, active: torch.Tensor) -> None:
        for p in active.nonzero().flatten().tolist():
            self.opt_steps[p] += 1
            if self.opt_steps[p] == self.rewind_step:
                self.rewind[p] = self.pop.member_state(p)


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else float("nan")
