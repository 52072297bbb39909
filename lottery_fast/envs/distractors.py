"""Distractor inputs: extra observation dimensions a task does not need, with names for every dim.

The paper's third claim is that IMP's input-layer mask drops whole input dimensions the task does
not need. Adding known-useless inputs (noise, constants, copies of real dims) makes that testable:
after pruning, the distractors' columns should be gone before the dims that carry the state.

A distractor is written as a short spec string, shared with the gridworld's extra channels:

=====================  =============================================================
``"gaussian[:std]"``   independent N(0, std^2) noise at every step (std defaults to 1)
``"uniform[:lo:hi]"``  independent U[lo, hi) noise at every step (defaults 0 and 1)
``"constant:v"``       the constant v
``"copy:src"``         a copy of a real dim, by index or by name (``"copy:pole angle"``)
=====================  =============================================================

:class:`DistractorAdder` appends distractors to batched observations ``[N, d] -> [N, d + k]``
(for vector envs); :class:`DistractorObservation` and :class:`DistractorVectorObservation` are
the gymnasium wrappers around it. :data:`OBS_DIM_NAMES` names the dims of the classic-control
tasks, which the input-mask analysis uses to label its tables and figures.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import gymnasium as gym
import numpy as np

#: Observation dims of the classic-control tasks (gymnasium and EnvPool use the same order).
OBS_DIM_NAMES: Dict[str, Tuple[str, ...]] = {
    "CartPole-v1": ("cart position", "cart velocity", "pole angle", "pole angular velocity"),
    "Acrobot-v1": ("cos(theta1)", "sin(theta1)", "cos(theta2)", "sin(theta2)",
                   "theta1 angular velocity", "theta2 angular velocity"),
    "MountainCar-v0": ("car position", "car velocity"),
    "Pendulum-v1": ("cos(theta)", "sin(theta)", "angular velocity"),
}

KINDS = ("gaussian", "uniform", "constant", "copy")
SpecLike = Union[str, "DistractorSpec"]


def distractor_seed(env_seed: int) -> List[int]:
    """Seed of the distractor noise of an env seeded ``env_seed``: derived from it, yet not the env's own stream."""
    return [int(env_seed), _STREAM_TAG]


def obs_dim_names(env_id: str) -> Tuple[str, ...]:
    """The named observation dims of ``env_id`` (a key of :data:`OBS_DIM_NAMES`)."""
    try:
        return OBS_DIM_NAMES[env_id]
    except KeyError:
        raise KeyError(f"no observation dim names for env id {env_id!r}; known: {sorted(OBS_DIM_NAMES)}") from None


@dataclass(frozen=True)
class DistractorSpec:
    """One distractor input. ``params``: (std,) for gaussian, (lo, hi) for uniform, (v,) for constant."""

    kind: str
    params: Tuple[float, ...] = ()
    source: Union[int, str, None] = None  # copy only: index or name of the copied dim

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown distractor kind {self.kind!r}; expected one of {KINDS}")
        p = self.params
        if not all(np.isfinite(v) for v in p):
            raise ValueError(f"distractor {self.kind!r}: parameters must be finite, got {p}")
        if self.kind == "gaussian" and not (len(p) == 1 and p[0] >= 0):
            raise ValueError(f"gaussian distractor needs one std >= 0, got {p}")
        if self.kind == "uniform" and not (len(p) == 2 and p[0] < p[1]):
            raise ValueError(f"uniform distractor needs lo < hi, got {p}")
        if self.kind == "constant" and len(p) != 1:
            raise ValueError(f"constant distractor needs one value, got {p}")
        if self.kind == "copy" and (self.source is None or p):
            raise ValueError("copy distractor needs a source dim (index or name) and no parameters")

    @property
    def low(self) -> float:
        """Lower bound of the values (copies: -inf here; :meth:`DistractorAdder.bounds` uses the source's)."""
        return self.params[0] if self.kind in ("uniform", "constant") else -np.inf

    @property
    def high(self) -> float:
        return self.params[-1] if self.kind in ("uniform", "constant") else np.inf


