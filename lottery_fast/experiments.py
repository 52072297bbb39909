"""Resolved config dicts (the CLI/config-file layout) -> trainers and :class:`IMPConfig`, and
the runner of IMP experiments: in this process, or one (experiment, run seed) pair per worker.

Shared by ``lottery-fast imp`` and ``lottery-fast report``, so both build and run experiments one way.
"""
from __future__ import annotations

import dataclasses
import functools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from . import configs

def paradigms() -> Tuple[str, ...]:
    """The registered trainers' names (:mod:`lottery_fast.train.registry`): the paradigms and config sections."""
    from .train.registry import trainer_names

    return trainer_names()


def condition_aliases() -> Dict[str, tuple]:
    """``--conditions`` shorthands: ``all`` is every registered condition (the paper's four and any
    a user registered), ``ticket`` the IMP line alone."""
    from .prune import condition_names

    return {"all": condition_names(), "ticket": ("mask/weights",)}


# -- trainers -----------------------------------------------------------------------------------
def make_trainer(paradigm: str, env_id: Optional[str], section: Dict[str, Any]):
    """The registered trainer ``paradigm`` with its config built from the resolved section (validated):
    the section's options override the trainer's defaults for the env, nested tables merge."""
    from .train.registry import trainer_spec

    spec = trainer_spec(paradigm)
    if not isinstance(section, Mapping):
        raise ValueError(f"{paradigm}: expected a table of options, got {section!r}")
    if spec.needs_env and not env_id:
        raise ValueError(f"--env is required for paradigm {paradigm!r} (e.g. --env CartPole-v1)")
    # a nested table set to None means "its defaults" (e.g. bc.expert), not "no table"
    section = {k: v for k, v in section.items() if not (v is None and _is_table(spec.config_class, k))}
    values = configs.merge(dataclasses.asdict(spec.defaults(env_id)), section)
    return spec.make(env_id, configs.build(spec.config_class, values, paradigm))


def _is_table(cls: type, name: str) -> bool:
    import typing

    hint = typing.get_type_hints(cls).get(name)
    return hint is not None and dataclasses.is_dataclass(configs.unwrap_optional(hint))


#: the [imp] options that build the PruneConfig (the rest are IMPConfig's own fields)
_PRUNE_OPTIONS = ("rate", "scope", "layer_rates")


def imp_config(section: Mapping[str, Any]):
    """The :class:`IMPConfig` of a resolved ``imp`` section (CLI layout: ``seeds`` a count or a list,
    ``conditions`` an alias or a comma list, the prune options flat); every value is checked."""
    from .imp import IMPConfig
    from .prune import PruneConfig

    if not isinstance(section, Mapping):
        raise ValueError(f"imp: expected a table of options, got {section!r}")
    section = dict(section)
    valid = sorted({f.name for f in dataclasses.fields(IMPConfig)} - {"prune"} | set(_PRUNE_OPTIONS))
    unknown = sorted(set(section) - set(valid))
    if unknown:
        raise ValueError(f"imp: unknown option(s) {unknown}; valid: {valid}")
    seeds = _seeds(section.pop("seeds", 1))
    conditions = section.pop("conditions", "all")
    if isinstance(conditions, str):
        conditions = condition_aliases().get(conditions, tuple(c.strip() for c in conditions.split(",") if c.strip()))
    elif not isinstance(conditions, (list, tuple)):
        raise ValueError(f"imp.conditions: expected {' or '.join(map(repr, condition_aliases()))}, a comma list or a "
                         f"list of conditions, got {conditions!r}")
    prune_cfg = configs.build(PruneConfig, {k: section.pop(k) for k in _PRUNE_OPTIONS if k in section}, "imp")
    return configs.build(IMPConfig, {**section, "prune": prune_cfg, "seeds": seeds, "conditions": conditions}, "imp")


def _seeds(value: Any):
    """``imp.seeds``: a count N (seeds 0..N-1) or an explicit list (checked as IMPConfig.seeds)."""
    if isinstance(value, (list, tuple)):
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"imp.seeds: expected a number of run seeds (an int >= 1: seeds 0..N-1) or a list "
                         f"of seeds (ints >= 0), got {value!r}")
    return tuple(range(value))


def check_experiment(exp: "Experiment") -> None:
    """Build ``exp``'s trainer and IMP config and run :func:`~lottery_fast.imp.preflight.preflight`:
    everything that can be wrong with an experiment, found before any file of it is written."""
    from .imp.preflight import preflight

    trainer = make_trainer(exp.paradigm, exp.env_id, dict(exp.config.get(exp.paradigm, {}) or {}))
    preflight(trainer, exp.imp())


# -- running experiments --------------------------------------------------------------------------
Log = Callable[[str], None]


