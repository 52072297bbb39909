"""``lottery-fast``: argument parsing and progress display only; the work is done by the modules.

    lottery-fast imp  --env CartPole-v1 --paradigm ppo|bc|both|dqn|digits --iterations 20 --rate 0.2 \
                      --seeds 3 --conditions all --out runs/cartpole
    lottery-fast plot runs/cartpole
    lottery-fast masks runs/cartpole   # which input dims the ticket's input layer keeps
    lottery-fast report --preset quick --out runs/report   # the paper's experiments, figures, report.md

Options resolve in this order, later wins: built-in defaults < ``--preset`` (lottery_fast/presets.py,
shared with ``report``) < ``--config FILE`` (TOML/YAML with sections [imp] and one per registered
trainer: [ppo], [bc], [dqn], [digits]; top-level env/paradigm/out) < explicit flags (including the
``--SECTION.OPTION`` flags generated from the trainer configs) < ``--set section.key=value``; an
unknown section or key is an error. CleanRL's names (learning_rate, total_timesteps, env_id) are
accepted everywhere; list flags take comma lists; ``--print-config`` prints the resolved config.
See docs/architecture.md. Everything is
validated (env id, rates, types, patterns against the model, rewind step, output folder) before any
file is written. Each paradigm writes its own run folder ``OUT/<paradigm>``.

Errors of the input or the environment (a full disk, an unwritable path) are one line and exit 2;
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from . import configs
from .experiments import check_experiment, paradigms
from .presets import get_preset, preset_names

#: the top-level keys of an imp config (a file, a preset, ``--set``); its sections are imp and the trainers'
TOP_LEVEL_KEYS = ("env", "paradigm", "out")


def sections() -> Tuple[str, ...]:
    """The sections of an imp config: ``imp`` and one per registered trainer."""
    return ("imp", *paradigms())


class CommandError(Exception):
    """A failure the command reports in one line (exit 2): its message names the path and what to do."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM stopped a study: its message says what finished (exit 130)."""


