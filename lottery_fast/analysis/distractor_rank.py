"""Do distractors lose their input weights before the task's own dims? A rank statistic per IMP round.

"Fully pruned at the end" is a threshold judgement on one mask: a distractor left with 3 of 64
weights counts as kept, and a seed where every dim drops to a handful says nothing. The statistic
here orders the dims in every round instead: in round k of seed s, a distractor group *holds* when
every dim of the group keeps strictly fewer input weights (surviving entries of its column in the
input layer's mask) than the weakest task dim. Over rounds and seeds that gives a share, and a
graded companion, ``pair_share``: the share of (task dim, group dim) pairs ordered the right way
(ties count one half; the Mann-Whitney U / AUC of "group dim keeps fewer").

Roles of the input dims come from the run's distractor specs (:mod:`lottery_fast.envs.distractors`):

* ``noise`` (gaussian, uniform): pure distractors;
* ``constant``: scored on its own, since a constant input times its weights is a second bias and a
  network may well keep it;
* ``copy`` (a copy of a task dim): redundant, not useless: keeping either the source or the copy
  keeps the information. A source and its copies count as one task dim whose strength is the
  larger of their counts, and the group's dim is the weaker of the pair (the redundant one).

Rounds whose input layer is still dense (every weight of it kept, e.g. round 0) order nothing and
are left out of the shares (listed with ``scored`` False).
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..imp import TICKET, load_mask_history
from .input_mask import InputDimSurvival, input_dim_survival
from .recorded import recorded_experiment

PathLike = Union[str, Path]
GROUPS = ("noise", "copy", "constant")


@dataclass(frozen=True)
class DimRoles:
    """Which input columns are task dims and which are distractors of each kind.

    ``copies`` pairs each copy column with the task column it copies.
    """

    task: Tuple[int, ...]
    noise: Tuple[int, ...] = ()
    constant: Tuple[int, ...] = ()
    copies: Tuple[Tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if not self.task:
            raise ValueError("DimRoles: at least one task dim is needed to rank distractors against")
        cols = [*self.task, *self.noise, *self.constant, *(c for c, _ in self.copies)]
        if len(set(cols)) != len(cols) or min(cols) < 0:
            raise ValueError(f"DimRoles: every input column must have exactly one role (>= 0), got {cols}")
        bad = [(c, s) for c, s in self.copies if s not in self.task]
        if bad:
            raise ValueError(f"DimRoles: copies {bad} copy a column that is not a task dim {self.task}")

    @property
    def width(self) -> int:
        return 1 + max([*self.task, *self.noise, *self.constant, *(c for c, _ in self.copies)])

    def group(self, name: str) -> Tuple[int, ...]:
        if name == "copy":
            return tuple(c for c, _ in self.copies)
        if name not in GROUPS:
            raise ValueError(f"unknown distractor group {name!r}; groups are {GROUPS}")
        return getattr(self, name)


def dim_roles(distractors: Sequence[str], width: int, base_names: Optional[Sequence[str]] = None) -> DimRoles:
    """Roles of a ``width``-input layer whose last ``len(distractors)`` inputs are these distractor specs;
    ``base_names`` (the task dims' names) resolve copies given by name (``"copy:pole angle"``)."""
    from ..envs.distractors import parse_distractor, resolve_source

    specs = [parse_distractor(d) for d in distractors]
    base = width - len(specs)
    if base < 1:
        raise ValueError(f"an input layer of {width} inputs cannot hold {len(specs)} distractors plus a task dim")
    names = list(base_names) if base_names is not None else [f"dim {i}" for i in range(base)]
    if len(names) != base:
        raise ValueError(f"{len(names)} task dim names for {base} task dims")
    noise, constant, copies = [], [], []
    for k, spec in enumerate(specs):
        col = base + k
        if spec.kind == "constant":
            constant.append(col)
        elif spec.kind == "copy":
            copies.append((col, resolve_source(spec, names)))
        else:
            noise.append(col)
    return DimRoles(tuple(range(base)), tuple(noise), tuple(constant), tuple(copies))


@dataclass(frozen=True)
class GroupRound:
    """One distractor group in one round of one seed."""

    seed: int
    iteration: int
    remaining: float  # fraction of all prunable weights kept in this round
    group: str
    scored: bool  # False: the input layer is still dense in this round
    weakest_task: str  # name of the task dim with the fewest weights (a source with its copy: the stronger)
    weakest_task_kept: int
    strongest: str  # name of the group's dim with the most weights
    strongest_kept: int
    holds: bool  # every group dim keeps fewer weights than the weakest task dim
    pair_share: float  # share of (task, group dim) pairs with the group dim below, ties 1/2

    def row(self) -> Dict[str, Any]:
        return {"seed": self.seed, "iteration": self.iteration, "remaining": self.remaining, "group": self.group,
                "scored": self.scored, "weakest_task": self.weakest_task, "weakest_task_kept": self.weakest_task_kept,
                "strongest": self.strongest, "strongest_kept": self.strongest_kept, "holds": self.holds,
                "pair_share": self.pair_share}


def rank_rounds(survival: InputDimSurvival, roles: DimRoles, seed: int = 0) -> List[GroupRound]:
    """Score every round of one seed's input-layer survival, once per distractor group it has."""
    kept = survival.surviving
    if kept.shape[1] != roles.width:
        raise ValueError(f"the input layer has {kept.shape[1]} inputs but the roles name {roles.width}")
    names = survival.dim_names
    out = []
    for i, it in enumerate(survival.iterations):
        row = kept[i]
        task = {t: int(row[t]) for t in roles.task}
        for c, src in roles.copies:  # the information survives through either of the pair
            task[src] = max(task[src], int(row[c]))
        weakest = min(task, key=lambda t: (task[t], t))
        scored = bool((row < survival.total).any())
        for group in GROUPS:
            if group == "copy":
                members = {c: min(int(row[c]), int(row[s])) for c, s in roles.copies}
                label = {c: (c if row[c] <= row[s] else s) for c, s in roles.copies}  # the redundant one
            else:
                members = {d: int(row[d]) for d in roles.group(group)}
                label = {d: d for d in members}
            if not members:
                continue
            top = max(members, key=lambda d: (members[d], -d))
            values = np.array(list(members.values()))[:, None]
            tasks = np.array(list(task.values()))[None, :]
            pairs = float(((values < tasks) + 0.5 * (values == tasks)).mean())
            out.append(GroupRound(int(seed), int(it), float(survival.remaining[i]), group, scored,
                                  names[weakest], task[weakest], names[label[top]], members[top],
                                  bool(members[top] < task[weakest]), pairs))
    return out


@dataclass(frozen=True)
class GroupSummary:
    """A group's rank statistic over the scored rounds of several seeds."""

    group: str
    seeds: int
    rounds: int  # scored (seed, round) pairs
    holds: int  # of those, rounds where the group ranks below every task dim
    seeds_always: int  # seeds where it holds in every scored round
    seeds_last: int  # seeds where it holds in the last round
    pair_share: float  # mean over the scored rounds
    holds_from: Dict[int, Optional[int]]  # per seed: first round from which it holds up to the last

    @property
    def share(self) -> float:
        return self.holds / self.rounds if self.rounds else math.nan

    def sentence(self) -> str:
        return (f"{self.group}: below the weakest task dim in {self.holds}/{self.rounds} scored rounds "
                f"({100 * self.share:.0f}%), in every round for {self.seeds_always}/{self.seeds} seeds and in the "
                f"last round for {self.seeds_last}/{self.seeds}; pairs ordered right {100 * self.pair_share:.0f}%")


def summarize(rounds: Sequence[GroupRound]) -> Dict[str, GroupSummary]:
    """Per group: the share of scored rounds where it holds, counted over seeds."""
    out = {}
    for group in GROUPS:
        mine = [r for r in rounds if r.group == group]
        if not mine:
            continue
        seeds = sorted({r.seed for r in mine})
        scored = [r for r in mine if r.scored]
        always = last = 0
        holds_from: Dict[int, Optional[int]] = {}
        for s in seeds:
            rs = sorted((r for r in scored if r.seed == s), key=lambda r: r.iteration)
            always += bool(rs) and all(r.holds for r in rs)
            last += bool(rs) and rs[-1].holds
            start = None
            for r in reversed(rs):
                if not r.holds:
                    break
                start = r.iteration
            holds_from[s] = start
        out[group] = GroupSummary(group, len(seeds), len(scored), sum(r.holds for r in scored), always, last,
                                  float(np.mean([r.pair_share for r in scored])) if scored else math.nan,
                                  holds_from)
    return out


def survival_from_table(path: PathLike) -> InputDimSurvival:
    """An :class:`InputDimSurvival` read back from the CSV that :func:`input_dim_survival`'s rows wrote
    (``input_dims_seed<S>.csv``), for runs whose masks were not kept."""
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no rows")
    need = {"layer", "iteration", "remaining", "dim", "dim_name", "surviving", "total"}
    missing = need - set(rows[0])
    if missing:
        raise ValueError(f"{path}: not an input-dims table, columns {sorted(missing)} are missing")
    iterations = sorted({int(r["iteration"]) for r in rows})
    dims = sorted({int(r["dim"]) for r in rows})
    if dims != list(range(len(dims))):
        raise ValueError(f"{path}: input dims {dims} are not 0..{len(dims) - 1}")
    surviving = np.full((len(iterations), len(dims)), -1, dtype=np.int64)
    remaining = np.zeros(len(iterations))
    names = [""] * len(dims)
    for r in rows:
        i, j = iterations.index(int(r["iteration"])), int(r["dim"])
        surviving[i, j] = int(r["surviving"])
        remaining[i] = float(r["remaining"])
        names[j] = r["dim_name"]
    if (surviving < 0).any():
        raise ValueError(f"{path}: some (iteration, dim) pairs have no row")
    return InputDimSurvival(rows[0]["layer"], iterations, names, surviving, int(rows[0]["total"]), remaining,
                            [None] * len(dims))  # fully_pruned_at is not used by the rank statistic


@dataclass(frozen=True)
class RunRank:
    """The rank statistic of one run folder: every round of every seed, and the summary per group."""

    run_dir: Path
    roles: DimRoles
    dim_names: List[str]
    rounds: List[GroupRound]
    summary: Dict[str, GroupSummary]

    def rows(self) -> List[Dict[str, Any]]:
        return [r.row() for r in self.rounds]

    def text(self) -> str:
        return "\n".join([f"{self.run_dir}: rank statistic of the input layer's kept weights per distractor group",
                          *(f"  {s.sentence()}" for s in self.summary.values())])


def run_rank(run_dir: PathLike, seeds: Optional[Sequence[int]] = None, table_dir: Optional[PathLike] = None,
             layer: Optional[str] = None, condition: str = TICKET) -> RunRank:
    """The rank statistic of an IMP run folder with distractors (PPO, or BC with a distractor expert).

    Masks are read from the run folder; with ``table_dir`` the ``input_dims_seed<S>.csv`` tables
    there are read instead (committed results keep the tables, not the checkpoints).
    """
    from .run_masks import input_layer, run_inputs

    run_dir = Path(run_dir)
    experiment = recorded_experiment(run_dir, "the distractor rank statistic")
    inputs = run_inputs(experiment)
    cfg = experiment.get("trainer", {}).get("config") or {}
    ppo_cfg = cfg.get("expert") if inputs.trainer == "bc" else cfg
    if (ppo_cfg or {}).get("obs_select") is not None:
        raise ValueError(f"{run_dir} trains on a selection of the input dims (obs_select): the rank statistic "
                         "needs the full input with its distractors")
    if not inputs.distractors:
        raise ValueError(f"{run_dir} has no distractors in its config: nothing to rank against the task dims")
    seeds = [int(s) for s in (seeds if seeds is not None else experiment["imp"]["seeds"])]
    if not seeds:
        raise ValueError(f"{run_dir}: no seeds to score")
    rounds: List[GroupRound] = []
    roles = names = None
    for s in seeds:
        if table_dir is not None:
            surv = survival_from_table(Path(table_dir) / f"input_dims_seed{s}.csv")
        else:
            history = load_mask_history(run_dir, s, condition)
            name = input_layer(history, layer)
            width = int(history[min(history)][name].shape[1])
            surv = input_dim_survival(history, name, inputs.dim_names(width))
        width = len(surv.dim_names)
        roles = dim_roles(inputs.distractors, width, surv.dim_names[:width - len(inputs.distractors)])
        names = surv.dim_names
        rounds += rank_rounds(surv, roles, s)
    return RunRank(run_dir, roles, list(names), rounds, summarize(rounds))  # type: ignore[arg-type]
