"""Named presets shared by ``lottery-fast imp`` and ``lottery-fast report``: one registry.

A :class:`Preset` holds what each command takes from it, as plain dicts: ``imp`` in the config-file
layout (sections [imp], [ppo], [bc], ...), so a preset is a config file you need not write, and
``report`` the report's plan (``seeds``, one config per part, per-env additions). A preset may leave
a command out; asking that command for it is then an error. ``aliases`` keep older names working:
``full`` (the report's old name for the paper's rounds and budgets) is ``paper``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from . import configs

#: the commands a preset can configure
COMMANDS = ("imp", "report")


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    imp: Optional[Mapping[str, Any]] = None
    report: Optional[Mapping[str, Any]] = None
    aliases: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"preset name must be a non-empty string, got {self.name!r}")
        if self.imp is None and self.report is None:
            raise ValueError(f"preset {self.name!r} configures neither imp nor report")
        for what in COMMANDS:
            value = getattr(self, what)
            if value is not None and not isinstance(value, Mapping):
                raise ValueError(f"preset {self.name!r}: {what} must be a table of options, got {value!r}")
        if self.report is not None and (isinstance(self.report.get("seeds"), bool)
                                        or not isinstance(self.report.get("seeds"), int) or self.report["seeds"] < 1):
            raise ValueError(f"preset {self.name!r}: report.seeds must be a positive integer")

    def for_command(self, command: str, called: Optional[str] = None) -> Mapping[str, Any]:
        """What ``command`` takes from this preset; an error naming the preset if it has nothing for it."""
        value = getattr(self, command, None) if command in COMMANDS else None
        if value is None:
            have = [c for c in COMMANDS if getattr(self, c) is not None]
            raise ValueError(f"preset {called or self.name!r} has no settings for `{command}` (it configures "
                             f"{', '.join(have)}); presets for {command}: {', '.join(preset_names(command))}")
        return value


_PRESETS: Dict[str, Preset] = {}
_ALIASES: Dict[str, str] = {}


def register_preset(preset: Preset, replace: bool = False) -> Preset:
    """Add ``preset`` (and its aliases); a name already taken is an error unless ``replace``."""
    if not isinstance(preset, Preset):
        raise TypeError(f"register_preset: expected a Preset, got {type(preset).__name__}")
    for name in (preset.name, *preset.aliases):
        owner = _PRESETS.get(name) or _PRESETS.get(_ALIASES.get(name, ""))
        if owner is not None and not (replace and owner.name == preset.name):
            raise ValueError(f"preset name {name!r} is already taken by preset {owner.name!r}")
    _PRESETS[preset.name] = preset
    _ALIASES.update({alias: preset.name for alias in preset.aliases})
    return preset


def get_preset(name: str, command: Optional[str] = None) -> Preset:
    """The preset ``name`` (or whose alias it is); an error listing the names ``command`` accepts."""
    preset = _PRESETS.get(_ALIASES.get(name, name))
    if preset is None:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(preset_names(command))}")
    if command is not None:
        preset.for_command(command, name)
    return preset


def preset_names(command: Optional[str] = None) -> Tuple[str, ...]:
    """Names and aliases of the presets (those with settings for ``command``), sorted."""
    names = [n for n, p in _PRESETS.items() if command is None or getattr(p, command) is not None]
    names += [a for a, n in _ALIASES.items() if n in names]
    return tuple(sorted(names))


#: the report's classic-control tasks run on the numpy backend (lottery_fast/envs/classic.py, gymnasium's
#: dynamics): a population's envs step as one batch there, with a seed per env
_NUMPY_ENVS: Dict[str, Dict[str, Any]] = {
    env: {"ppo": {"env_backend": "numpy"}, "bc": {"expert": {"env_backend": "numpy"}}}
    for env in ("CartPole-v1", "Acrobot-v1")
}

register_preset(Preset(
    "quick", "minutes on 2 CPU cores: budgets far below what the paper's claims need",
    # README's main command: a few IMP iterations on CartPole for RL and BC
    imp={
        "imp": {"iterations": 3, "rate": 0.5, "seeds": 1},
        "ppo": {"total_steps": 150_000, "num_evals": 4},
        "bc": {"expert": {"total_steps": 200_000, "num_evals": 4}},
        "dqn": {"total_steps": 40_000},
        "digits": {},
    },
    # per report part: the config (CLI layout: imp/ppo/bc sections); per env: additions to the performance part
    report={
        "seeds": 2,
        "performance": {"imp": {"iterations": 3, "rate": 0.6},
                        "ppo": {"total_steps": 60_000, "num_evals": 2},
                        "bc": {"expert": {"total_steps": 60_000, "num_evals": 2}, "steps": 600, "num_evals": 2,
                               "dataset_steps": 10_000}},
        # PPO on Acrobot needs more steps than on CartPole before every seed learns
        "env_overrides": configs.merge(_NUMPY_ENVS, {"Acrobot-v1": {"ppo": {"total_steps": 150_000},
                                                                    "bc": {"expert": {"total_steps": 150_000}}}}),
        "distractors": {"imp": {"iterations": 4, "rate": 0.6, "conditions": "ticket"},
                        "ppo": {"total_steps": 60_000, "num_evals": 2}},
        "minatar": {"imp": {"iterations": 2, "rate": 0.6, "conditions": "ticket", "seeds": 1},
                    "ppo": {"total_steps": 16_384, "num_evals": 1}},
        "gridworld": {"imp": {"iterations": 3, "rate": 0.6, "conditions": "ticket", "seeds": 1},
                      "ppo": {"total_steps": 32_768, "num_evals": 1}},
    },
))

register_preset(Preset(
    "paper", "the paper's rounds and budgets: 20 IMP rounds of 20 % (1.15 % of the weights left), 5 seeds "
    "(the paper ran 15 on Cart-Pole and Acrobot: --seeds 15)",
    imp={"imp": {"iterations": 20, "rate": 0.2, "seeds": 5}},
    report={
        "seeds": 5,
        "performance": {"imp": {"iterations": 20, "rate": 0.2}, "ppo": {}, "bc": {}},
        "env_overrides": _NUMPY_ENVS,
        "distractors": {"imp": {"iterations": 20, "rate": 0.2, "conditions": "ticket"}, "ppo": {}},
        "minatar": {"imp": {"iterations": 20, "rate": 0.2, "conditions": "ticket"},
                    "ppo": {"total_steps": 2_000_000}},
        "gridworld": {"imp": {"iterations": 20, "rate": 0.2, "conditions": "ticket"},
                      "ppo": {"total_steps": 500_000}},
    },
    aliases=("full",),
))
