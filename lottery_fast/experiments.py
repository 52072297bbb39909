"""Resolved config dicts (the CLI/config-file layout) -> trainers and :class:`IMPConfig`.

Shared by ``lottery-fast imp`` and ``lottery-fast report``, so both build experiments one way.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

from . import configs

PARADIGMS = ("ppo", "bc", "dqn", "digits")

CONDITION_ALIASES = {
    "all": ("mask/weights", "mask/permuted", "permuted/permuted", "random/reinit"),
    "ticket": ("mask/weights",),
}


# -- trainers -----------------------------------------------------------------------------------
def make_trainer(paradigm: str, env_id: Optional[str], section: Dict[str, Any]):
    """The trainer for a paradigm with its config built from the resolved section (validated)."""
    if paradigm == "ppo":
        from .train.ppo import PPOConfig, PPOTrainer

        _need_env(paradigm, env_id)
        base = _ppo_base(env_id)
        return PPOTrainer(env_id, configs.build(PPOConfig, configs.merge(_asdict(base), section), "ppo"))
    if paradigm == "bc":
        from .train.bc import BCConfig, BCTrainer
        from .train.ppo import PPOConfig

        _need_env(paradigm, env_id)
        section = dict(section)
        expert = configs.merge(_asdict(_ppo_base(env_id)), section.pop("expert", {}) or {})
        cfg = configs.build(BCConfig, {**section, "expert": None}, "bc")
        cfg = _replace(cfg, expert=configs.build(PPOConfig, expert, "bc.expert"))
        return BCTrainer(env_id, cfg)
    if paradigm == "dqn":
        from .train.dqn import DQNConfig, DQNTrainer

        _need_env(paradigm, env_id)
        return DQNTrainer(env_id, configs.build(DQNConfig, section, "dqn"))
    if paradigm == "digits":
        from .train.digits import DigitsConfig, DigitsTrainer

        return DigitsTrainer(configs.build(DigitsConfig, section, "digits"))
    raise ValueError(f"unknown paradigm {paradigm!r}; choose from {list(PARADIGMS)} or 'both'")


def _ppo_base(env_id: str):
    """PPO's defaults for the env's action type (continuous control gets CleanRL's continuous preset)."""
    from .envs.make import make_vec_env
    from .train.ppo import PPOConfig

    with make_vec_env(env_id, 1, 0) as probe:
        discrete = probe.spec.discrete
    return PPOConfig() if discrete else PPOConfig.continuous_control()


def _need_env(paradigm: str, env_id: Optional[str]) -> None:
    if not env_id:
        raise ValueError(f"--env is required for paradigm {paradigm!r} (e.g. --env CartPole-v1)")


def _asdict(cfg) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)


def _replace(cfg, **kw):
    return dataclasses.replace(cfg, **kw)


def imp_config(section: Dict[str, Any]):
    from .imp import IMPConfig
    from .prune import PruneConfig

    section = dict(section)
    seeds = section.pop("seeds", 1)
    seeds = list(range(int(seeds))) if isinstance(seeds, int) else [int(s) for s in seeds]
    conditions = section.pop("conditions", "all")
    if isinstance(conditions, str):
        conditions = CONDITION_ALIASES.get(conditions, tuple(c.strip() for c in conditions.split(",") if c.strip()))
    prune = {k: section.pop(k) for k in ("rate", "scope", "layer_rates") if k in section}
    if "layer_rates" in prune:
        prune["layer_rates"] = tuple((str(p), float(r)) for p, r in prune["layer_rates"])
    exclude = section.pop("exclude", None)
    prune_cfg = configs.build(PruneConfig, prune, "imp")
    return configs.build(IMPConfig, {**section, "prune": prune_cfg, "seeds": tuple(seeds),
                                     "conditions": tuple(conditions),
                                     "exclude": None if exclude is None else tuple(exclude)}, "imp")