def thread_options(threads: int, names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """``--threads`` for every trainer config (of the sections ``names``, default all) with its own
    thread count (a ``num_threads`` field, also in nested configs such as BC's expert), which would
    otherwise override the flag while training."""
    import dataclasses
    import typing

    from .train.registry import trainer_spec

    def options(cls: type) -> Dict[str, Any]:
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        out: Dict[str, Any] = {"num_threads": threads} if "num_threads" in names else {}
        for f in dataclasses.fields(cls):
            inner = configs.unwrap_optional(hints[f.name])
            if dataclasses.is_dataclass(inner) and options(inner):
                out[f.name] = options(inner)
        return out

    every = {s: options(trainer_spec(s).config_class) for s in paradigms()}
    return {s: opts for s, opts in every.items() if opts and (names is None or s in names)}


def _out_path(value: Any, where: str = "--out") -> Optional[Path]:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: expected a folder path, got {value!r}")
    return Path(value)


# -- the imp command ----------------------------------------------------------------------------
def _resolve(args: argparse.Namespace) -> Dict[str, Any]:
    """Defaults < preset < config file < flags < --set, as one nested dict."""
    resolved: Dict[str, Any] = {}
    if args.preset:
        resolved = configs.merge(resolved, get_preset(args.preset, "imp").for_command("imp", args.preset))
    if args.config:
        data = configs.canonical_names(configs.load_file(args.config), f"config file {args.config}")
        configs.check_top_level(data, sections(), TOP_LEVEL_KEYS, f"config file {args.config}")
        resolved = configs.merge(resolved, data)
    flags: Dict[str, Any] = thread_options(args.threads) if args.threads is not None else {}
    for key in ("env", "paradigm", "out"):
        if getattr(args, key) is not None:
            flags[key] = getattr(args, key)
    imp: Dict[str, Any] = {}
    for key in ("iterations", "rate", "scope", "rewind_step", "rescale"):
        if getattr(args, key) is not None:
            imp[key] = getattr(args, key)
    if args.seeds is not None:
        imp["seeds"] = args.seeds
    if args.conditions is not None:
        imp["conditions"] = args.conditions
    if args.exclude is not None:
        exclude = _comma_items(args.exclude)
        imp["exclude"] = [] if exclude == ["none"] else exclude
    if args.layer_rate:
        imp["layer_rates"] = [_layer_rate(t) for t in _comma_items(args.layer_rate)]
    if imp:
        flags["imp"] = imp
    flags = configs.merge(flags, configs.flag_values(args, getattr(args, "config_flags", {})))
    resolved = configs.merge(resolved, flags)
    for text in args.set or ():
        assignment = configs.canonical_names(configs.parse_assignment(text), f"--set {text!r}")
        configs.check_top_level(assignment, sections(), TOP_LEVEL_KEYS, f"--set {text!r}")
        resolved = configs.merge(resolved, assignment)
    for key in ("env", "paradigm"):
        if resolved.get(key) is not None and not isinstance(resolved[key], str):
            raise ValueError(f"{key}: expected a string, got {resolved[key]!r}")
    return resolved


def _comma_items(tokens: Sequence[str]) -> List[str]:
    """The items of a list flag: comma lists, the flag repeated (or, for --exclude, several words) joined."""
    return [t.strip() for token in tokens for t in token.split(",") if t.strip()]


def _layer_rate(text: str):
    pattern, sep, rate = text.rpartition("=")
    if not sep or not pattern:
        raise ValueError(f"--layer-rate {text!r}: expected PATTERN=RATE (e.g. actor.head=0.1)")
    try:
        return [pattern, float(rate)]
    except ValueError:
        raise ValueError(f"--layer-rate {text!r}: RATE {rate!r} is not a number (e.g. actor.head=0.1)") from None


def _check_writable(out: Path, what: str = "output folder") -> None:
    """Refuse a folder that cannot be written, creating nothing: the check writes (and removes) a
    temp file in the nearest folder that exists, which the command would create ``out`` in."""
    import tempfile

    existing = out
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{existing} is a file, not a folder")
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".write-check-"):
            pass
    except OSError as e:
        raise ValueError(f"{what} {out} is not writable: {e.strerror or e}") from None


#: what torch.save's zip writer raises (a RuntimeError) when a write fails, as on a full disk
_TORCH_WRITE_FAILED = ("PytorchStreamWriter failed", "unexpected pos", "file write failed")
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _write_failure(e: BaseException) -> Optional[str]:
    """Why ``e`` is a failed write of a run file (a full disk), or None if it is something else."""
    if isinstance(e, OSError) and e.errno in _DISK_FULL:
        return e.strerror or str(e)
    text = str(e)
    if isinstance(e, RuntimeError) and "inline_container.cc" in text and any(m in text for m in _TORCH_WRITE_FAILED):
        return "torch.save: " + text.split("] ", 1)[-1].lstrip(". ")
    return None


