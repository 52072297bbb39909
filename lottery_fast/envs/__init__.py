"""Environments: batched EnvPool / gymnasium makers behind one interface."""
from . import registry  # noqa: F401  (registers lottery_fast/PatrolGrid-v0, MinAtar ids with gymnasium)
from .make import EnvSpec, Transition, VecEnv, known_env_ids, make_vec_env, resolve_backend

__all__ = ["EnvSpec", "Transition", "VecEnv", "known_env_ids", "make_vec_env", "resolve_backend"]
