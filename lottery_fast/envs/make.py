"""Batched environments behind one interface: EnvPool when it has the task, gymnasium otherwise.

:func:`make_vec_env` returns a :class:`VecEnv` whatever the backend. Both backends use
**next-step autoreset**: the step *after* an episode ends (``terminated`` or ``truncated``) only
resets that env. It returns the first observation of the new episode, reward 0, both flags False,
and the action sent for that env is ignored. (EnvPool 1.2.5 does this; gymnasium >= 1.0 vector envs
do it with ``AutoresetMode.NEXT_STEP``, which we request explicitly.) :meth:`VecEnv.step` marks
such steps in ``Transition.autoreset`` so that rollout code can mask them out: the observation fed
*into* an autoreset step is the real final observation of the finished episode, which is exactly
what a truncated episode's value bootstrap needs.

Episode returns and lengths are summed here from the raw rewards the env returns (nothing in this
module clips or normalises rewards), skipping autoreset steps; :meth:`VecEnv.episodes` hands them out.
They are the game's true returns unless ``env_kwargs`` ask the env itself to change the game (e.g.
EnvPool Atari's ``reward_clip=True`` or ``episodic_life=True``): leave those off for evaluation.

``distractors`` (spec strings of :mod:`lottery_fast.envs.distractors`, e.g. ``"gaussian"``,
``"constant:1"``, ``"copy:0"``) append task-irrelevant dims to vector observations, after the
env's own. Their noise is seeded from the env seed, so a run stays reproducible; ``EnvSpec.obs_names``
names every dim. :class:`EnvConfig` bundles everything that says which env to build (id, backend,
kwargs, distractors), so trainers pass one value to every place that makes envs.
"""
from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

BACKENDS = ("auto", "envpool", "gymnasium", "numpy")


@dataclass(frozen=True)
class EnvSpec:
    """What a learner needs to know about one env of the batch."""

    env_id: str
    obs_shape: Tuple[int, ...]
    obs_dtype: np.dtype  # float32 for vectors; uint8 (pixels, 0..255) or float32 (e.g. one-hot grids) for images
    discrete: bool
    n_actions: int  # number of discrete actions (0 for continuous)
    action_shape: Tuple[int, ...]  # () for discrete
    action_low: Optional[np.ndarray]  # continuous bounds (None for discrete)
    action_high: Optional[np.ndarray]
    max_episode_steps: Optional[int]
    #: names of the dims of vector observations (the env's own, then any distractors); None for images
    obs_names: Optional[Tuple[str, ...]] = None
    #: names of the channels of image observations, where the env names them (MinAtar, the gridworld)
    channel_names: Optional[Tuple[str, ...]] = None

    @property
    def is_image(self) -> bool:
        return len(self.obs_shape) == 3

    def input_names(self) -> Dict[str, List[str]]:
        """What the observation's axes are called, as a run folder records it: ``obs_names`` for
        vectors, ``channel_names`` for images whose env names them, else nothing."""
        if self.obs_names is not None:
            return {"obs_names": list(self.obs_names)}
        if self.channel_names is not None:
            return {"channel_names": list(self.channel_names)}
        return {}


class Transition(NamedTuple):
    obs: np.ndarray  # [num_envs, *obs_shape]: the next observation (a reset one after autoreset)
    reward: np.ndarray  # float32 [num_envs], raw env reward
    terminated: np.ndarray  # bool [num_envs]
    truncated: np.ndarray  # bool [num_envs]
    autoreset: np.ndarray  # bool [num_envs]: this step only reset the env; its action was ignored


# -- id lookup ---------------------------------------------------------------------------------
def _envpool_ids() -> List[str]:
    try:
        import envpool
    except ImportError:
        return []
    return list(envpool.list_all_envs())


def _gymnasium_ids() -> List[str]:
    try:
        import gymnasium
    except ImportError:
        return []
    return list(gymnasium.registry.keys())


