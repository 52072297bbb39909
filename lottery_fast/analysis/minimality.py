"""Is the ticket's input a minimal task representation? Retrain on the inputs it kept and compare.

The paper's third claim: IMP's input-layer mask drops the input dims a task does not need. The
check here takes the dims (or image channels) the ticket's input layer still reads -- any
surviving weight in that column -- and trains a *dense* agent from scratch on only those, next to a
dense agent on the full input, with the same budget and seeds. If the kept dims are a sufficient
representation, the two final returns match.

Reading the kept dims needs only the run folder. The retraining goes through the Trainer protocol
with a factory the caller supplies (``select -> trainer``; e.g. PPO with ``PPOConfig.obs_select``),
so this module does not depend on any trainer. Results are cached one JSON per (variant, seed) in
``cache_dir``, written atomically, so an interrupted check resumes without redoing finished runs.

:func:`dim_ablation` measures which dims the task needs in the first place: dense agents trained
with one input dim removed at a time, against the full input, same budget and seeds. A ticket's
kept dims can then be compared against the measured task-relevant set instead of an assumed one.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .._atomic import atomic_write
from ..imp import TICKET, load_mask_history
from .run_masks import input_layer

PathLike = Union[str, Path]
#: makes the trainer for an input selection (None: the full input)
TrainerFactory = Callable[[Optional[Tuple[int, ...]]], Any]


def kept_inputs(mask: Any) -> Tuple[int, ...]:
    """Inputs of a layer with at least one surviving weight: columns of a Linear ``[out, in]`` mask,
    input channels of a Conv2d ``[O, C, kh, kw]`` mask."""
    arr = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
    if arr.ndim not in (2, 4):
        raise ValueError(f"kept_inputs: expected a Linear [out, in] or Conv2d [O, C, kh, kw] mask, got shape "
                         f"{arr.shape}")
    per_input = np.moveaxis(arr.astype(bool), 1, 0).reshape(arr.shape[1], -1).any(axis=1)
    return tuple(int(i) for i in np.flatnonzero(per_input))


def ticket_kept_inputs(run_dir: PathLike, seed: int, iteration: Optional[int] = None,
                       layer: Optional[str] = None, condition: str = TICKET) -> Tuple[int, Tuple[int, ...]]:
    """``(iteration, kept inputs)`` of the ticket's input layer in ``run_dir`` (default: last finished round)."""
    history = load_mask_history(run_dir, seed, condition)
    if iteration is None:
        iteration = max(history)
    if iteration not in history:
        raise ValueError(f"{run_dir}: seed {seed} has no finished {condition} round {iteration}; "
                         f"finished rounds are {sorted(history)}")
    return iteration, kept_inputs(history[iteration][input_layer(history, layer)])


@dataclass(frozen=True)
class MinimalityRun:
    """One dense training of the check: ``select`` None is the full input."""

    seed: int
    select: Optional[Tuple[int, ...]]
    metric: float  # final evaluation return
    best_metric: float

    @property
    def variant(self) -> str:
        return "full" if self.select is None else "kept"


@dataclass(frozen=True)
class MinimalityResult:
    """Full-input vs kept-input dense agents, per seed (same seeds, same budget)."""

    kept: Mapping[int, Tuple[int, ...]]  # seed -> kept input indices
    full: List[MinimalityRun]
    minimal: List[MinimalityRun]

    @staticmethod
    def _mean(runs: Sequence[MinimalityRun]) -> float:
        return float(np.mean([r.metric for r in runs])) if runs else math.nan

    @property
    def full_mean(self) -> float:
        return self._mean(self.full)

    @property
    def minimal_mean(self) -> float:
        return self._mean(self.minimal)


def _cache_path(cache_dir: Path, variant: str, seed: int) -> Path:
    return cache_dir / f"{variant}_seed{seed}.json"


