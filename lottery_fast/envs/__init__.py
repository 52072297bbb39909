"""Environments: batched EnvPool / gymnasium makers behind one interface."""
from .make import EnvSpec, Transition, VecEnv, known_env_ids, make_vec_env, resolve_backend

__all__ = ["EnvSpec", "Transition", "VecEnv", "known_env_ids", "make_vec_env", "resolve_backend"]