def parse_distractor(spec: SpecLike) -> DistractorSpec:
    """Parse a spec string (see the module docstring) or pass a :class:`DistractorSpec` through."""
    if isinstance(spec, DistractorSpec):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"distractor spec must be a string or DistractorSpec, got {type(spec).__name__}")
    kind, _, rest = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind == "copy":
        src = rest.strip()
        if not src:
            raise ValueError(f"distractor spec {spec!r}: copy needs a source, e.g. 'copy:0' or 'copy:pole angle'")
        return DistractorSpec("copy", (), int(src) if src.lstrip("-").isdigit() else src)
    try:
        values = tuple(float(v) for v in rest.split(":")) if rest.strip() else ()
    except ValueError:
        raise ValueError(f"distractor spec {spec!r}: parameters must be numbers") from None
    defaults = {"gaussian": (1.0,), "uniform": (0.0, 1.0)}
    if kind not in KINDS:
        raise ValueError(f"distractor spec {spec!r}: unknown kind {kind!r}; expected one of {KINDS}")
    return DistractorSpec(kind, values or defaults.get(kind, ()))


def resolve_source(spec: DistractorSpec, base_names: Sequence[str]) -> int:
    """Index into ``base_names`` of the dim a copy distractor copies."""
    src = spec.source
    if isinstance(src, str):
        if src not in base_names:
            raise ValueError(f"copy distractor: no dim named {src!r}; dims are {list(base_names)}")
        return list(base_names).index(src)
    if src is None or not -len(base_names) <= src < len(base_names):
        raise ValueError(f"copy distractor: source index {src} out of range for {len(base_names)} dims")
    return int(src) % len(base_names)


def distractor_names(specs: Sequence[SpecLike], base_names: Sequence[str]) -> List[str]:
    """Readable, unique names of the distractors, e.g. 'gaussian noise 0', 'constant 1', 'copy of enemy'."""
    counts: Dict[str, int] = {}
    names = []
    for s in map(parse_distractor, specs):
        if s.kind == "copy":
            stem = f"copy of {base_names[resolve_source(s, base_names)]}"
        elif s.kind == "constant":
            stem = f"constant {s.params[0]:g}"
        else:
            stem = f"{s.kind} noise"
        n = counts.get(stem, 0)
        counts[stem] = n + 1
        # noise is always numbered (there are usually several); copies and constants only when repeated
        names.append(f"{stem} {n}" if s.kind in ("gaussian", "uniform") else (stem if n == 0 else f"{stem} ({n + 1})"))
    clash = set(names) & set(base_names)
    if clash:
        raise ValueError(f"distractor names {sorted(clash)} clash with the observation's own dim names")
    return names


