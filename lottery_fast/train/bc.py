"""Behavioural cloning (policy distillation) from a PPO expert, as an IMP :class:`Trainer`.

One trainer holds one expert: trained with :class:`PPOTrainer` on first use (or loaded from
``BCConfig.expert_path``; a path that does not exist yet is written after training, atomically,
so a resumed IMP run loads the very same expert). The expert then plays ``dataset_steps`` env
steps (sampling its own actions, for wider state coverage, unless ``expert_stochastic=False``);
the states it acted in (autoreset rows excluded) and its action distributions there form a fixed
dataset, also built once per trainer.

The student has the expert's architecture (an :class:`ActorCritic`; only its actor is trained,
so ``critic*`` is excluded from pruning by default). It is fit by minibatch Adam on
KL(expert || student): over the action probabilities for discrete actions, and between the two
diagonal Gaussians (mean and ``log_std``) for continuous ones. With observation normalisation the
student's ``obs_norm`` statistics are set to the expert's at the start of every run (they are not
learned by cloning). Optional DAgger: ``dagger_rounds`` times, evenly through training, the
student plays ``dagger_steps`` env steps greedily and the expert labels the states it visited,
which join this run's dataset (pure student states, no expert/student mixing).

``metric`` is the student's mean return over ``eval_episodes`` deterministic episodes at the end;
``best_metric`` the best of ``num_evals`` evaluations spread evenly over training.
``rewind_step`` counts optimizer steps (``steps`` in total).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .._atomic import atomic_write, exclusive
from .common import (check_finite, check_rewind_step, draw_seed, enforce_masks, eval_points, generator,
                     snapshot, torch_threads)
from .networks import ActorCritic
from .ppo import PPOConfig, PPOTrainer
from .protocol import ProgressFn, TrainResult, one_by_one, report_member
from .rollout import collect_states, mean_return

_EXPERT_FORMAT = "lottery_fast.bc_expert/1"


@dataclass(frozen=True)
class BCConfig:
    #: how to train the expert (and the student's architecture); None: PPO's preset for the action type
    expert: Optional[PPOConfig] = None
    expert_seed: int = 0
    #: load the expert from here if the file exists, else train it and save it here
    expert_path: Optional[str] = None
    data_seed: int = 0
    num_envs: int = 16
    dataset_steps: int = 20_000  # env steps (all envs) of expert play in the dataset
    expert_stochastic: bool = True
    dagger_rounds: int = 0
    dagger_steps: int = 5_000
    steps: int = 2_000  # optimizer steps per training run
    batch_size: int = 256
    lr: float = 1e-3
    max_grad_norm: Optional[float] = None
    eval_episodes: int = 10
    num_evals: int = 5
    num_threads: Optional[int] = 1

    def __post_init__(self) -> None:
        self.validate()  # a bad value fails where the config is made, not when training starts

    def validate(self) -> None:
        for name in ("num_envs", "dataset_steps", "steps", "batch_size", "eval_episodes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"BCConfig.{name} must be a positive integer, got {v!r}")
        if self.dataset_steps < self.num_envs:
            raise ValueError(f"BCConfig.dataset_steps={self.dataset_steps} is less than one step of "
                             f"{self.num_envs} envs")
        for name in ("dagger_rounds", "num_evals", "expert_seed", "data_seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"BCConfig.{name} must be a non-negative integer, got {v!r}")
        if self.dagger_rounds and self.dagger_steps < self.num_envs:
            raise ValueError(f"BCConfig.dagger_steps={self.dagger_steps} is less than one step of "
                             f"{self.num_envs} envs")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"BCConfig.lr must be positive and finite, got {self.lr}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"BCConfig.max_grad_norm must be positive or None, got {self.max_grad_norm}")
        if self.expert is not None:
            self.expert.validate()


class BCTrainer:
    """IMP trainer: clone a (cached) PPO expert into a student of the same architecture."""

    name = "bc"
    default_prune_exclude: Tuple[str, ...] = ("critic*",)
    #: pruned at a reduced rate by IMP (IMPConfig.output_rate_factor): its init gain is 0.01
    output_layers: Tuple[str, ...] = ("actor.head",)

    def __init__(self, env_id: str, config: BCConfig = BCConfig()) -> None:
        config.validate()
        self._ppo = PPOTrainer(env_id, config.expert)  # validates the env id before anything runs
        self.env_id = env_id
        self.env = self._ppo.env  # the expert's envs (distractors included) are the student's too
        self.spec = self._ppo.spec
        self.config = config
        self._expert: Optional[ActorCritic] = None
        self._expert_return = float("nan")
        self._dataset: Optional[Tuple[torch.Tensor, Dict[str, torch.Tensor]]] = None

    @property
    def expert_config(self) -> PPOConfig:
        return self._ppo.config

    # -- the expert -------------------------------------------------------------------------
    def expert(self, on_progress: Optional[ProgressFn] = None) -> ActorCritic:
        """The expert, trained or loaded on first call and cached on the trainer."""
        if self._expert is None:
            path = self.config.expert_path
            if path is None:
                self._expert = self._train_expert(on_progress)
            else:
                # processes running other seeds of the same IMP run share the file: one trains it
                with exclusive(path):
                    if os.path.exists(path):
                        self._expert = self.load_expert(path)
                    else:
                        self._expert = self._train_expert(on_progress)
                        self.save_expert(path)
            self._expert.requires_grad_(False)
            self._expert_return = self._ppo.evaluate(self._expert, self.config.expert_seed)
        return self._expert

    def _train_expert(self, on_progress: Optional[ProgressFn]) -> ActorCritic:
        expert = self._ppo.build_model(self.config.expert_seed)
        self._ppo.train(expert, self.config.expert_seed, on_progress=on_progress)
        return expert

    @property
    def expert_return(self) -> float:
        """The expert's deterministic evaluation return (NaN before the expert exists)."""
        return self._expert_return

    def save_expert(self, path: Union[str, os.PathLike]) -> Path:
        """Write the expert's ``state_dict`` (with the env id) to ``path`` atomically."""
        payload = {"format": _EXPERT_FORMAT, "env_id": self.env_id,
                   "state_dict": snapshot(self.expert())}
        return atomic_write(path, lambda tmp: torch.save(payload, tmp))

    def load_expert(self, path: Union[str, os.PathLike]) -> ActorCritic:
        """An expert from ``path``: a file from :meth:`save_expert` or a bare ``state_dict``."""
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated or foreign file: pickle/zip errors of many kinds
            raise ValueError(f"cannot read expert checkpoint {str(path)!r}: {e}") from e
        if isinstance(obj, dict) and obj.get("format") == _EXPERT_FORMAT:
            if obj.get("env_id") != self.env_id:
                raise ValueError(f"expert checkpoint {str(path)!r} is for {obj.get('env_id')!r}, "
                                 f"not {self.env_id!r}")
            obj = obj.get("state_dict")
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise ValueError(f"expert checkpoint {str(path)!r} does not hold a state_dict of tensors")
        model = self._ppo.build_model(self.config.expert_seed)
        try:
            model.load_state_dict(obj)
        except RuntimeError as e:
            raise ValueError(f"expert checkpoint {str(path)!r} does not fit the network for "
                             f"{self.env_id}: {e}") from e
        check_finite(model, f"expert checkpoint {str(path)!r}")
        return model

    # -- data -------------------------------------------------------------------------------
    def _label(self, obs: torch.Tensor) -> Dict[str, torch.Tensor]:
        expert = self.expert()
        with torch.no_grad():
            out = expert(obs)
        if self.spec.discrete:
            return {"logp": torch.log_softmax(out, -1)}
        return {"mean": out, "log_std": expert.actor.log_std.detach().expand_as(out).clone()}

    def dataset(self) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Raw observations of the expert's play and its action distributions there (cached)."""
        if self._dataset is None:
            cfg = self.config
            expert = self.expert()
            with torch_threads(cfg.num_threads):
                g = generator(cfg.data_seed)
                obs, _ = collect_states(expert, self.env, draw_seed(g), cfg.num_envs,
                                        cfg.dataset_steps // cfg.num_envs,
                                        generator=g if cfg.expert_stochastic else None)
                self._dataset = (obs, self._label(obs))
        return self._dataset

    # -- Trainer protocol -------------------------------------------------------------------
    def input_names(self) -> Dict[str, List[str]]:
        """The observation's dim (or channel) names, recorded by IMP in the run folder."""
        return self.spec.input_names()

    def build_model(self, seed: int) -> ActorCritic:
        return self._ppo.build_model(seed)

    def optimizer_steps(self) -> int:
        """Optimizer steps of one training run: the range of ``rewind_step``."""
        return self.config.steps

    def evaluate(self, model: nn.Module, seed: int) -> float:
        return mean_return(model, self.env, seed, self.config.eval_episodes, self.config.num_threads)

    def train(self, model: nn.Module, seed: int, rewind_step: Optional[int] = None,
              on_progress: Optional[ProgressFn] = None) -> Tuple[TrainResult, Optional[Dict[str, torch.Tensor]]]:
        check_rewind_step(rewind_step, self.config.steps)
        self._ppo.check_model(model)
        obs, targets = self.dataset()
        with torch_threads(self.config.num_threads):
            return self._train(model, seed, rewind_step, on_progress, obs, targets)

    def _train(self, model: ActorCritic, seed: int, rewind_step: Optional[int], on_progress: Optional[ProgressFn],
               obs: torch.Tensor, targets: Dict[str, torch.Tensor]):
        cfg = self.config
        g = generator(seed)
        eval_seed = draw_seed(g)
        expert = self.expert()
        if expert.obs_norm is not None:
            model.obs_norm.load_state_dict(expert.obs_norm.state_dict())
        x = self._inputs(model, obs)
        rewind_state = snapshot(model) if rewind_step == 0 else None
        optimizer = torch.optim.Adam(model.actor.parameters(), lr=cfg.lr)
        evaluate_at = eval_points(cfg.steps, cfg.num_evals)
        dagger_at = eval_points(cfg.steps, cfg.dagger_rounds + 1) - {cfg.steps}
        evals, losses, order, pos = [], [], torch.empty(0, dtype=torch.int64), 0
        track_every = _track_every(cfg.steps)
        start = time.perf_counter()
        for step in range(1, cfg.steps + 1):
            if pos + cfg.batch_size > len(order):  # epoch-style sampling without replacement
                order, pos = torch.randperm(x.shape[0], generator=g), 0
            idx = order[pos:pos + cfg.batch_size]
            pos += cfg.batch_size
            loss = self._loss(model, x[idx], {k: v[idx] for k, v in targets.items()})
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(model.actor.parameters(), cfg.max_grad_norm)
            optimizer.step()
            losses.append(loss.item())
            if not math.isfinite(losses[-1]):
                raise FloatingPointError(f"behavioural cloning diverged: loss {losses[-1]} at step {step}")
            if step == rewind_step:
                enforce_masks(model)
                rewind_state = snapshot(model)
            if step in dagger_at:
                new_obs, _ = collect_states(model, self.env, draw_seed(g), cfg.num_envs,
                                            max(1, cfg.dagger_steps // cfg.num_envs))
                new_targets = self._label(new_obs)
                x = torch.cat([x, self._inputs(model, new_obs)])
                targets = {k: torch.cat([targets[k], new_targets[k]]) for k in targets}
                pos = len(order)  # start a fresh permutation over the grown dataset
            if step in evaluate_at:
                evals.append(self.evaluate(model, eval_seed))
            if on_progress is not None:
                sps = step / (time.perf_counter() - start)
                tracked = (_bc_scalars(losses[-1], sps, evals[-1] if step in evaluate_at else None)
                           if step % track_every == 0 or step in evaluate_at else {})
                on_progress({"step": float(step), "total": float(cfg.steps),
                             "metric": evals[-1] if evals else float("nan"), "loss": losses[-1],
                             "steps_per_s": sps, **tracked})
        enforce_masks(model)
        seconds = time.perf_counter() - start
        tail = losses[-max(1, len(losses) // 10):]
        final = evals[-1] if evals else self.evaluate(model, eval_seed)
        extra = {"loss": sum(tail) / len(tail), "expert_return": self._expert_return,
                 "dataset_size": float(x.shape[0]), "seconds": seconds}
        return TrainResult(metric=final, best_metric=max(evals) if evals else final, steps=cfg.steps,
                           extra=extra, evals=list(evals)), rewind_state

    def train_population(self, models: Sequence[nn.Module], seeds: Sequence[int], rewind_step: Optional[int] = None,
                         on_progress: Optional[ProgressFn] = None) -> List[Tuple[TrainResult, Optional[Dict[str, torch.Tensor]]]]:
        """Train students together against the shared expert data, member ``p`` from ``seeds[p]``
        (each with its own minibatch order, Adam state and evaluations); one (result, rewind state)
        per member. Image students, and runs with DAgger (whose data differ per member), train one
        after another."""
        from .population_net import stackable

        if self.config.dagger_rounds or not stackable(models):
            return [self.train(m, s, rewind_step=rewind_step, on_progress=one_by_one(on_progress, p))
                    for p, (m, s) in enumerate(zip(models, seeds))]
        check_rewind_step(rewind_step, self.config.steps)
        for m in models:
            self._ppo.check_model(m)
        obs, targets = self.dataset()
        with torch_threads(self.config.num_threads):
            return self._train_population(list(models), list(seeds), rewind_step, on_progress, obs, targets)

    def _train_population(self, models: List[ActorCritic], seeds: List[int], rewind_step: Optional[int],
                          on_progress: Optional[ProgressFn], obs: torch.Tensor, targets: Dict[str, torch.Tensor]):
        from .population_net import PopulationActorCritic
        from .population_optim import PopulationAdam, clip_grad_norm_
        from .rollout import evaluate_population

        cfg, P = self.config, len(models)
        gens = [generator(s) for s in seeds]
        eval_seeds = [draw_seed(g) for g in gens]
        expert = self.expert()
        if expert.obs_norm is not None:
            for m in models:
                m.obs_norm.load_state_dict(expert.obs_norm.state_dict())
        x = self._inputs(models[0], obs)  # every student normalises with the expert's statistics
        pop = PopulationActorCritic(models)
        rewinds: List[Optional[Dict[str, torch.Tensor]]] = [pop.member_state(p) if rewind_step == 0 else None
                                                            for p in range(P)]
        params = pop.actor_parameters()
        optimizer = PopulationAdam(params, lr=cfg.lr)
        evaluate_at = eval_points(cfg.steps, cfg.num_evals)
        evals: List[List[float]] = [[] for _ in range(P)]
        losses: List[torch.Tensor] = []
        rows = torch.arange(P).unsqueeze(1)
        order, pos = torch.empty(P, 0, dtype=torch.int64), 0
        track_every = _track_every(cfg.steps)
        start = time.perf_counter()
        for step in range(1, cfg.steps + 1):
            if pos + cfg.batch_size > order.shape[1]:  # the members' datasets have one size: epochs align
                order, pos = torch.stack([torch.randperm(x.shape[0], generator=g) for g in gens]), 0
            idx = order[:, pos:pos + cfg.batch_size]
            pos += cfg.batch_size
            loss = self._loss_population(pop, x[idx], {k: v[idx] for k, v in targets.items()})  # [P]
            optimizer.zero_grad()
            loss.sum().backward()
            if cfg.max_grad_norm is not None:
                clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            losses.append(loss.detach())
            if not bool(torch.isfinite(losses[-1]).all()):
                bad = (~torch.isfinite(losses[-1])).nonzero().flatten().tolist()
                raise FloatingPointError(f"behavioural cloning diverged for population members {bad} at step {step}")
            if step == rewind_step:
                rewinds = [pop.member_state(p) for p in range(P)]
            if step in evaluate_at:
                for p, r in enumerate(evaluate_population(pop, self.env, eval_seeds, cfg.eval_episodes)):
                    evals[p].append(float(r))
            if on_progress is not None:
                if step % track_every == 0 or step in evaluate_at:
                    member_loss, sps = losses[-1].tolist(), step / (time.perf_counter() - start)
                    for p in range(P):
                        report_member(on_progress, p, step, _bc_scalars(member_loss[p], sps, evals[p][-1]
                                                                        if step in evaluate_at else None))
                on_progress({"step": float(step), "total": float(cfg.steps),
                             "metric": sum(e[-1] for e in evals) / P if evals[0] else float("nan"),
                             "loss": float(losses[-1].mean()),
                             "steps_per_s": P * step / (time.perf_counter() - start), "members": float(P)})
        seconds = time.perf_counter() - start
        tail = torch.stack(losses[-max(1, len(losses) // 10):]).tolist()  # [steps, P]
        final_evals = None if evals[0] else evaluate_population(pop, self.env, eval_seeds, cfg.eval_episodes)
        results = []
        for p, model in enumerate(models):
            pop.write_member(p)
            enforce_masks(model)
            final = evals[p][-1] if evals[p] else float(final_evals[p])
            member_tail = [row[p] for row in tail]
            extra = {"loss": sum(member_tail) / len(member_tail), "expert_return": self._expert_return,
                     "dataset_size": float(x.shape[0]), "seconds": seconds / P, "population_size": float(P)}
            results.append((TrainResult(metric=final, best_metric=max(evals[p]) if evals[p] else final,
                                        steps=cfg.steps, extra=extra, evals=list(evals[p])), rewinds[p]))
        return results

    def _loss_population(self, pop, x: torch.Tensor, target: Dict[str, torch.Tensor]) -> torch.Tensor:
        """:meth:`_loss` per member: x and targets are [P, batch, ...]; returns [P]."""
        out = pop.actor(x)
        if self.spec.discrete:
            p_e = target["logp"].exp()
            return (p_e * (target["logp"] - torch.log_softmax(out, -1))).sum(-1).mean(-1)
        log_std = pop.log_std.unsqueeze(1).expand_as(out)
        return _gaussian_kl(target["mean"], target["log_std"], out, log_std).mean(-1)

    @staticmethod
    def _inputs(model: ActorCritic, obs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model.preprocess(obs)

    def _loss(self, model: ActorCritic, x: torch.Tensor, target: Dict[str, torch.Tensor]) -> torch.Tensor:
        out = model.actor(x)
        if self.spec.discrete:
            p_e = target["logp"].exp()
            return (p_e * (target["logp"] - torch.log_softmax(out, -1))).sum(-1).mean()
        log_std = model.actor.log_std.expand_as(out)
        return _gaussian_kl(target["mean"], target["log_std"], out, log_std).mean()


def _gaussian_kl(mean_e: torch.Tensor, log_std_e: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """KL(expert || student) of diagonal Gaussians, summed over action dims."""
    var_ratio = torch.exp(2 * (log_std_e - log_std))
    mean_term = (mean_e - mean).square() * torch.exp(-2 * log_std)
    return (0.5 * (var_ratio + mean_term - 1) - (log_std_e - log_std)).sum(-1)


def _track_every(steps: int) -> int:
    """Optimizer steps between tracking scalars: about 200 points per training curve."""
    return max(1, steps // 200)


def _bc_scalars(loss: float, sps: float, eval_return: Optional[float]) -> Dict[str, float]:
    """Tracking scalars of a BC step, named as CleanRL would (the eval return only at evaluations)."""
    out = {"losses/bc_loss": float(loss), "charts/SPS": float(sps)}
    if eval_return is not None:
        out["charts/eval_return"] = float(eval_return)
    return out