def log_to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Experiment:
    """One IMP run: its folder name, the report part it belongs to ("" outside a report), env,
    paradigm and resolved config sections (``imp`` and the paradigm's)."""

    name: str
    part: str
    env_id: Optional[str]
    paradigm: str
    config: Mapping[str, Any] = field(default_factory=dict)

    def imp(self):
        return imp_config(dict(self.config["imp"]))


def run_experiment(exp: Experiment, runs_dir: Path, log: Log = log_to_stderr, seeds: Optional[Sequence[int]] = None,
                   every_s: Optional[float] = None, population: bool = True, track: str = "none",
                   events: Optional[Callable[[str, Any], None]] = None) -> Path:
    """Run (or resume) ``runs_dir/exp.name``, or only ``seeds`` of it (see :func:`run_imp`; each round's
    units train as one population unless ``population`` is False); progress lines go to ``log``
    (trainer progress too, every ``every_s`` seconds, if given), or, with ``events``, every progress
    event goes there as (label, event) instead. ``track`` (see :mod:`lottery_fast.tracking`) writes
    each training's scalars under ``runs_dir``. Returns the folder."""
    from .imp import run_imp
    from .imp.progress import ProgressLines

    trainer = make_trainer(exp.paradigm, exp.env_id, dict(exp.config.get(exp.paradigm, {}) or {}))
    imp = exp.imp()
    tag = exp.name if seeds is None else f"{exp.name} seed {','.join(map(str, seeds))}"
    folder = runs_dir / exp.name
    log(f"[{tag}] {exp.env_id or exp.paradigm} {exp.paradigm}: {imp.iterations} iterations at rate "
        f"{imp.prune.rate}, seeds {list(imp.seeds) if seeds is None else list(seeds)}, conditions "
        f"{list(imp.conditions)}, folder {folder}")
    callbacks = [ProgressLines(tag, log, every_s) if events is None else functools.partial(events, tag)]
    if track != "none":
        from .tracking import Tracker

        callbacks.append(Tracker(track, runs_dir, exp.name))
    run_imp(trainer, imp, folder, on_progress=callbacks[0] if len(callbacks) == 1 else _Fanout(callbacks),
            seeds=seeds, population=population)
    return folder


class _Fanout:
    def __init__(self, callbacks) -> None:
        self.callbacks = callbacks

    def __call__(self, event) -> None:
        for callback in self.callbacks:
            callback(event)


def seed_groups(seeds: Sequence[int], groups: int) -> List[Tuple[int, ...]]:
    """``seeds`` dealt round-robin into at most ``groups`` non-empty groups (one population each)."""
    n = max(1, min(groups, len(seeds)))
    return [tuple(seeds[i::n]) for i in range(n)]


def run_experiments(experiments: Sequence[Experiment], runs_dir: Path, jobs: int = 1, log: Log = log_to_stderr,
                    every_s: Optional[float] = None, population: bool = True, backend: Any = "local",
                    address: Optional[str] = None, track: str = "none",
                    events: Optional[Callable[[str, Any], None]] = None) -> Dict[str, Path]:
    """Run the experiments: in this process when ``jobs`` is 1, else in worker processes, ``jobs``
    at a time (the seeds of an IMP run are independent), and then each folder's results.csv here.
    A worker trains one (experiment, seed group) pair: with ``population`` an experiment's seeds are
    split into ``jobs`` groups, each trained as populations round by round; without it, one seed
    per worker. Workers log to stderr (or send their events to ``events``).

    ``backend`` (:mod:`lottery_fast.backends`): "local" (the above), "ray" (every pair a Ray task, on
    a local instance or the cluster at ``address``), or a backend object. ``track``: see
    :mod:`lottery_fast.tracking`."""
    from .backends import TaskOptions, make_backend

    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    runner = make_backend(backend, jobs, address) if isinstance(backend, str) else backend
    tasks = [(exp, group) for exp in experiments
             for group in (seed_groups(exp.imp().seeds, jobs) if population else [(s,) for s in exp.imp().seeds])]
    elsewhere = backend != "local" or (jobs > 1 and len(tasks) > 1)
    if elsewhere:
        runner.run(tasks, TaskOptions(runs_dir, every_s, population, track), events)
    # after the workers every unit is trained: this checks the folders and writes results.csv
    return {exp.name: run_experiment(exp, runs_dir, log, every_s=every_s, population=population, track=track,
                                     events=None if elsewhere else events)
            for exp in experiments}


def finished_units(experiments: Sequence[Experiment], runs_dir: Path) -> Tuple[int, int]:
    """(finished, total) units of the experiments' run folders (for saying what an interrupted study kept)."""
    from .imp import RunFolder

    done = total = 0
    for exp in experiments:
        imp = exp.imp()
        total += len(imp.seeds) * (1 + imp.iterations * len(imp.conditions))
        folder = RunFolder(runs_dir / exp.name)
        # a unit's record is written last, atomically: counting them is enough (and cheap)
        done += sum(len(list(folder.seed_dir(s).glob("iter_*/*.json"))) for s in imp.seeds)
    return done, total
