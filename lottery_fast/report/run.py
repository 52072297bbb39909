"""Run a report: every experiment of the plan (resuming finished ones), the minimality check, then render."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

from .._atomic import atomic_write
from ..experiments import Experiment, Log, check_experiment, log_to_stderr, make_trainer, run_experiments
from .plan import ReportConfig, minatar_missing, plan
from .render import write_report


def run_report(cfg: ReportConfig, log: Log = log_to_stderr, events=None) -> Path:
    """Run every experiment of :func:`plan` (resuming finished ones), then write figures and report.md.
    Every experiment's config is checked before the first one trains (and before anything is written)."""
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
    from ..analysis.minimality import minimality_check, ticket_kept_inputs
    from ..imp import RunFolder

    exp = next(e for e in plan(cfg) if e.part == "distractors")
    folder = folders[exp.name]
    seeds = RunFolder(folder).read_experiment()["imp"]["seeds"]
    kept = {int(s): ticket_kept_inputs(folder, int(s))[1] for s in seeds}
    section = dict(exp.config["ppo"])

    def factory(select: Optional[Tuple[int, ...]]):
        return make_trainer("ppo", exp.env_id, {**section, "obs_select": None if select is None else list(select)})

    log(f"[minimality] dense PPO on the kept dims {kept} vs the full input, seeds {list(kept)}")
    return minimality_check(factory, kept, cache_dir=cfg.out / "runs" / "minimality")
