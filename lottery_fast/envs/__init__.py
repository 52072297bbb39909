"""Environments: batched EnvPool / gymnasium makers behind one interface."""
from . import registry  # noqa: F401  (registers lottery_fast/PatrolGrid-v0, MinAtar ids with gymnasium)
from .make import EnvConfig, EnvSpec, Transition, VecEnv, as_env_config, known_env_ids, make_vec_env, resolve_backend

__all__ = ["EnvConfig", "EnvSpec", "Transition", "VecEnv", "as_env_config", "known_env_ids", "make_vec_env",
           "resolve_backend"]
