"""What ``lottery-fast report`` runs: its config, its parts and the IMP experiments of each (nothing runs here)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .. import configs
from ..experiments import Experiment
from ..presets import get_preset

PARTS = ("performance", "distractors", "minimality", "minatar", "gridworld", "rescale")
#: the config sections a report's ``--set`` overrides can address (its experiments are PPO and BC)
SECTIONS = ("imp", "ppo", "bc")
MINATAR_ENV = "lottery_fast/MinAtar-Breakout-v0"
GRID_ENV = "lottery_fast/PatrolGridDistractors-v0"
DISTRACTORS = ("gaussian", "uniform:-1:1", "constant:1")
THRESHOLD = 0.95


@dataclass(frozen=True)
class ReportConfig:
    """What ``lottery-fast report`` runs. ``overrides`` are ``--set`` assignments applied to every
    experiment after the preset (e.g. ``ppo.total_steps=4096``); ``seeds`` replaces every part's seeds."""

    out: Path
    preset: str = "quick"
    seeds: Optional[int] = None
    envs: Tuple[str, ...] = ("CartPole-v1", "Acrobot-v1")
    distractor_env: str = "CartPole-v1"
    parts: Tuple[str, ...] = PARTS
    overrides: Tuple[str, ...] = ()
    #: experiments run at once, each in its own process (they share nothing but the output folder)
    jobs: int = 1
    #: init rescaling modes the ``rescale`` part compares (the first is the baseline of its finding)
    rescale_modes: Tuple[str, ...] = ("none", "fan_in", "rms")
    #: train each IMP round's units as one population (see :func:`lottery_fast.imp.run_imp`)
    population: bool = True
    #: where the experiments' tasks run, and where their trainings are tracked
    #: (:mod:`lottery_fast.backends`, :mod:`lottery_fast.tracking`)
    backend: str = "local"
    address: Optional[str] = None
    track: str = "none"

    def __post_init__(self) -> None:
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1:
            raise ValueError(f"--jobs must be a positive integer, got {self.jobs!r}")
        get_preset(self.preset, "report")  # an unknown name, or a preset without report settings, fails here
        for text in self.overrides:
            configs.check_top_level(configs.parse_assignment(text), SECTIONS, (), f"--set {text!r}")
        unknown = [p for p in self.parts if p not in PARTS]
        if unknown or not self.parts:
            raise ValueError(f"report parts {list(self.parts)}: unknown {unknown}; choose from {list(PARTS)}")
        if self.seeds is not None and (isinstance(self.seeds, bool) or self.seeds < 1):
            raise ValueError(f"--seeds must be >= 1, got {self.seeds}")
        if "performance" in self.parts and not self.envs:
            raise ValueError("the performance part needs at least one env (--envs)")
        if "minimality" in self.parts and "distractors" not in self.parts:
            raise ValueError("the minimality part retrains on the dims the distractor ticket kept: "
                             "it needs the distractors part too")
        from ..prune import RESCALE_MODES

        bad = [m for m in self.rescale_modes if m not in RESCALE_MODES]
        if bad or len(set(self.rescale_modes)) != len(self.rescale_modes) or len(self.rescale_modes) < 2:
            raise ValueError(f"--rescale-modes {list(self.rescale_modes)}: need two or more distinct modes of "
                             f"{list(RESCALE_MODES)}" + (f" (unknown: {bad})" if bad else ""))


def rescale_mode(exp: Experiment) -> str:
    """The init rescaling mode an experiment runs with (``none`` unless its imp config names one)."""
    return str(exp.config["imp"].get("rescale") or "none")


def _slug(env_id: str) -> str:
    return env_id.split("/")[-1].lower().replace("-v0", "").replace("-v1", "").replace("_", "-")


def plan(cfg: ReportConfig) -> List[Experiment]:
    """The report's IMP experiments, configs resolved (preset < overrides < seeds); nothing runs."""
    preset = get_preset(cfg.preset, "report").report
    runs = cfg.out / "runs"

    def resolved(part: str, paradigm: str, extra: Mapping[str, Any], env: Optional[str] = None) -> Dict[str, Any]:
        section = configs.merge({"imp": {"seeds": preset["seeds"]}}, preset[part])
        section = configs.merge(section, preset.get("env_overrides", {}).get(env, {}))
        section = configs.merge(section, {paradigm: dict(extra)} if extra else {})
        for text in cfg.overrides:
            section = configs.merge(section, configs.parse_assignment(text))
        if cfg.seeds is not None:
            section = configs.merge(section, {"imp": {"seeds": cfg.seeds}})
        return {"imp": section["imp"], paradigm: section.get(paradigm, {}) or {}}

    out: List[Experiment] = []
    if "performance" in cfg.parts:
        for env in cfg.envs:
            for paradigm in ("ppo", "bc"):
                extra = {"expert_path": str(runs / f"{_slug(env)}-bc" / "expert.pt")} if paradigm == "bc" else {}
                out.append(Experiment(f"{_slug(env)}-{paradigm}", "performance", env, paradigm,
                                      resolved("performance", paradigm, extra, env)))
    distractor_name = f"{_slug(cfg.distractor_env)}-distractors-ppo"
    distractor_cfg = resolved("distractors", "ppo", {"distractors": list(DISTRACTORS)})
    ran: Optional[Experiment] = None
    if "distractors" in cfg.parts:
        ran = Experiment(distractor_name, "distractors", cfg.distractor_env, "ppo", distractor_cfg)
        out.append(ran)
    if "rescale" in cfg.parts:
        for mode in cfg.rescale_modes:
            if ran is not None and rescale_mode(ran) == mode:
                continue  # the distractors part's run is this mode's run
            out.append(Experiment(f"{distractor_name}-rescale-{mode.replace('_', '-')}", "rescale",
                                  cfg.distractor_env, "ppo",
                                  configs.merge(distractor_cfg, {"imp": {"rescale": mode}})))
    if "minatar" in cfg.parts:
        out.append(Experiment("minatar-breakout-ppo", "minatar", MINATAR_ENV, "ppo", resolved("minatar", "ppo", {})))
    if "gridworld" in cfg.parts:
        out.append(Experiment("patrolgrid-ppo", "gridworld", GRID_ENV, "ppo", resolved("gridworld", "ppo", {})))
    return out


def minatar_missing() -> Optional[str]:
    """Why MinAtar cannot run here (None when it can)."""
    from ..envs.minatar import _import_minatar

    try:
        _import_minatar()
    except ImportError as e:
        return str(e)
    return None
