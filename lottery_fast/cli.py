"""``lottery-fast``: argument parsing and progress display only; the work is done by the modules.

    lottery-fast imp  --env CartPole-v1 --paradigm ppo|bc|both|dqn|digits --iterations 20 --rate 0.2 \
                      --seeds 3 --conditions all --out runs/cartpole
    lottery-fast plot runs/cartpole
    lottery-fast masks runs/cartpole   # which input dims the ticket's input layer keeps
    lottery-fast report --preset quick --out runs/report   # the paper's experiments, figures, report.md

Options resolve in this order, later wins: built-in defaults < ``--preset`` < ``--config FILE``
(TOML/YAML with sections [imp], [ppo], [bc], [dqn], [digits] and top-level env/paradigm/out) <
explicit flags < ``--set section.key=value``. Everything is validated (env id, rates, output folder)
before any training starts. Each paradigm writes its own run folder ``OUT/<paradigm>``.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from . import configs
from .experiments import PARADIGMS, make_trainer

#: presets: plain dicts in the config-file layout, so a preset is just a config file you need not write
PRESETS: Dict[str, Dict[str, Any]] = {
    # README's main command: a few IMP iterations on CartPole for RL and BC, minutes on 2 CPU cores
    "quick": {
        "imp": {"iterations": 3, "rate": 0.5, "seeds": 1},
        "ppo": {"total_steps": 150_000, "num_evals": 4},
        "bc": {"expert": {"total_steps": 200_000, "num_evals": 4}},
        "dqn": {"total_steps": 40_000},
        "digits": {},
    },
    # the paper's scale: 20 iterations of 20 % (1.15 % of the weights left), 5 seeds
    "paper": {
        "imp": {"iterations": 20, "rate": 0.2, "seeds": 5},
    },
}

# -- the imp command ----------------------------------------------------------------------------
def _resolve(args: argparse.Namespace) -> Dict[str, Any]:
    """Defaults < preset < config file < flags < --set, as one nested dict."""
    resolved: Dict[str, Any] = {}
    if args.preset:
        resolved = configs.merge(resolved, PRESETS[args.preset])
    if args.config:
        resolved = configs.merge(resolved, configs.load_file(args.config))
    flags: Dict[str, Any] = {}
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
        imp["exclude"] = [] if args.exclude == ["none"] else args.exclude
    if args.layer_rate:
        imp["layer_rates"] = [_layer_rate(t) for t in args.layer_rate]
    if imp:
        flags["imp"] = imp
    resolved = configs.merge(resolved, flags)
    for text in args.set or ():
        resolved = configs.merge(resolved, configs.parse_assignment(text))
    return resolved


def _layer_rate(text: str):
    pattern, sep, rate = text.rpartition("=")
    if not sep or not pattern:
        raise ValueError(f"--layer-rate {text!r}: expected PATTERN=RATE (e.g. actor.head=0.1)")
    return [pattern, float(rate)]


def _check_writable(out: Path) -> None:
    import tempfile

    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-check-"):
            pass
    except OSError as e:
        raise ValueError(f"output folder {out} is not writable: {e.strerror or e}") from None


def cmd_imp(args: argparse.Namespace) -> int:
    import torch

    from .experiments import Experiment, log_to_stderr, run_experiments
    from .imp import RunFolder

    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    torch.set_num_threads(args.threads)
    resolved = _resolve(args)
    paradigm = resolved.get("paradigm", "ppo")
    paradigms = ("ppo", "bc") if paradigm == "both" else (paradigm,)
    for p in paradigms:
        if p not in PARADIGMS:
            raise ValueError(f"unknown paradigm {p!r}; choose from {list(PARADIGMS)} or 'both'")
    env_id = resolved.get("env")
    out = Path(resolved.get("out") or f"runs/{(env_id or paradigm).replace('/', '_')}")
    experiments, own_expert = [], None
    for p in paradigms:
        section = dict(resolved.get(p, {}) or {})
        if p == "bc" and not section.get("expert_path"):
            # one expert file per run: trained once (also by parallel seeds), reused on resume
            own_expert = out / "bc" / "expert.pt"
            section["expert_path"] = str(own_expert)
        experiments.append(Experiment(p, "", env_id, p, {"imp": dict(resolved.get("imp", {}) or {}), p: section}))
    # everything that can be wrong is checked before the first training starts
    for exp in experiments:
        exp.imp()
        make_trainer(exp.paradigm, exp.env_id, dict(exp.config[exp.paradigm]))
    _check_writable(out)
    if args.overwrite:
        for exp in experiments:
            RunFolder(out / exp.name).clear()
        if own_expert is not None and own_expert.exists():
            own_expert.unlink()  # it may come from other expert settings
    run_experiments(experiments, out, jobs=args.jobs, log=log_to_stderr, every_s=10.0,
                    population=args.population == "on")
    print(f"results: {', '.join(str(out / e.name / 'results.csv') for e in experiments)}")
    print(f"plot them with: lottery-fast plot {out}")
    return 0


# -- the plot command ---------------------------------------------------------------------------
def _run_folders(path: Path) -> List[Path]:
    if (path / "results.csv").is_file():
        return [path]
    subs = sorted(p.parent for p in path.glob("*/results.csv"))
    order = {p: i for i, p in enumerate(PARADIGMS)}
    subs.sort(key=lambda p: order.get(p.name, len(order)))
    if not subs:
        raise FileNotFoundError(f"{path}: no results.csv in it or in its sub-folders")
    return subs


def cmd_plot(args: argparse.Namespace) -> int:
    from .analysis.curves import plot_runs

    folders: List[Path] = []
    for p in args.runs:
        folders.extend(_run_folders(Path(p)))
    out = Path(args.out) if args.out else Path(args.runs[0]) / "performance.png"
    names = {"ppo": "RL (PPO)", "bc": "behavioural cloning", "dqn": "RL (DQN)", "digits": "digits (supervised)"}
    titles = [names.get(f.name, f.name) for f in folders]
    plot_runs(folders, out, titles=titles, metric=args.metric, floors=[_floor(f) for f in folders])
    print(out)
    return 0


def _floor(folder: Path) -> float:
    """The run's task floor for normalising (see analysis.curves.RETURN_FLOOR)."""
    from .analysis.curves import return_floor
    from .imp import RunFolder

    return return_floor(RunFolder(folder).read_experiment().get("trainer", {}).get("env_id"))