class DistractorAdder:
    """Append k distractor dims to observations: ``[d] -> [d + k]`` or ``[N, d] -> [N, d + k]``.

    Noise comes from one seeded ``numpy.random.Generator`` (all rows of a batch in one draw), so a
    run is reproducible from ``seed``; call :meth:`seed` to restart the stream.
    """

    def __init__(self, specs: Sequence[SpecLike], base_names: Sequence[str], seed: Optional[int] = None) -> None:
        self.specs: Tuple[DistractorSpec, ...] = tuple(parse_distractor(s) for s in specs)
        self.base_names: Tuple[str, ...] = tuple(base_names)
        if len(set(self.base_names)) != len(self.base_names):
            raise ValueError(f"observation dim names must be unique, got {list(self.base_names)}")
        self.extra_names: Tuple[str, ...] = tuple(distractor_names(self.specs, self.base_names))
        kinds = np.array([s.kind for s in self.specs], dtype=object)
        self._gauss = np.flatnonzero(kinds == "gaussian")
        self._gauss_std = np.array([self.specs[i].params[0] for i in self._gauss])
        self._unif = np.flatnonzero(kinds == "uniform")
        self._unif_lo = np.array([self.specs[i].params[0] for i in self._unif])
        self._unif_span = np.array([self.specs[i].params[1] - self.specs[i].params[0] for i in self._unif])
        self._const = np.flatnonzero(kinds == "constant")
        self._const_val = np.array([self.specs[i].params[0] for i in self._const])
        self._copy = np.flatnonzero(kinds == "copy")
        self._copy_src = np.array([resolve_source(self.specs[i], self.base_names) for i in self._copy], dtype=np.int64)
        self.rng = np.random.default_rng(seed)

    @property
    def names(self) -> Tuple[str, ...]:
        """Names of all output dims: the observation's own, then the distractors'."""
        return self.base_names + self.extra_names

    @property
    def num_extra(self) -> int:
        return len(self.specs)

    def seed(self, seed: Optional[int]) -> None:
        self.rng = np.random.default_rng(seed)

    def bounds(self, low: np.ndarray, high: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Box bounds of the output given those of the observation (copies inherit their source's)."""
        low, high = np.asarray(low, dtype=np.float64).ravel(), np.asarray(high, dtype=np.float64).ravel()
        xlo = np.array([s.low for s in self.specs], dtype=np.float64)
        xhi = np.array([s.high for s in self.specs], dtype=np.float64)
        xlo[self._copy], xhi[self._copy] = low[self._copy_src], high[self._copy_src]
        return np.concatenate([low, xlo]), np.concatenate([high, xhi])

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs)
        single = obs.ndim == 1
        batch = obs[None] if single else obs
        if batch.ndim != 2 or batch.shape[1] != len(self.base_names):
            raise ValueError(f"DistractorAdder: expected observations of shape [{len(self.base_names)}] or "
                             f"[N, {len(self.base_names)}], got {tuple(obs.shape)}")
        dtype = batch.dtype if np.issubdtype(batch.dtype, np.floating) else np.float32
        n = batch.shape[0]
        extra = np.empty((n, len(self.specs)), dtype=dtype)
        if self._gauss.size:
            extra[:, self._gauss] = self.rng.standard_normal((n, self._gauss.size)) * self._gauss_std
        if self._unif.size:
            extra[:, self._unif] = self._unif_lo + self.rng.random((n, self._unif.size)) * self._unif_span
        extra[:, self._const] = self._const_val
        extra[:, self._copy] = batch[:, self._copy_src]
        out = np.concatenate([batch.astype(dtype, copy=False), extra], axis=1)
        return out[0] if single else out


def _base_names(env: Union[gym.Env, gym.vector.VectorEnv], dim: int, base_names: Optional[Sequence[str]]) -> List[str]:
    if base_names is not None:
        names = list(base_names)
    else:
        env_id = env.spec.id if env.spec is not None else None
        names = list(OBS_DIM_NAMES.get(env_id, [f"dim {i}" for i in range(dim)]))
    if len(names) != dim:
        raise ValueError(f"{len(names)} dim names for an observation of {dim} dims")
    return names


def _flat_box(space: gym.Space, who: str) -> gym.spaces.Box:
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        raise ValueError(f"{who}: needs a 1-D Box observation space, got {space}")
    return space


class DistractorObservation(gym.ObservationWrapper):
    """Gymnasium wrapper appending distractor dims to a 1-D Box observation.

    ``names`` lists every dim (the env's own from :data:`OBS_DIM_NAMES` or ``base_names``, else
    'dim i'). ``reset(seed=s)`` also reseeds the distractor stream (from s, independent of the env's).
    """

    def __init__(self, env: gym.Env, specs: Sequence[SpecLike], seed: Optional[int] = None,
                 base_names: Optional[Sequence[str]] = None) -> None:
        super().__init__(env)
        box = _flat_box(env.observation_space, "DistractorObservation")
        self.adder = DistractorAdder(specs, _base_names(env, box.shape[0], base_names), seed)
        lo, hi = self.adder.bounds(box.low, box.high)
        self.observation_space = gym.spaces.Box(lo.astype(box.dtype), hi.astype(box.dtype), dtype=box.dtype)

    @property
    def names(self) -> Tuple[str, ...]:
        return self.adder.names

    def reset(self, *, seed: Optional[int] = None, options=None):
        if seed is not None:
            self.adder.seed(distractor_seed(seed))
        return super().reset(seed=seed, options=options)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return self.adder(observation)


class DistractorVectorObservation(gym.vector.VectorObservationWrapper):
    """Vector-env twin of :class:`DistractorObservation`: one batched draw per step for all envs."""

    def __init__(self, env: gym.vector.VectorEnv, specs: Sequence[SpecLike], seed: Optional[int] = None,
                 base_names: Optional[Sequence[str]] = None) -> None:
        super().__init__(env)
        box = _flat_box(env.single_observation_space, "DistractorVectorObservation")
        self.adder = DistractorAdder(specs, _base_names(env, box.shape[0], base_names), seed)
        lo, hi = self.adder.bounds(box.low, box.high)
        self.single_observation_space = gym.spaces.Box(lo.astype(box.dtype), hi.astype(box.dtype), dtype=box.dtype)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, env.num_envs)

    @property
    def names(self) -> Tuple[str, ...]:
        return self.adder.names

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            first = seed[0] if isinstance(seed, (list, tuple)) else seed
            self.adder.seed(distractor_seed(first))
        return super().reset(seed=seed, options=options)

    def observations(self, observations: np.ndarray) -> np.ndarray:
        return self.adder(observations)


# Distractor noise is seeded from the env seed mixed with this tag, so it is not the env's own stream.
_STREAM_TAG = 0xD15_7AC7