@contextlib.contextmanager
def _writing_under(folder: Path) -> Iterator[None]:
    """A full disk while files are written under ``folder`` becomes one line saying what to do.
    Every run file is written atomically, so what was finished before is intact and a rerun resumes."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        why = _write_failure(e)
        if why is None:
            raise
        raise CommandError(f"writing under {folder} failed ({why}): is the disk full? Finished work is kept: "
                           f"free some space and rerun the same command to resume") from None


def cmd_imp(args: argparse.Namespace) -> int:
    import torch

    from .experiments import Experiment, log_to_stderr, run_experiments
    from .imp import RunFolder

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    torch.set_num_threads(args.threads or 1)
    resolved = _resolve(args)
    paradigm = resolved.get("paradigm", "ppo")
    chosen = ("ppo", "bc") if paradigm == "both" else (paradigm,)
    for p in chosen:
        if p not in paradigms():
            raise ValueError(f"unknown paradigm {p!r}; choose from {list(paradigms())} or 'both'")
    env_id = resolved.get("env")
    out = _out_path(resolved.get("out"), "out (--out)") or Path(f"runs/{(env_id or paradigm).replace('/', '_')}")
    experiments, own_expert = [], None
    for p in chosen:
        section = dict(resolved.get(p, {}) or {})
        if p == "bc" and not section.get("expert_path"):
            # one expert file per run: trained once (also by parallel seeds), reused on resume
            own_expert = out / "bc" / "expert.pt"
            section["expert_path"] = str(own_expert)
        experiments.append(Experiment(p, "", env_id, p, {"imp": dict(resolved.get("imp", {}) or {}), p: section}))
    if args.print_config:
        print(_config_text({"env": env_id, "paradigm": paradigm, "out": str(out)}, experiments))
        return 0
    # everything that can be wrong is checked before the first file is written
    for exp in experiments:
        check_experiment(exp)
    scheduling = _scheduling(args)
    _check_writable(out)
    with _writing_under(out), _interrupted(experiments, out), _progress() as (log, events):
        if args.overwrite:
            for exp in experiments:
                RunFolder(out / exp.name).clear()
            if own_expert is not None and own_expert.exists():
                own_expert.unlink()  # it may come from other expert settings
        run_experiments(experiments, out, jobs=args.jobs, log=log, every_s=10.0,
                        population=args.population == "on", events=events, **scheduling)
    print(f"results: {', '.join(str(out / e.name / 'results.csv') for e in experiments)}")
    print(f"plot them with: lottery-fast plot {out}")
    return 0


def _scheduling(args: argparse.Namespace) -> Dict[str, Any]:
    """--backend, --address and --track, checked (Ray and the tracker's package importable)."""
    from .backends import make_backend
    from .tracking import check_tracker

    check_tracker(args.track)
    if args.backend == "ray" or args.address is not None:
        make_backend(args.backend, 1, args.address)
    return {"backend": args.backend, "address": args.address, "track": args.track}


@contextlib.contextmanager
def _progress() -> Iterator[tuple]:
    """(log, events) for run_experiments: a live display in a terminal, else today's plain lines."""
    from .experiments import log_to_stderr

    if not sys.stderr.isatty():
        yield log_to_stderr, None
        return
    from .live import LiveDisplay

    display = LiveDisplay(sys.stderr)
    try:
        yield display.write, display
    finally:
        display.close()


@contextlib.contextmanager
def _interrupted(experiments: Sequence[Any], runs_dir: Path) -> Iterator[None]:
    """Ctrl-C or SIGTERM while training: say how many units finished (each is kept: run files are
    written atomically, a file being written when the signal came is removed)."""
    try:
        yield
    except KeyboardInterrupt:
        from .experiments import finished_units

        done, total = finished_units(experiments, runs_dir)
        raise Interrupted(f"{done} of {total} units finished, kept in {runs_dir}") from None


def resume_command(argv: Sequence[str]) -> str:
    """The command that resumes a study started with ``argv`` (without --overwrite, which would delete it)."""
    import shlex

    return "lottery-fast " + " ".join(shlex.quote(a) for a in argv if a != "--overwrite")


def _config_text(top: Dict[str, Any], experiments: Sequence[Any]) -> str:
    """The resolved configs of ``experiments`` (every option, defaults included) as JSON: each built and
    validated as the run would build it."""
    import dataclasses
    import json

    from .experiments import make_trainer

    out: Dict[str, Any] = dict(top)
    for exp in experiments:
        trainer = make_trainer(exp.paradigm, exp.env_id, dict(exp.config.get(exp.paradigm, {}) or {}))
        entry = {"imp": exp.imp().to_json(), exp.paradigm: json.loads(json.dumps(dataclasses.asdict(trainer.config)))}
        if len(experiments) == 1 and not exp.part:
            out.update(entry)
        else:
            out[exp.name] = {"env": exp.env_id, "paradigm": exp.paradigm, **entry}
    return json.dumps(out, indent=2)


# -- the plot command ---------------------------------------------------------------------------
def _run_folders(path: Path) -> List[Path]:
    if (path / "results.csv").is_file():
        return [path]
    subs = sorted(p.parent for p in path.glob("*/results.csv"))
    order = {p: i for i, p in enumerate(paradigms())}
    subs.sort(key=lambda p: order.get(p.name, len(order)))
    if not subs:
        raise FileNotFoundError(f"{path}: no results.csv in it or in its sub-folders")
    return subs


def cmd_plot(args: argparse.Namespace) -> int:
    from .analysis.curves import figure_format, plot_runs

    out = _out_path(args.out) or Path(args.runs[0]) / "performance.png"
    try:
        figure_format(out)
    except ValueError as e:
        raise ValueError(f"--out {e}") from None
    _check_writable(out.parent, f"--out {out}: its folder")
    folders: List[Path] = []
    for p in args.runs:
        folders.extend(_run_folders(Path(p)))
    from .train.registry import display_name

    titles = [display_name(f.name) for f in folders]
    floors = [_floor(f) for f in folders]
    with _writing_under(out.parent):
        plot_runs(folders, out, titles=titles, metric=args.metric, floors=floors)
    print(out)
    return 0


def _floor(folder: Path) -> float:
    """The run's task floor for normalising (see analysis.curves.RETURN_FLOOR)."""
    from .analysis.curves import return_floor
    from .analysis.recorded import recorded_experiment

    experiment = recorded_experiment(folder, "plot (to normalise by the env's return floor)")
    return return_floor(experiment.get("trainer", {}).get("env_id"))


# -- the masks command --------------------------------------------------------------------------
def cmd_masks(args: argparse.Namespace) -> int:
    from .analysis.run_masks import input_mask_report

    folders = _run_folders(Path(args.run))
    base = _out_path(args.out)
    for folder in folders:
        out = None if base is None else base / folder.name if len(folders) > 1 else base
        _check_writable(folder if out is None else out)
        with _writing_under(folder if out is None else out):
            report = input_mask_report(folder, out, seed=args.seed, layer=args.layer, env_id=args.env)
        print(report.summary())
        for f in report.files:
            print(f"  wrote {f}")
    return 0


# -- the retrain command ------------------------------------------------------------------------
def _retrain_units(folder: Path, spec: str, threshold: float) -> List[Tuple[int, int, str]]:
    """``--units``: ``break`` (each seed's ticket at its break level and one level sparser) or a comma
    list of ``SEED:ITERATION[:CONDITION]`` (the ticket when no condition is given)."""
    from .analysis.break_levels import break_levels
    from .imp import TICKET, load_results

    if spec == "break":
        rows = load_results(folder)
        last = max(int(r["iteration"]) for r in rows)
        units = []
        for seed, b in break_levels(rows, TICKET, "best_metric", threshold, _floor(folder)).items():
            if b.iteration is not None:
                units += [(seed, it, TICKET) for it in (b.iteration, b.iteration + 1) if it <= last]
        if not units:
            raise CommandError(f"{folder}: no seed's ticket falls below {threshold:g} of its dense return, so "
                               f"there is no break level to retrain at; name units with --units SEED:ITERATION")
        return units
    units = []
    for item in _comma_items([spec]):
        parts = item.split(":", 2)
        try:
            seed, it = int(parts[0]), int(parts[1])
        except (ValueError, IndexError):
            raise CommandError(f"--units {item!r}: expected SEED:ITERATION[:CONDITION], e.g. 3:12 or "
                               f"3:12:random/reinit") from None
        units.append((seed, it, parts[2] if len(parts) == 3 else TICKET))
    return units


def cmd_retrain(args: argparse.Namespace) -> int:
    """Train finished units of a run again under changed trainer options (e.g. twice the budget)."""
    from .analysis.recorded import recorded_experiment
    from .experiments import make_trainer
    from .imp.retrain import retrain

    folder = Path(args.run)
    experiment = recorded_experiment(folder, "retrain")
    desc = experiment.get("trainer", {})
    paradigm, env_id = desc.get("name"), desc.get("env_id")
    section = dict(desc.get("config") or {})
    for text in args.set or ():
        assignment = configs.canonical_names(configs.parse_assignment(text), "--set")
        if set(assignment) != {paradigm}:
            raise CommandError(f"--set {text!r}: this run's trainer is {paradigm!r}; set {paradigm}.<option>")
        section = configs.merge(section, assignment[paradigm])
    trainer = make_trainer(paradigm, env_id, section)
    units = _retrain_units(folder, args.units, args.threshold)
    out = _out_path(args.out)
    _check_writable(out)
    with _writing_under(out):
        rows = retrain(folder, trainer, units, out, population=args.population == "on")
    for r in rows:
        print(f"seed {r['seed']} iter {r['iteration']:>3} {r['condition']:<18} density {100 * r['density']:.3g}% "
              f"metric {r['metric']:.4g} best {r['best_metric']:.4g}")
    print(f"results: {out / 'results.csv'}")
    return 0


# -- the report command -------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    import torch

    from .report import PARTS, SECTIONS as REPORT_SECTIONS, ReportConfig, plan, run_report

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads or 1)
    out = _out_path(args.out) or Path(f"runs/report-{args.preset}")
    parts = PARTS if args.parts is None else _comma_list(args.parts, "--parts", PARTS)
    envs = _comma_list(args.envs, "--envs")
    modes = _comma_list(args.rescale_modes, "--rescale-modes")
    threads = [] if args.threads is None else _assignments(thread_options(args.threads, REPORT_SECTIONS))
    cfg = ReportConfig(out=out, preset=args.preset, seeds=args.seeds, envs=envs, parts=parts,
                       overrides=(*threads, *(args.set or ())), jobs=args.jobs, rescale_modes=modes,
                       population=args.population == "on", **_scheduling(args))
    if args.print_config:
        print(_config_text({"out": str(out), "preset": args.preset}, plan(cfg)))
        return 0
    _check_writable(out)
    with _writing_under(out), _interrupted(plan(cfg), out / "runs"), _progress() as (log, events):
        folder = run_report(cfg, log, events)
    print(folder)
    return 0