def resolve_backend(env_id: str, backend: str = "auto") -> str:
    """Which backend will run ``env_id``; raises ``ValueError`` for an id neither knows."""
    if not isinstance(env_id, str) or not env_id:
        raise ValueError(f"env_id must be a non-empty string, got {env_id!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "numpy":
        from .classic import ENV_IDS

        if env_id not in ENV_IDS:
            raise ValueError(f"the numpy env backend runs {list(ENV_IDS)}, not {env_id!r}")
        return "numpy"
    pool_ids = _envpool_ids()
    if backend in ("auto", "envpool") and env_id in pool_ids:
        return "envpool"
    if backend == "envpool":
        hint = difflib.get_close_matches(env_id, pool_ids, n=5)
        raise ValueError(f"EnvPool has no environment {env_id!r}"
                         + (f"; close matches: {hint}" if hint else "")
                         + ("" if pool_ids else " (envpool is not installed)"))
    gym_ids = _gymnasium_ids()
    # "module:EnvId" makes gymnasium import the module that registers the id: let it try.
    if env_id in gym_ids or (":" in env_id and gym_ids):
        return "gymnasium"
    hint = difflib.get_close_matches(env_id, sorted(set(pool_ids) | set(gym_ids)), n=5)
    known = "EnvPool nor gymnasium" if gym_ids else "EnvPool (gymnasium is not installed)"
    raise ValueError(f"unknown environment id {env_id!r}: neither {known} registers it"
                     + (f"; close matches: {hint}" if hint else ""))


# -- backends: each returns raw (obs, reward, terminated, truncated) ---------------------------
class _Backend:
    """What both backends share: a gymnasium-style vector env in ``self.env``, infos dropped.

    A step is split in two (``send``, then ``recv``) so that a population of envs can have all
    its members' steps in flight at once; ``send`` followed by ``recv`` is exactly ``step``.
    """

    env: Any

    def send(self, actions: np.ndarray) -> None:
        self._actions = actions

    def recv(self):
        obs, reward, terminated, truncated, _ = self.env.step(self._actions)
        return obs, reward, terminated, truncated

    def close(self) -> None:
        self.env.close()


class _EnvPoolBackend(_Backend):
    def __init__(self, env_id: str, num_envs: int, seed: int, kwargs: Dict[str, Any]) -> None:
        import envpool

        with warnings.catch_warnings():
            # EnvPool builds float64 Box bounds that gymnasium warns about casting to float32.
            warnings.filterwarnings("ignore", message=".*precision lowered.*")
            # one worker thread: a batch of small envs is stepped faster by one thread than by a
            # hand-off to many (CartPole, 8 envs: 53 us vs 113 us a step); results do not change
            kwargs = {"num_threads": 1, **kwargs}
            self.env = envpool.make(env_id, env_type="gymnasium", num_envs=num_envs, seed=seed, **kwargs)
            self.observation_space = self.env.observation_space
            self.action_space = self.env.action_space
        self.max_episode_steps = getattr(self.env.spec.config, "max_episode_steps", None)
        self._raw = self._raw_layout()

    def reset(self) -> np.ndarray:
        obs, _ = self.env.reset()
        return obs

    def send(self, actions: np.ndarray) -> None:
        if self._raw is None:
            self.env.send(actions, None)
            return
        ids, dtype = self._raw[0], self._raw[1]
        self.env._send([ids, ids, np.ascontiguousarray(actions, dtype=dtype)])

    def recv(self):
        if self._raw is None:
            obs, reward, terminated, truncated, _ = self.env.recv(reset=False, return_info=True)
            return obs, reward, terminated, truncated
        state = self.env._recv()
        i_obs, i_rew, i_done, i_trunc = self._raw[2]
        trunc = state[i_trunc]
        return state[i_obs], state[i_rew], state[i_done] & ~trunc, trunc

    def _raw_layout(self):
        """EnvPool's own arrays, for single-agent tasks with a plain array observation: its Python
        wrapper (action conversion, info dicts) costs more than a small batch's step itself. Same
        calls and results as ``send``/``recv``; None where the layout is not the one we know."""
        try:
            action_keys = list(self.env._spec._action_keys)
            state_keys = list(self.env._state_keys)
            dtype = self.env._spec._action_spec[-1][0]
            ids = np.asarray(self.env.all_env_ids, dtype=np.int32)
        except AttributeError:
            return None
        if action_keys != ["env_id", "players.env_id", "action"] or not {"obs", "reward", "done", "trunc"} <= set(state_keys):
            return None
        return ids, dtype, tuple(state_keys.index(k) for k in ("obs", "reward", "done", "trunc"))


class _GymnasiumBackend(_Backend):
    def __init__(self, env_id: str, num_envs: int, seed: int, kwargs: Dict[str, Any]) -> None:
        import gymnasium
        from gymnasium.vector import AutoresetMode, SyncVectorEnv

        try:
            self.env = SyncVectorEnv([lambda: gymnasium.make(env_id, **kwargs) for _ in range(num_envs)],
                                     autoreset_mode=AutoresetMode.NEXT_STEP)
        except gymnasium.error.Error as e:
            raise ValueError(f"gymnasium could not make {env_id!r}: {e}") from e
        self.seed = seed
        self.observation_space = self.env.single_observation_space
        self.action_space = self.env.single_action_space
        spec = self.env.envs[0].spec
        self.max_episode_steps = spec.max_episode_steps if spec is not None else None

    def reset(self) -> np.ndarray:
        obs, _ = self.env.reset(seed=self.seed)  # env i is seeded with seed + i, like EnvPool
        return obs



# -- the uniform interface ---------------------------------------------------------------------
def _spec_of(env_id: str, backend) -> Tuple[EnvSpec, bool]:
    """The spec, and whether observations arrive channels-last and need a transpose."""
    from gymnasium import spaces

    obs_space, act_space = backend.observation_space, backend.action_space
    if not isinstance(obs_space, spaces.Box):
        raise ValueError(f"{env_id}: only Box observation spaces are supported, got {obs_space}")
    shape = tuple(int(s) for s in obs_space.shape)
    pixels = obs_space.dtype == np.uint8
    # float images are grids of object channels (MinAtar, the patrol gridworld): fed as they are
    image = len(shape) == 3 and (pixels or np.issubdtype(obs_space.dtype, np.floating))
    if len(shape) not in (1, 3) or (len(shape) == 3 and not image):
        raise ValueError(f"{env_id}: observations must be vectors or uint8/float images, got shape {shape} "
                         f"dtype {obs_space.dtype}")
    channels_last = image and pixels and shape[-1] <= 4 < shape[0]
    if channels_last:
        shape = (shape[2], shape[0], shape[1])
    if isinstance(act_space, spaces.Discrete):
        discrete, n, a_shape, low, high = True, int(act_space.n), (), None, None
    elif isinstance(act_space, spaces.Box) and len(act_space.shape) == 1:
        discrete, n, a_shape = False, 0, tuple(act_space.shape)
        low, high = act_space.low.astype(np.float32), act_space.high.astype(np.float32)
    else:
        raise ValueError(f"{env_id}: only Discrete or 1-d Box action spaces are supported, got {act_space}")
    spec = EnvSpec(env_id=env_id, obs_shape=shape, obs_dtype=np.dtype(np.uint8 if image and pixels else np.float32),
                   discrete=discrete, n_actions=n, action_shape=a_shape, action_low=low,
                   action_high=high, max_episode_steps=backend.max_episode_steps,
                   obs_names=None if image else base_obs_names(env_id, shape[0]),
                   channel_names=_channel_names(backend, shape) if image else None)
    return spec, channels_last


def _channel_names(backend, shape: Tuple[int, ...]) -> Optional[Tuple[str, ...]]:
    """The env's own channel names (an attribute ``channel_names`` of the unwrapped gymnasium env)."""
    envs = getattr(getattr(backend, "env", None), "envs", None)
    names = getattr(envs[0].unwrapped, "channel_names", None) if envs else None
    return tuple(str(n) for n in names) if names is not None and len(names) == shape[0] else None


def base_obs_names(env_id: Optional[str], dim: int) -> Tuple[str, ...]:
    """Names of the ``dim`` observation dims of ``env_id``: the known ones, else 'dim i'."""
    from .distractors import OBS_DIM_NAMES

    names = OBS_DIM_NAMES.get(env_id, ())
    return tuple(names) if len(names) == dim else tuple(f"dim {i}" for i in range(dim))


def check_distractors(distractors: Any, where: str = "distractors") -> Tuple[str, ...]:
    """``distractors`` as a tuple of parseable spec strings; a clear error for anything else."""
    from .distractors import parse_distractor

    if isinstance(distractors, str) or not isinstance(distractors, (list, tuple)):
        raise ValueError(f"{where} must be a list of distractor specs (e.g. [\"gaussian\", \"constant:1\"]), "
                         f"got {distractors!r}")
    for d in distractors:
        if not isinstance(d, str):
            raise ValueError(f"{where}: each distractor must be a spec string, got {d!r}")
        parse_distractor(d)  # raises ValueError naming the bad spec
    return tuple(distractors)


def check_select(select: Any, width: Optional[int] = None, where: str = "select") -> Tuple[int, ...]:
    """``select`` as a tuple of distinct non-negative ints (below ``width`` when given); clear errors otherwise."""
    if isinstance(select, (str, bytes)) or not isinstance(select, (list, tuple, np.ndarray)):
        raise ValueError(f"{where} must be a list of observation indices, got {select!r}")
    idx = tuple(select)
    if not idx:
        raise ValueError(f"{where} is empty: an agent needs at least one observation dim")
    if any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0 for i in idx):
        raise ValueError(f"{where} must hold non-negative integers, got {list(idx)}")
    if len(set(idx)) != len(idx):
        raise ValueError(f"{where} has duplicates: {list(idx)}")
    if width is not None and max(idx) >= width:
        raise ValueError(f"{where}: index {max(idx)} is out of range for observations with {width} dims")
    return tuple(int(i) for i in idx)


