"""The trainer registry: every trainer the CLI, the report and the analysis know by name, defined once.

A :class:`TrainerSpec` says how to make a trainer from its config (``trainer(env_id, config)``, or
``trainer(config)`` for trainers without an env), which dataclass configures it and its defaults for
an env, the name figures and tables show, and the shape of its input when that is a flattened image
(the digits MLP reads 8x8 pixels). Observation and channel names are the trainer's own
(``Trainer.input_names()``): IMP records them in the run folder's config.json when the run starts.

Classes may be given as ``"module:attribute"`` strings, imported on first use, so importing this
module pulls in neither the RL stack nor scikit-learn. Register your own with :func:`register_trainer`.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple, Union

Loadable = Union[type, str]


def _load(target: Loadable) -> Any:
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class TrainerSpec:
    """One registered trainer (see the module docstring)."""

    name: str
    trainer: Loadable
    config: Loadable
    display_name: str
    #: a shorter name for table cells and legends (default: ``display_name``)
    short_name: Optional[str] = None
    #: trainer(env_id, config) when True, trainer(config) when False
    needs_env: bool = True
    #: the config a section's options are merged into, per env id (default: ``config()``)
    default_config: Optional[Callable[[Optional[str]], Any]] = None
    #: (channels, height, width) when the input layer is a Linear on a flattened image
    image_shape: Optional[Tuple[int, int, int]] = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or not self.name.isidentifier():
            raise ValueError(f"trainer name must be an identifier (it names a config section), got {self.name!r}")
        if not isinstance(self.display_name, str) or not self.display_name:
            raise ValueError(f"trainer {self.name!r}: display_name must be a non-empty string")
        for what in ("trainer", "config"):
            value = getattr(self, what)
            if not (isinstance(value, type) or (isinstance(value, str) and ":" in value)):
                raise ValueError(f"trainer {self.name!r}: {what} must be a class or a 'module:Class' string, "
                                 f"got {value!r}")
        if self.image_shape is not None and (len(self.image_shape) != 3 or not all(
                isinstance(d, int) and d >= 1 for d in self.image_shape)):
            raise ValueError(f"trainer {self.name!r}: image_shape must be (channels, height, width), "
                             f"got {self.image_shape!r}")

    @property
    def trainer_class(self) -> type:
        return _load(self.trainer)

    @property
    def config_class(self) -> type:
        return _load(self.config)

    def defaults(self, env_id: Optional[str]) -> Any:
        """The config the user's options override for ``env_id``."""
        return self.default_config(env_id) if self.default_config is not None else self.config_class()

    def make(self, env_id: Optional[str], config: Any) -> Any:
        """The trainer, configured by ``config`` (an instance of :attr:`config_class`)."""
        if self.needs_env:
            if not env_id:
                raise ValueError(f"--env is required for paradigm {self.name!r} (e.g. --env CartPole-v1)")
            return self.trainer_class(env_id, config)
        return self.trainer_class(config)


_REGISTRY: Dict[str, TrainerSpec] = {}


def register_trainer(spec: TrainerSpec, replace: bool = False) -> TrainerSpec:
    """Add ``spec`` under ``spec.name``; an existing name is an error unless ``replace``."""
    if not isinstance(spec, TrainerSpec):
        raise TypeError(f"register_trainer: expected a TrainerSpec, got {type(spec).__name__}")
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"trainer {spec.name!r} is already registered (pass replace=True to replace it)")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_trainer(name: str) -> None:
    """Remove a registered trainer (tests and notebooks that register one temporarily)."""
    _REGISTRY.pop(name, None)


def trainer_spec(name: str) -> TrainerSpec:
    """The registered trainer ``name``; an error listing the registered ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown paradigm {name!r}; choose from {list(_REGISTRY)} or 'both'") from None


def trainer_names() -> Tuple[str, ...]:
    """Registered trainer names in registration order (the built-ins first)."""
    return tuple(_REGISTRY)


def display_name(name: str) -> str:
    """The name figures and tables show for trainer ``name`` (the name itself when not registered)."""
    spec = _REGISTRY.get(name)
    return spec.display_name if spec is not None else name


def short_name(name: str) -> str:
    """The short name (table cells, legends) of trainer ``name``."""
    spec = _REGISTRY.get(name)
    return (spec.short_name or spec.display_name) if spec is not None else name


def ppo_defaults(env_id: Optional[str]) -> Any:
    """PPO's defaults for the env's action type (continuous control gets CleanRL's continuous preset)."""
    from ..envs.make import make_vec_env
    from .ppo import PPOConfig

    with make_vec_env(env_id, 1, 0) as probe:
        discrete = probe.spec.discrete
    return PPOConfig() if discrete else PPOConfig.continuous_control()


def _bc_defaults(env_id: Optional[str]) -> Any:
    from .bc import BCConfig

    return BCConfig(expert=ppo_defaults(env_id))


for _spec in (
    TrainerSpec("ppo", "lottery_fast.train.ppo:PPOTrainer", "lottery_fast.train.ppo:PPOConfig", "RL (PPO)",
                default_config=ppo_defaults),
    TrainerSpec("bc", "lottery_fast.train.bc:BCTrainer", "lottery_fast.train.bc:BCConfig", "behavioural cloning",
                short_name="BC", default_config=_bc_defaults),
    TrainerSpec("dqn", "lottery_fast.train.dqn:DQNTrainer", "lottery_fast.train.dqn:DQNConfig", "RL (DQN)"),
    TrainerSpec("digits", "lottery_fast.train.digits:DigitsTrainer", "lottery_fast.train.digits:DigitsConfig",
                "digits (supervised)", needs_env=False, image_shape=(1, 8, 8)),
):
    register_trainer(_spec)