def _comma_list(text: str, option: str, choices: Sequence[str] = ()) -> tuple:
    items = tuple(t.strip() for t in text.split(",") if t.strip())
    if not items:
        raise ValueError(f"{option} {text!r} names nothing" + (f"; choose from {','.join(choices)}" if choices else ""))
    return items


def _assignments(tree: Dict[str, Any], prefix: str = "") -> List[str]:
    """A nested option dict as ``--set`` assignments."""
    out: List[str] = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += _assignments(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={value}")
    return out


def _trainer_flags(parser: argparse.ArgumentParser) -> Dict[str, Tuple[str, ...]]:
    """``--SECTION.OPTION`` flags of every registered trainer's config, one help group per trainer."""
    from .train.registry import trainer_spec

    specs = [trainer_spec(name) for name in paradigms()]
    dests: Dict[str, Tuple[str, ...]] = {}
    for spec in specs:
        group = parser.add_argument_group(
            f"{spec.name} options ({spec.display_name}; any other with --set {spec.name}.OPTION=VALUE)")
        others = tuple(s.config_class for s in specs if s is not spec)  # bc.expert is a PPO config: --set
        dests.update(configs.add_config_flags(group, spec.name, spec.config_class, skip=others))
    return dests


# -- entry point --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lottery-fast",
        description="Lottery tickets in deep RL: iterative magnitude pruning with the four ticket conditions "
                    "(PPO, behavioural cloning, DQN, digits) and the paper's figures.")
    sub = parser.add_subparsers(dest="command", required=True)

    imp = sub.add_parser("imp", help="run iterative magnitude pruning with the four ticket conditions")
    imp.add_argument("--env", "--env-id", help="environment id (EnvPool, else gymnasium), e.g. CartPole-v1")
    imp.add_argument("--paradigm", help="ppo | bc | both (ppo and bc) | dqn | digits")
    imp.add_argument("--iterations", type=int, help="IMP iterations after the dense round (default 20)")
    imp.add_argument("--rate", type=float, help="fraction of the remaining weights pruned per iteration (0.2)")
    imp.add_argument("--scope", choices=("global", "layerwise"), help="magnitude ranking scope (global)")
    imp.add_argument("--layer-rate", action="append", metavar="PATTERN=RATE",
                     help="prune layers matching PATTERN layer-wise at RATE (e.g. actor.head=0.1); a comma list, "
                          "or repeat the flag")
    imp.add_argument("--exclude", nargs="+", metavar="PATTERN[,PATTERN...]",
                     help="module-name patterns never pruned, a comma list ('none' prunes everything; default: "
                          "the trainer's)")
    imp.add_argument("--seeds", type=int, help="number of run seeds (0..N-1)")
    imp.add_argument("--conditions", help="all | ticket | comma list of conditions")
    imp.add_argument("--rewind-step", type=int, help="late rewinding to the weights after K optimizer steps")
    imp.add_argument("--rescale", choices=("none", "fan_in", "rms"),
                     help="put every prunable layer's init on one scale before IMP (see prune/rescale.py)")
    imp.add_argument("--threads", type=int,
                     help="torch threads, also of PPO/BC/DQN training (default 1: small networks run fastest "
                          "single-threaded)")
    imp.add_argument("--jobs", type=int, default=1,
                     help="worker processes (default 1: this process); with populations each gets a share of "
                          "the seeds, else one seed at a time")
    _scaleout_flags(imp)
    imp.add_argument("--preset", choices=preset_names("imp"),
                     help="a named set of defaults (quick: minutes; paper: the paper's rounds and budgets, 5 seeds; full = paper)")
    imp.add_argument("--config", help="TOML or YAML file with [imp], [ppo], [bc], [dqn], [digits] sections")
    imp.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override any config field, e.g. ppo.total_steps=200000; repeatable")
    imp.add_argument("--out", help="output folder (default runs/<env>)")
    imp.add_argument("--overwrite", action="store_true", help="start over instead of resuming an existing run")
    imp.add_argument("--print-config", action="store_true",
                     help="print the resolved config (every option, defaults included) as JSON and exit")
    imp.set_defaults(func=cmd_imp, config_flags=_trainer_flags(imp))

    plot = sub.add_parser("plot", help="normalised performance vs remaining weights, one line per condition")
    plot.add_argument("runs", nargs="+", help="run folders (or a folder holding ppo/ and bc/ runs)")
    plot.add_argument("--out", help="figure path; its suffix picks the format, e.g. .png, .pdf, .svg "
                                    "(default RUN/performance.png)")
    plot.add_argument("--metric", default="best_metric", choices=("best_metric", "metric"))
    plot.set_defaults(func=cmd_plot)

    masks = sub.add_parser("masks", help="what the ticket's input layer keeps: per input dim (or pixel), per round")
    masks.add_argument("run", help="a run folder (or a folder holding ppo/ and bc/ runs)")
    masks.add_argument("--out", help="output folder for the CSV and PNG (default: the run folder)")
    masks.add_argument("--seed", type=int, help="run seed (default: the run's first)")
    masks.add_argument("--layer", help="input layer name (default: the first prunable layer, e.g. actor.body.0)")
    masks.add_argument("--env", help="env id for naming the input dims (default: the one the run recorded)")
    masks.set_defaults(func=cmd_masks)
    again = sub.add_parser("retrain", help="train finished units of a run again with changed options "
                                           "(claim 1's control: twice the budget at the break level)")
    again.add_argument("run", help="an IMP run folder (e.g. OUT/ppo)")
    again.add_argument("--out", required=True, help="output folder (results.csv and one record per unit)")
    again.add_argument("--units", default="break",
                       help="'break' (default: each seed's ticket at its break level and one level sparser) or "
                            "a comma list of SEED:ITERATION[:CONDITION]")
    again.add_argument("--threshold", type=float, default=0.95,
                       help="share of the seed's dense return that defines the break level (default 0.95)")
    again.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="change a trainer option, e.g. ppo.total_steps=1000000; repeatable")
    again.add_argument("--population", choices=("on", "off"), default="on",
                       help="train the units as one population where the trainer can (default on)")
    again.set_defaults(func=cmd_retrain)

    report = sub.add_parser("report", help="run the paper's default experiments; write figures and report.md")
    report.add_argument("--preset", default="quick", choices=preset_names("report"),
                        help="quick: minutes on 2 CPU cores (tiny budgets); paper (or full): the paper's rounds and budgets, 5 seeds")
    report.add_argument("--out", help="output folder (default runs/report-<preset>)")
    report.add_argument("--seeds", type=int, help="run seeds 0..N-1 for every experiment (default: the preset's)")
    report.add_argument("--envs", default="CartPole-v1,Acrobot-v1", help="envs of the RL-vs-BC part (comma list)")
    report.add_argument("--parts", help="comma list of performance,distractors,minimality,minatar,gridworld,"
                                        "rescale (default: all)")
    report.add_argument("--rescale-modes", default="none,fan_in,rms",
                        help="init rescaling modes the rescale part compares, the first as the baseline "
                             "(comma list of none,fan_in,rms; default none,fan_in,rms)")
    report.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a config field in every experiment, e.g. ppo.total_steps=100000")
    report.add_argument("--threads", type=int, help="torch threads of every experiment (default 1)")
    report.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="(experiment, run seed) pairs trained in parallel, one process each, one torch "
                             "thread each (default: one per CPU core)")
    _scaleout_flags(report)
    report.add_argument("--print-config", action="store_true",
                        help="print every experiment's resolved config as JSON and exit")
    report.set_defaults(func=cmd_report)
    return parser