class VecEnv:
    """``num_envs`` copies of one task stepped together; see the module docstring for autoreset."""

    def __init__(self, env_id: str, num_envs: int, seed: int, backend: str = "auto",
                 env_kwargs: Optional[Dict[str, Any]] = None, distractors: Sequence[str] = (),
                 select: Optional[Sequence[int]] = None, env_seeds: Optional[Sequence[int]] = None) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**31 - num_envs:
            raise ValueError(f"seed must be an integer in [0, 2**31 - num_envs), got {seed!r}")
        distractors = check_distractors(distractors)
        self.backend = resolve_backend(env_id, backend)
        if env_seeds is not None and (self.backend != "numpy" or distractors or len(env_seeds) != num_envs):
            raise ValueError("env_seeds (one seed per env) needs the numpy backend, no distractors and "
                             "num_envs seeds")
        try:
            if self.backend == "numpy":
                from .classic import NumpyClassicBackend

                seeds = [int(seed) + i for i in range(int(num_envs))] if env_seeds is None else list(env_seeds)
                self._env = NumpyClassicBackend(env_id, seeds, dict(env_kwargs or {}))
            else:
                cls = _EnvPoolBackend if self.backend == "envpool" else _GymnasiumBackend
                self._env = cls(env_id, int(num_envs), int(seed), dict(env_kwargs or {}))
        except TypeError as e:
            if not env_kwargs:
                raise
            # env creators reject keywords they do not take with a TypeError: here that is the
            # user's env_kwargs, not a bug (EnvPool appends its whole config on further lines)
            raise ValueError(f"env {env_id!r} does not take env_kwargs {dict(env_kwargs)!r}: "
                             f"{str(e).splitlines()[0]}") from None
        try:
            self.spec, self._channels_last = _spec_of(env_id, self._env)
            self._distractors = self._distractor_adder(distractors, int(seed))
            self._select = self._selection(select)
        except Exception:
            self._env.close()
            raise
        self.num_envs = int(num_envs)
        self._act_dtype = self._env.action_space.dtype
        self._act_buf = None if self.spec.discrete else np.empty((num_envs, *self.spec.action_shape), self._act_dtype)
        self._ep_return = np.zeros(num_envs, np.float64)
        self._ep_length = np.zeros(num_envs, np.int64)
        self._done = np.zeros(num_envs, bool)
        self._finished_returns: List[float] = []
        self._finished_lengths: List[int] = []
        self._finished_envs: List[int] = []

    def _distractor_adder(self, distractors: Tuple[str, ...], seed: int):
        if not distractors:
            return None
        from .distractors import DistractorAdder, distractor_seed

        if self.spec.obs_names is None:
            raise ValueError(f"{self.spec.env_id}: distractors are only supported for vector observations, "
                             f"not images of shape {self.spec.obs_shape}")
        self._distractor_seed = distractor_seed(seed)
        adder = DistractorAdder(distractors, self.spec.obs_names, self._distractor_seed)
        self.spec = replace(self.spec, obs_shape=(len(adder.names),), obs_names=adder.names)
        return adder

    def _selection(self, select: Optional[Sequence[int]]) -> Optional[np.ndarray]:
        if select is None:
            return None
        idx = check_select(select, self.spec.obs_shape[0])
        names, channels = self.spec.obs_names, self.spec.channel_names
        self.spec = replace(self.spec, obs_shape=(len(idx), *self.spec.obs_shape[1:]),
                            obs_names=None if names is None else tuple(names[i] for i in idx),
                            channel_names=None if channels is None else tuple(channels[i] for i in idx))
        return np.asarray(idx, dtype=np.intp)

    @property
    def obs_names(self) -> Optional[Tuple[str, ...]]:
        """Names of the observation dims (None for images); same as ``spec.obs_names``."""
        return self.spec.obs_names

    def _obs(self, obs: np.ndarray) -> np.ndarray:
        if self._channels_last:
            obs = np.ascontiguousarray(obs.transpose(0, 3, 1, 2))
        elif obs.dtype != self.spec.obs_dtype:
            obs = obs.astype(self.spec.obs_dtype)
        if self._distractors is not None:
            obs = self._distractors(obs)
        if self._select is not None:
            obs = np.ascontiguousarray(obs[:, self._select])
        return obs

    def reset(self) -> np.ndarray:
        """Start every env afresh (seeded at construction) and clear the episode bookkeeping."""
        if self._distractors is not None:  # a reset replays the same distractor stream too
            self._distractors.seed(self._distractor_seed)
        self._ep_return[:] = 0
        self._ep_length[:] = 0
        self._done[:] = False
        self._finished_returns.clear()
        self._finished_lengths.clear()
        self._finished_envs.clear()
        return self._obs(self._env.reset())

    def step(self, actions: Any) -> Transition:
        """Step all envs; continuous actions are clipped to the action bounds first."""
        self.step_async(actions)
        return self.step_wait()

    def step_async(self, actions: Any) -> None:
        """Start a step (:meth:`step` is this and :meth:`step_wait`); EnvPool steps in its own
        thread meanwhile, so several envs' steps can run at once."""
        actions = np.asarray(actions)
        expected = (self.num_envs, *self.spec.action_shape)
        if actions.shape != expected:
            raise ValueError(f"{self.spec.env_id}: actions must have shape {expected}, got {actions.shape}")
        if self.spec.discrete:
            actions = actions.astype(self._act_dtype, copy=False)
        else:
            np.clip(actions, self.spec.action_low, self.spec.action_high, out=self._act_buf, casting="unsafe")
            actions = self._act_buf
        self._env.send(actions)

    def step_wait(self) -> Transition:
        """Finish the step started by :meth:`step_async`."""
        obs, reward, terminated, truncated = self._env.recv()
        reward = np.asarray(reward, np.float32)
        terminated = np.asarray(terminated, bool)
        truncated = np.asarray(truncated, bool)
        autoreset = self._done  # the previous step ended these episodes: this one only reset them
        live = ~autoreset
        self._ep_return += np.where(live, reward, 0.0)
        self._ep_length += live
        done = terminated | truncated
        if done.any():
            self._finished_returns.extend(self._ep_return[done].tolist())
            self._finished_lengths.extend(self._ep_length[done].tolist())
            self._finished_envs.extend(np.flatnonzero(done).tolist())
            self._ep_return[done] = 0
            self._ep_length[done] = 0
        self._done = done
        return Transition(self._obs(obs), reward, terminated, truncated, autoreset)

    def episodes(self) -> Tuple[np.ndarray, np.ndarray]:
        """Returns and lengths of the episodes finished since the last call (in finishing order)."""
        returns, lengths, _ = self.episodes_by_env()
        return returns, lengths

    def episodes_by_env(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`episodes` and, for each episode, the index of the env that played it."""
        out = (np.asarray(self._finished_returns, np.float64), np.asarray(self._finished_lengths, np.int64),
               np.asarray(self._finished_envs, np.int64))
        self._finished_returns.clear()
        self._finished_lengths.clear()
        self._finished_envs.clear()
        return out

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> "VecEnv":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_vec_env(env_id: str, num_envs: int, seed: int, backend: str = "auto",
                 env_kwargs: Optional[Dict[str, Any]] = None, distractors: Sequence[str] = (),
                 select: Optional[Sequence[int]] = None) -> VecEnv:
    """``num_envs`` batched copies of ``env_id``; env ``i`` is seeded with ``seed + i``.

    ``backend="auto"`` uses EnvPool when it registers ``env_id`` and any ``gymnasium.make`` id
    otherwise (bring your own task: register it with gymnasium). ``env_kwargs`` go to
    ``envpool.make`` or ``gymnasium.make``. ``distractors`` append extra dims to vector
    observations (see the module docstring). ``select`` keeps only these indices of the first
    observation axis (vector dims after the distractors, or image channels), in this order: the
    input of a minimal-representation agent. Unknown ids raise ``ValueError`` listing close matches.
    """
    return VecEnv(env_id, num_envs, seed, backend=backend, env_kwargs=env_kwargs, distractors=distractors,
                  select=select)


@dataclass(frozen=True)
class EnvConfig:
    """Which env to build: the one value trainers hand to everything that makes their envs."""

    env_id: str
    backend: str = "auto"
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    distractors: Tuple[str, ...] = ()
    select: Optional[Tuple[int, ...]] = None  # observation dims (or channels) kept; None: all

    def __post_init__(self) -> None:
        # the id itself is checked by resolve_backend when an env is made (that needs the env registries)
        if not isinstance(self.env_id, str) or not self.env_id:
            raise ValueError(f"EnvConfig.env_id must be a non-empty string, got {self.env_id!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"EnvConfig.backend must be one of {BACKENDS}, got {self.backend!r}")
        if not isinstance(self.kwargs, Mapping):
            raise ValueError(f"EnvConfig.kwargs must be a mapping of env keyword arguments, got {self.kwargs!r}")
        object.__setattr__(self, "distractors", check_distractors(self.distractors, "EnvConfig.distractors"))
        if self.select is not None:
            object.__setattr__(self, "select", check_select(self.select, where="EnvConfig.select"))

    def make(self, num_envs: int, seed: int) -> VecEnv:
        return make_vec_env(self.env_id, num_envs, seed, backend=self.backend, env_kwargs=dict(self.kwargs),
                            distractors=self.distractors, select=self.select)

    def make_population(self, num_envs: int, seeds: Sequence[int]) -> Optional[VecEnv]:
        """One :class:`VecEnv` of ``len(seeds) * num_envs`` envs, member ``p``'s env ``i`` seeded
        ``seeds[p] + i`` as :meth:`make` would: only where the backend takes a seed per env (numpy)
        and nothing else draws from a per-VecEnv stream (distractors); None otherwise."""
        if resolve_backend(self.env_id, self.backend) != "numpy" or self.distractors:
            return None
        env_seeds = [int(s) + i for s in seeds for i in range(num_envs)]
        return VecEnv(self.env_id, len(env_seeds), 0, backend="numpy", env_kwargs=dict(self.kwargs),
                      select=self.select, env_seeds=env_seeds)


def as_env_config(env: Union[str, EnvConfig]) -> EnvConfig:
    """An :class:`EnvConfig` from itself or from a bare env id (default backend, no kwargs or distractors)."""
    return env if isinstance(env, EnvConfig) else EnvConfig(env)


def known_env_ids(backend: str = "auto") -> Sequence[str]:
    """Every id :func:`make_vec_env` accepts with ``backend``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    ids: List[str] = []
    if backend in ("auto", "envpool"):
        ids += _envpool_ids()
    if backend in ("auto", "gymnasium"):
        ids += _gymnasium_ids()
    if backend == "numpy":
        from .classic import ENV_IDS

        ids += list(ENV_IDS)
    return sorted(set(ids))