# -- the masks command --------------------------------------------------------------------------
def cmd_masks(args: argparse.Namespace) -> int:
    from .analysis.run_masks import input_mask_report

    folders = _run_folders(Path(args.run))
    for folder in folders:
        out = None
        if args.out:
            out = Path(args.out) / folder.name if len(folders) > 1 else Path(args.out)
        if out is not None:
            _check_writable(out)
        report = input_mask_report(folder, out, seed=args.seed, layer=args.layer, env_id=args.env)
        print(report.summary())
        for f in report.files:
            print(f"  wrote {f}")
    return 0


# -- the report command -------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    import torch

    from .report import PARTS, ReportConfig, run_report

    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    out = Path(args.out or f"runs/report-{args.preset}")
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip()) if args.parts else PARTS
    envs = tuple(e.strip() for e in args.envs.split(",") if e.strip())
    modes = tuple(m.strip() for m in args.rescale_modes.split(",") if m.strip())
    cfg = ReportConfig(out=out, preset=args.preset, seeds=args.seeds, envs=envs, parts=parts,
                       overrides=tuple(args.set or ()), jobs=args.jobs, rescale_modes=modes,
                       population=args.population == "on")
    _check_writable(out)
    print(run_report(cfg))
    return 0


# -- entry point --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lottery-fast",
        description="Lottery tickets in deep RL: iterative magnitude pruning with the four ticket conditions "
                    "(PPO, behavioural cloning, DQN, digits) and the paper's figures.")
    sub = parser.add_subparsers(dest="command", required=True)

    imp = sub.add_parser("imp", help="run iterative magnitude pruning with the four ticket conditions")
    imp.add_argument("--env", help="environment id (EnvPool, else gymnasium), e.g. CartPole-v1")
    imp.add_argument("--paradigm", help="ppo | bc | both (ppo and bc) | dqn | digits")
    imp.add_argument("--iterations", type=int, help="IMP iterations after the dense round (default 20)")
    imp.add_argument("--rate", type=float, help="fraction of the remaining weights pruned per iteration (0.2)")
    imp.add_argument("--scope", choices=("global", "layerwise"), help="magnitude ranking scope (global)")
    imp.add_argument("--layer-rate", action="append", metavar="PATTERN=RATE",
                     help="prune layers matching PATTERN layer-wise at RATE (e.g. actor.head=0.1); repeatable")
    imp.add_argument("--exclude", nargs="+", metavar="PATTERN",
                     help="module-name patterns never pruned ('none' prunes everything; default: the trainer's)")
    imp.add_argument("--seeds", type=int, help="number of run seeds (0..N-1)")
    imp.add_argument("--conditions", help="all | ticket | comma list of conditions")
    imp.add_argument("--rewind-step", type=int, help="late rewinding to the weights after K optimizer steps")
    imp.add_argument("--rescale", choices=("none", "fan_in", "rms"),
                     help="put every prunable layer's init on one scale before IMP (see prune/rescale.py)")
    imp.add_argument("--threads", type=int, default=1,
                     help="torch threads (default 1: small networks run fastest single-threaded)")
    imp.add_argument("--jobs", type=int, default=1,
                     help="worker processes (default 1: this process); with populations each gets a share of "
                          "the seeds, else one seed at a time")
    imp.add_argument("--population", choices=("on", "off"), default="on",
                     help="on (default): each IMP round's units (seeds x conditions) train together as one "
                          "population where the trainer can (PPO, BC); off: one at a time (the per-agent path, "
                          "whose results differ; a run folder holds one or the other)")
    imp.add_argument("--preset", choices=sorted(PRESETS), help="a named set of defaults (quick: minutes)")
    imp.add_argument("--config", help="TOML or YAML file with [imp], [ppo], [bc], [dqn], [digits] sections")
    imp.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override any config field, e.g. ppo.total_steps=200000; repeatable")
    imp.add_argument("--out", help="output folder (default runs/<env>)")
    imp.add_argument("--overwrite", action="store_true", help="start over instead of resuming an existing run")
    imp.set_defaults(func=cmd_imp)

    plot = sub.add_parser("plot", help="normalised performance vs remaining weights, one line per condition")
    plot.add_argument("runs", nargs="+", help="run folders (or a folder holding ppo/ and bc/ runs)")
    plot.add_argument("--out", help="PNG path (default RUN/performance.png)")
    plot.add_argument("--metric", default="best_metric", choices=("best_metric", "metric"))
    plot.set_defaults(func=cmd_plot)

    masks = sub.add_parser("masks", help="what the ticket's input layer keeps: per input dim (or pixel), per round")
    masks.add_argument("run", help="a run folder (or a folder holding ppo/ and bc/ runs)")
    masks.add_argument("--out", help="output folder for the CSV and PNG (default: the run folder)")
    masks.add_argument("--seed", type=int, help="run seed (default: the run's first)")
    masks.add_argument("--layer", help="input layer name (default: the first prunable layer, e.g. actor.body.0)")
    masks.add_argument("--env", help="env id for naming the input dims (default: the one the run recorded)")
    masks.set_defaults(func=cmd_masks)
    report = sub.add_parser("report", help="run the paper's default experiments; write figures and report.md")
    report.add_argument("--preset", default="quick", choices=("quick", "full"),
                        help="quick: minutes on 2 CPU cores (tiny budgets); full: the paper's scale")
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
    report.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    report.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="(experiment, run seed) pairs trained in parallel, one process each, one torch "
                             "thread each (default: one per CPU core)")
    report.add_argument("--population", choices=("on", "off"), default="on",
                        help="on (default): each IMP round's units (seeds x conditions) train together as one "
                             "population where the trainer can (PPO, BC); off: one at a time (the per-agent path, "
                             "whose results differ; a run folder holds one or the other)")
    report.set_defaults(func=cmd_report)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .imp import RunFolderError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("lottery-fast: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, PermissionError, RunFolderError) as e:
        # bad input and run-folder problems (corrupt checkpoint, another experiment) name their cause
        print(f"lottery-fast: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
