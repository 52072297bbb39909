"""Environments: batched EnvPool / gymnasium makers behind one interface."""
try:  # registers lottery_fast/PatrolGrid-v0 and the MinAtar ids with gymnasium, when it is installed
    from . import registry  # noqa: F401
except ImportError:  # without gymnasium: EnvPool and the numpy backend still work
    pass
from .make import EnvConfig, EnvSpec, Transition, VecEnv, as_env_config, known_env_ids, make_vec_env, resolve_backend

__all__ = ["EnvConfig", "EnvSpec", "Transition", "VecEnv", "as_env_config", "known_env_ids", "make_vec_env",
           "resolve_backend"]