def _scaleout_flags(command: argparse.ArgumentParser) -> None:
    """How a study's trainings are scheduled, shared by imp and report: --population, --backend,
    --address and --track."""
    command.add_argument("--population", choices=("on", "off"), default="on",
                         help="on (default): each IMP round's units (seeds x conditions) train together as one "
                              "population where the trainer can (PPO, BC); off: one at a time (the per-agent "
                              "path, whose results differ; a run folder holds one or the other)")
    from .backends import BACKENDS
    from .tracking import TRACKERS

    command.add_argument("--backend", choices=BACKENDS, default="local",
                         help="where the tasks run: local (default: --jobs worker processes here) or ray "
                              "(Ray tasks on a local Ray instance, or the cluster at --address; run folders "
                              "must be on a path every node shares); see docs/scaleout.md")
    command.add_argument("--address", help="the Ray cluster to join (--backend ray), e.g. auto or ray://head:10001")
    command.add_argument("--track", choices=TRACKERS, default="none",
                         help="write every training's scalars (CleanRL's names) for TensorBoard (OUT/tensorboard) "
                              "or W&B (WANDB_MODE=offline works without network); default none")


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .imp import RunFolderError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        with _sigterm_interrupts():
            return int(args.func(args) or 0)
    except Interrupted as e:
        print(f"lottery-fast: interrupted: {e}; resume with: {resume_command(argv)}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"lottery-fast: interrupted; resume with: {resume_command(argv)}", file=sys.stderr)
        return 130
    except RunFolderError as e:
        # the run folder's messages name run_imp's keyword; here the choice is the flag, which
        # deletes the whole run, so the message says so
        text = str(e).replace("overwrite=True", "--overwrite (which deletes every finished unit of the run)")
        print(f"lottery-fast: error: {text}", file=sys.stderr)
        return 2
    except (ValueError, OSError, CommandError) as e:
        # bad input, unusable paths and full disks name their cause; anything else (a TypeError,
        # say) is a bug and keeps its traceback
        print(f"lottery-fast: error: {e}", file=sys.stderr)
        return 2


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (a scheduler's stop, ``kill``) stops the command as Ctrl-C does."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from .backends import interrupt_on_sigterm

    before = signal.getsignal(signal.SIGTERM)
    interrupt_on_sigterm()
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


if __name__ == "__main__":
    sys.exit(main())