def _cached(path: Path, select: Optional[Tuple[int, ...]]) -> Optional[MinimalityRun]:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        stored = None if data["select"] is None else tuple(int(i) for i in data["select"])
        run = MinimalityRun(int(data["seed"]), stored, float(data["metric"]), float(data["best_metric"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable: train again and overwrite it
    return run if run.select == select else None  # another selection (the mask changed): redo


def _train(factory: TrainerFactory, seed: int, select: Optional[Tuple[int, ...]],
           cache_dir: Optional[Path], variant: Optional[str] = None) -> MinimalityRun:
    variant = variant or ("full" if select is None else "kept")
    path = None if cache_dir is None else _cache_path(cache_dir, variant, seed)
    if path is not None:
        hit = _cached(path, select)
        if hit is not None:
            return hit
    trainer = factory(select)
    model = trainer.build_model(seed)
    result, _ = trainer.train(model, seed)
    run = MinimalityRun(seed, select, float(result.metric), float(result.best_metric))
    if path is not None:
        text = json.dumps(asdict(run), indent=1)
        atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))
    return run


def minimality_check(factory: TrainerFactory, kept: Mapping[int, Sequence[int]],
                     cache_dir: Optional[PathLike] = None) -> MinimalityResult:
    """Train, for every seed of ``kept``, a dense agent on the full input and one on ``kept[seed]``.

    ``factory(None)`` must give the full-input trainer and ``factory(select)`` one that sees only
    the inputs ``select``; both are trained with the seed itself (``build_model(seed)``, ``train(model, seed)``).
    """
    if not kept:
        raise ValueError("minimality_check: no seeds given")
    selections = {int(s): tuple(int(i) for i in dims) for s, dims in kept.items()}
    empty = [s for s, dims in selections.items() if not dims]
    if empty:
        raise ValueError(f"minimality_check: the ticket kept no input at all for seeds {empty}: "
                         "nothing to train on")
    folder = None if cache_dir is None else Path(cache_dir)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    full = [_train(factory, s, None, folder) for s in selections]
    minimal = [_train(factory, s, dims, folder) for s, dims in selections.items()]
    return MinimalityResult(selections, full, minimal)


@dataclass(frozen=True)
class AblationRow:
    """Dense agents trained without input ``dim`` (None: the full input), over seeds."""

    dim: Optional[int]
    name: str
    runs: List[MinimalityRun]

    @property
    def metrics(self) -> List[float]:
        return [r.metric for r in self.runs]

    @property
    def mean(self) -> float:
        return float(np.mean(self.metrics))

    @property
    def std(self) -> float:
        return float(np.std(self.metrics))


@dataclass(frozen=True)
class AblationResult:
    """The full-input agents and, per input dim, the agents trained without it."""

    full: AblationRow
    dropped: List[AblationRow]
    floor: float = 0.0  # the return of a policy that has learned nothing (see analysis.curves.return_floor)

    def relative(self, row: AblationRow) -> float:
        """``row``'s mean return as a share of the full input's, both measured above ``floor``."""
        gap = self.full.mean - self.floor
        return (row.mean - self.floor) / gap if gap else math.nan

    def relevant(self, threshold: float = 0.9) -> List[int]:
        """Dims without which the mean return falls below ``threshold`` of the full input's: the
        dims the task needs (a dim with a redundant copy is not needed alone)."""
        return [r.dim for r in self.dropped if self.relative(r) < threshold]  # type: ignore[misc]

    def rows(self) -> List[dict]:
        """Table rows: the full input first, then one per dropped dim."""
        out = []
        for r in [self.full, *self.dropped]:
            out.append({"dropped dim": "-" if r.dim is None else r.dim, "name": r.name, "seeds": len(r.runs),
                        "mean return": r.mean, "std": r.std, "min": min(r.metrics), "max": max(r.metrics),
                        "vs full": r.mean - self.full.mean, "share of full": self.relative(r),
                        "per seed": " ".join(f"{m:.4g}" for m in r.metrics)})
        return out


def dim_ablation(factory: TrainerFactory, n_inputs: int, seeds: Sequence[int],
                 dim_names: Optional[Sequence[str]] = None, dims: Optional[Sequence[int]] = None,
                 cache_dir: Optional[PathLike] = None, floor: float = 0.0) -> AblationResult:
    """Train dense agents on the full input and, for each of ``dims`` (default all ``n_inputs``),
    on every input but that one, for every seed; ``factory`` as for :func:`minimality_check`.

    Runs are cached in ``cache_dir`` (``full_seed<S>.json``, ``drop<j>_seed<S>.json``), so an
    interrupted ablation resumes; a full-input cache is shared with :func:`minimality_check`.
    """
    if isinstance(n_inputs, bool) or not isinstance(n_inputs, int) or n_inputs < 2:
        raise ValueError(f"dim_ablation: need at least 2 input dims (one is dropped at a time), got {n_inputs!r}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("dim_ablation: no seeds given")
    names = list(dim_names) if dim_names is not None else [f"dim {j}" for j in range(n_inputs)]
    if len(names) != n_inputs:
        raise ValueError(f"dim_ablation: {len(names)} dim names for {n_inputs} inputs")
    chosen = list(range(n_inputs)) if dims is None else [int(j) for j in dims]
    bad = [j for j in chosen if not 0 <= j < n_inputs]
    if bad or len(set(chosen)) != len(chosen) or not chosen:
        raise ValueError(f"dim_ablation: dims {list(dims or [])} must be distinct indices in 0..{n_inputs - 1}")
    folder = None if cache_dir is None else Path(cache_dir)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    full = AblationRow(None, "full input", [_train(factory, s, None, folder) for s in seeds])
    dropped = []
    for j in chosen:
        select = tuple(i for i in range(n_inputs) if i != j)
        runs = [_train(factory, s, select, folder, f"drop{j}") for s in seeds]
        dropped.append(AblationRow(j, f"without {names[j]}", runs))
    return AblationResult(full, dropped, float(floor))
