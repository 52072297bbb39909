"""``lottery-fast report``: run the paper's default experiments and write figures plus ``report.md``.

Parts (each can be left out with ``parts``):

* ``performance``: IMP with the four conditions for RL (PPO) and BC (policy distillation) on each
  env of ``envs`` (CartPole-v1 and Acrobot-v1): the RL-vs-BC figure (tickets, min..max band over
  seeds) and the four-conditions figure (mean ± SD);
* ``distractors``: the PPO ticket on CartPole with task-irrelevant dims appended (noise, a
  constant): surviving input weights per dim and iteration, and when each dim is fully pruned;
* ``minimality``: dense agents retrained on only the dims the distractor ticket kept vs on the full
  input, same budget and seeds (:mod:`lottery_fast.analysis.minimality`);
* ``rescale``: the distractor experiment once per init rescaling mode (``rescale_modes``, see
  :mod:`lottery_fast.prune.rescale`): the input-layer mask with vs without rescaling, side by side.
  The mode the ``distractors`` part already ran (``none`` unless overridden) is not run twice;
* ``minatar`` and ``gridworld``: the PPO ticket (conv torso) on MinAtar Breakout and on the patrol
  gridworld with distractor channels: kept input weights per channel, iteration 0 vs the last.

Every experiment is an IMP run folder under ``OUT/runs/<name>`` (resumable: a rerun skips finished
units); figures go to ``OUT/figures`` and the summary to ``OUT/report.md``. All numbers in the
summary are computed from the run folders. ``OUT/runs/.gitignore`` keeps the checkpoints
(``seed_*/``, ``*.pt``) out of git, so an output folder can be committed as it is.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from . import configs
from ._atomic import atomic_write
from .experiments import Experiment, Log, check_experiment, log_to_stderr, make_trainer, run_experiments

PARTS = ("performance", "distractors", "minimality", "minatar", "gridworld", "rescale")
#: the config sections a report's ``--set`` overrides can address (its experiments are PPO and BC)
SECTIONS = ("imp", "ppo", "bc")
TICKET = "mask/weights"
CONDITIONS = ("mask/weights", "mask/permuted", "permuted/permuted", "random/reinit")
MINATAR_ENV = "lottery_fast/MinAtar-Breakout-v0"
GRID_ENV = "lottery_fast/PatrolGridDistractors-v0"
DISTRACTORS = ("gaussian", "uniform:-1:1", "constant:1")
THRESHOLD = 0.95

#: the performance part's classic-control tasks run on the numpy backend (lottery_fast/envs/classic.py,
#: gymnasium's dynamics): a population's envs step as one batch there, with a seed per env
_NUMPY_ENVS: Dict[str, Dict[str, Any]] = {
    env: {"ppo": {"env_backend": "numpy"}, "bc": {"expert": {"env_backend": "numpy"}}}
    for env in ("CartPole-v1", "Acrobot-v1")
}

#: per preset: seeds, the config (CLI layout: imp/ppo/bc sections) of each part, and per-env
#: additions to the performance part
PRESETS: Dict[str, Dict[str, Any]] = {
    # minutes on 2 CPU cores: budgets far below what the claims need; the report says so
    "quick": {
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
    # the paper's scale: 20 rounds of 20 % (1.15 % of the weights left), 5 seeds, full budgets
    "full": {
        "seeds": 5,
        "performance": {"imp": {"iterations": 20, "rate": 0.2}, "ppo": {}, "bc": {}},
        "env_overrides": _NUMPY_ENVS,
        "distractors": {"imp": {"iterations": 20, "rate": 0.2, "conditions": "ticket"}, "ppo": {}},
        "minatar": {"imp": {"iterations": 20, "rate": 0.2, "conditions": "ticket"},
                    "ppo": {"total_steps": 2_000_000}},
        "gridworld": {"imp": {"iterations": 20, "rate": 0.2, "conditions": "ticket"},
                      "ppo": {"total_steps": 500_000}},
    },
}


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
        if self.preset not in PRESETS:
            raise ValueError(f"unknown report preset {self.preset!r}; choose from {sorted(PRESETS)}")
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
        from .prune import RESCALE_MODES

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
    preset = PRESETS[cfg.preset]
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
    from .envs.minatar import _import_minatar

    try:
        _import_minatar()
    except ImportError as e:
        return str(e)
    return None


def run_report(cfg: ReportConfig, log: Log = log_to_stderr, events=None) -> Path:
    """Run every experiment of :func:`plan` (resuming finished ones), then write figures and report.md.
    Every experiment's config is checked before the first one trains (and before anything is written)."""
    from .report_writer import write_report

    start = time.perf_counter()
    skipped: Dict[str, str] = {}
    todo: List[Experiment] = []
    for exp in plan(cfg):
        why = minatar_missing() if exp.part == "minatar" else None
        if why is not None:
            skipped[exp.name] = why
            log(f"[{exp.name}] skipped: {why}")
        else:
            todo.append(exp)
    for exp in todo:
        check_experiment(exp)
    runs_dir = cfg.out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(runs_dir / ".gitignore", lambda p: p.write_text("# checkpoints: large and reproducible\n"
                                                                  "seed_*/\n*.pt\n", encoding="utf-8"))
    folders = run_experiments(todo, runs_dir, cfg.jobs, log, population=cfg.population, backend=cfg.backend,
                              address=cfg.address, track=cfg.track, events=events)
    minimal = None
    if "minimality" in cfg.parts:
        minimal = _run_minimality(cfg, folders, log)
    return write_report(cfg, plan(cfg), folders, skipped, minimal, time.perf_counter() - start, log)


def _run_minimality(cfg: ReportConfig, folders: Mapping[str, Path], log: Log):
    from .analysis.minimality import minimality_check, ticket_kept_inputs
    from .imp import RunFolder

    exp = next(e for e in plan(cfg) if e.part == "distractors")
    folder = folders[exp.name]
    seeds = RunFolder(folder).read_experiment()["imp"]["seeds"]
    kept = {int(s): ticket_kept_inputs(folder, int(s))[1] for s in seeds}
    section = dict(exp.config["ppo"])

    def factory(select: Optional[Tuple[int, ...]]):
        return make_trainer("ppo", exp.env_id, {**section, "obs_select": None if select is None else list(select)})

    log(f"[minimality] dense PPO on the kept dims {kept} vs the full input, seeds {list(kept)}")
    return minimality_check(factory, kept, cache_dir=cfg.out / "runs" / "minimality")
