"""The IMP loop with rewinding and the four ticket conditions, over any :class:`Trainer`.

Per run seed: build the model, keep its initial state, train it dense (round 0; with late
rewinding this round also yields the step-k weights to rewind to). Then, for each round i >= 1:
prune ``rate`` of the remaining prunable weights of the previous ticket by magnitude of its
trained weights (the IMP line), rewind the survivors to the rewind state, and train with a fresh
optimizer. The other conditions are derived from round i's IMP mask and trained exactly like the
ticket, but never feed the next mask. Each (seed, round, condition) is one unit: its seeds come
from :func:`derive_seed` and it is checkpointed when it finishes, so a run killed at any point
and started again with the same arguments ends with the same results as an uninterrupted one.

Parameters outside the prunable weights (biases, excluded modules) always start from the rewind
state, in every condition; conditions registered with ``fresh_init`` (``random/reinit``) redraw
only the prunable weights.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..nn import set_masks
from ..nn.packed import pack_for_training
from ..prune import derive_condition, needs_fresh_init, prunable_layers, prune_groups, prune_model, rescale_init_
from ..train.common import torch_threads
from ..train.protocol import MEMBER, Trainer
from .config import TICKET, IMPConfig, trainer_description, trainer_inputs
from .preflight import preflight
from .progress import IMPEvent, ProgressCallback
from .results import load_results, results_arrays
from .seeding import derive_seed
from .store import RunFolder, RunFolderError, UnitKey

Tensors = Dict[str, torch.Tensor]


@dataclass
class IMPResults:
    """What :func:`run_imp` leaves behind: the run folder and its results rows (as :func:`load_results`)."""

    out_dir: Path
    rows: List[Dict[str, Any]]

    def column(self, name: str) -> np.ndarray:
        return results_arrays(self.rows, [name])[name]


def _state_copy(model: nn.Module) -> Tensors:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _masks_of(layers: Mapping[str, nn.Module]) -> Tensors:
    return {n: layer.mask.detach().to("cpu", copy=True) for n, layer in layers.items()}


def _densities(masks: Mapping[str, torch.Tensor]) -> Tuple[float, Dict[str, float]]:
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    return kept / total, {n: int(m.sum()) / m.numel() for n, m in masks.items()}


class _Clock:
    """Elapsed time of this call and an ETA from the units trained in it."""

    def __init__(self, units_total: int, units_done: int) -> None:
        self.t0 = time.perf_counter()
        self.total = units_total
        self.done = units_done
        self._trained = 0
        self._trained_s = 0.0

    def unit_finished(self, seconds: float) -> None:
        self.done += 1
        self._trained += 1
        self._trained_s += seconds

    def event(self, kind: str, **fields: Any) -> IMPEvent:
        eta = (self._trained_s / self._trained) * (self.total - self.done) if self._trained else None
        return IMPEvent(kind=kind, units_done=self.done, units_total=self.total,
                        elapsed_s=time.perf_counter() - self.t0, eta_s=eta, **fields)


class _SeedRun:
    """All rounds of one run seed; holds the model template and the last ticket between rounds."""

    def __init__(self, trainer: Trainer, cfg: IMPConfig, folder: RunFolder, seed: int,
                 done: Dict[UnitKey, Dict[str, Any]], clock: _Clock, emit: Callable[[IMPEvent], None],
                 publish: Callable[[], None]) -> None:
        self.trainer, self.cfg, self.folder, self.seed = trainer, cfg, folder, seed
        self.done, self.clock, self.emit, self.publish = done, clock, emit, publish
        self.names: List[str] = []
        self.template = self._build(seed)
        self.init_state = _state_copy(self.template)
        self._check_same_init()
        self._rewind: Optional[Tensors] = None
        self._last_ticket: Optional[Tuple[int, Tensors, Tensors]] = None  # (round, masks, final)

    def missing(self, it: int) -> List[str]:
        """Conditions of round ``it`` that still have to be trained."""
        return [c for c in self._conditions(it) if (self.seed, it, c) not in self.done]

    def units(self, it: int) -> Iterator["_Unit"]:
        """Round ``it``'s missing units, each with its model ready to train (built one at a time)."""
        todo = self.missing(it)
        if todo:
            masks = self._imp_masks(it)
            for condition in todo:
                yield self._prepare_unit(it, condition, masks)

    def _conditions(self, it: int) -> Tuple[str, ...]:
        return (TICKET,) if it == 0 else self.cfg.conditions

    # -- the IMP line ------------------------------------------------------------------------
    def _ticket(self, it: int) -> Tuple[Tensors, Tensors]:
        """Masks and trained weights of round ``it``'s ticket (from memory, else its checkpoint)."""
        if self._last_ticket is not None and self._last_ticket[0] == it:
            return self._last_ticket[1], self._last_ticket[2]
        unit = self.folder.load_unit((self.seed, it, TICKET), need_final=True)
        return unit["masks"], unit["final"]

    def _imp_masks(self, it: int) -> Tensors:
        """Round ``it``'s IMP mask: all kept in round 0, else the previous ticket pruned by magnitude."""
        if (self.seed, it, TICKET) in self.done:
            return self.folder.load_unit((self.seed, it, TICKET))["masks"]
        if it == 0:
            return _masks_of(prunable_layers(self.template, self.cfg.prune.exclude))
        masks, final = self._ticket(it - 1)
        model = copy.deepcopy(self.template)
        model.load_state_dict(final)
        set_masks(model, masks, strict=False)
        prune_model(model, self.cfg.prune)
        return _masks_of(prunable_layers(model, self.cfg.prune.exclude))

    def _start_state(self, it: int) -> Tensors:
        """The state a unit of round ``it`` rewinds to (before its prunable weights are derived)."""
        if it == 0 or self.cfg.rewind_step is None:
            return self.init_state
        if self._rewind is None:
            self._rewind, _ = self.folder.load_rewind(self.seed)
        return self._rewind

    def _check_same_init(self) -> None:
        # A resumed run equals an uninterrupted one only if build_model(seed) gives the same init.
        key = (self.seed, 0, TICKET)
        if key not in self.done:
            return
        saved = self.folder.load_unit(key)["start"]
        if saved.keys() != self.init_state.keys() or any(
                not torch.equal(saved[k], self.init_state[k]) for k in saved):
            raise RunFolderError(
                f"{self.folder.unit_stem(*key).with_suffix('.pt')} starts from other weights than "
                f"trainer.build_model({self.seed}): the trainer's initialisation changed or is not "
                f"deterministic, so this run cannot be resumed")

    def _build(self, seed: int) -> nn.Module:
        """``trainer.build_model(seed)`` with the configured init rescaling of the prunable layers."""
        with torch_threads(1):  # some inits (QR, SVD) differ in their last bits with the thread count
            model = self.trainer.build_model(seed)
        names = list(prunable_layers(model, self.cfg.prune.exclude))
        if not names:
            raise ValueError(f"trainer {self.trainer.name!r}: the model has no prunable masked layers "
                             f"left after exclude={self.cfg.prune.exclude!r}")
        if self.names and names != self.names:
            raise RuntimeError(f"trainer {self.trainer.name!r}: build_model({seed}) has prunable layers {names}, "
                               f"expected {self.names}")
        self.names = names
        if self.cfg.rescale != "none":
            rescale_init_(model, names, mode=self.cfg.rescale, reference=self.cfg.rescale_reference)
        return model

    def _fresh_weights(self, it: int, condition: str) -> Tensors:
        fresh = self._build(derive_seed(self.seed, condition, it, "init"))
        layers = prunable_layers(fresh, self.cfg.prune.exclude)
        return {n: layers[n].weight.detach().to("cpu", copy=True) for n in self.names}

    # -- one unit ----------------------------------------------------------------------------
    def _prepare_unit(self, it: int, condition: str, imp_masks: Tensors) -> "_Unit":
        key = (self.seed, it, condition)
        start_state = self._start_state(it)
        model = copy.deepcopy(self.template)
        model.load_state_dict(start_state)
        layers = prunable_layers(model, self.cfg.prune.exclude)
        init_w = {n: start_state[f"{n}.weight"] for n in self.names}
        fresh_w = self._fresh_weights(it, condition) if needs_fresh_init(condition) else init_w
        gen = torch.Generator().manual_seed(derive_seed(self.seed, condition, it, "derive"))
        groups = prune_groups(self.names, self.cfg.prune) if self.cfg.random_pool == "groups" else None
        masks, weights = derive_condition(condition, imp_masks, init_w, fresh_w, gen, groups)
        with torch.no_grad():
            for n in self.names:
                layers[n].weight.copy_(weights[n])
                layers[n].set_mask(masks[n])
        masks = _masks_of(layers)
        density, layer_density = _densities(masks)
        return _Unit(self, key, model, masks, _state_copy(model), density, layer_density,
                     derive_seed(self.seed, condition, it, "train"))

    def finish_unit(self, unit: "_Unit", result: Any, late_state: Optional[Tensors], seconds: float) -> None:
        """Check and checkpoint a trained unit, and record it as done."""
        key, it, condition = unit.key, unit.key[1], unit.key[2]
        layers = prunable_layers(unit.model, self.cfg.prune.exclude)
        for n in self.names:
            if not torch.equal(layers[n].mask.cpu(), unit.masks[n]):
                raise RuntimeError(f"trainer {self.trainer.name!r} changed the mask of layer {n!r} while training")
        if it == 0:
            late = self.cfg.rewind_step
            if late is None:
                self.folder.save_rewind(self.seed, self.init_state, 0)
            else:
                if late_state is None:
                    raise RuntimeError(f"trainer {self.trainer.name!r} returned no rewind state for "
                                       f"rewind_step={late}")
                self._rewind = {k: v.detach().to("cpu", copy=True) for k, v in late_state.items()}
                self.folder.save_rewind(self.seed, self._rewind, late)

        record = _record(key, unit.density, unit.layer_density, result, seconds)
        final = _state_copy(unit.model)
        keep_final = condition == TICKET or self.cfg.save_final_weights
        self.folder.save_unit(key, unit.masks, unit.start, final if keep_final else None, record)
        self.done[key] = record
        if condition == TICKET:
            self._last_ticket = (it, unit.masks, final)
        self.publish()
        self.clock.unit_finished(seconds)
        self.emit(self.clock.event("unit_done", seed=self.seed, iteration=it, condition=condition,
                                   density=unit.density, metric=record["metric"],
                                   best_metric=record["best_metric"]))


@dataclass
class _Unit:
    """One (seed, round, condition) ready to train: its model with masks and weights installed."""

    run: _SeedRun
    key: UnitKey
    model: nn.Module
    masks: Tensors
    start: Tensors
    density: float
    layer_density: Dict[str, float]
    train_seed: int


def _train_level(trainer: Trainer, units: Sequence[_Unit], rewind_step: Optional[int], population: bool,
                 clock: _Clock, emit: Callable[[IMPEvent], None]) -> None:
    """Train one round's units: as one population when asked and the trainer can, else one by one."""
    def progress(unit: Optional[_Unit]):
        if emit is _no_emit:
            return None
        fields = (dict(seed=unit.key[0], iteration=unit.key[1], condition=unit.key[2], density=unit.density)
                  if unit is not None else dict(iteration=units[0].key[1], condition=f"population of {len(units)}"))

        def forward(info: Dict[str, float]) -> None:
            if unit is None and MEMBER in info:  # one member's tracking scalars: that unit's
                member = units[int(info[MEMBER])]
                emit(clock.event("metrics", info={k: v for k, v in info.items() if k != MEMBER},
                                 seed=member.key[0], iteration=member.key[1], condition=member.key[2],
                                 density=member.density))
                return
            emit(clock.event("train", info=dict(info), **fields))
        return forward

    def start(unit: _Unit) -> None:
        emit(clock.event("unit_start", seed=unit.key[0], iteration=unit.key[1], condition=unit.key[2],
                         density=unit.density))

    if population:
        for unit in units:
            start(unit)
        t0 = time.perf_counter()
        outputs = trainer.train_population([u.model for u in units], [u.train_seed for u in units],  # type: ignore[attr-defined]
                                           rewind_step=rewind_step, on_progress=progress(None))
        share = (time.perf_counter() - t0) / len(units)
        if len(outputs) != len(units):
            raise RuntimeError(f"trainer {trainer.name!r}: train_population returned {len(outputs)} results "
                               f"for {len(units)} models")
        for unit, (result, late_state) in zip(units, outputs):
            unit.run.finish_unit(unit, result, late_state, share)
        return
    for unit in units:
        start(unit)
        t0 = time.perf_counter()
        unit.model = pack_for_training(unit.model, unit.run.cfg.packed)
        result, late_state = trainer.train(unit.model, unit.train_seed, rewind_step=rewind_step,
                                           on_progress=progress(unit))
        unit.run.finish_unit(unit, result, late_state, time.perf_counter() - t0)


def _record(key: UnitKey, density: float, layer_density: Dict[str, float], result: Any, seconds: float) -> Dict[str, Any]:
    seed, it, condition = key
    try:
        extra = {str(k): float(v) for k, v in dict(result.extra).items()}
        evals = list(getattr(result, "evals", None) or ())
        if evals and "eval_mean" not in extra:
            # the mean evaluation through training (area under the learning curve): unlike the best
            # evaluation it does not saturate at the task's maximum return
            extra["eval_mean"] = sum(map(float, evals)) / len(evals)
        return {"seed": seed, "condition": condition, "iteration": it, "density": density,
                "metric": float(result.metric), "best_metric": float(result.best_metric),
                "steps": int(result.steps), "train_seconds": seconds, "layer_density": layer_density,
                # the model's layer order: the JSON record sorts dict keys, a list keeps it on resume
                "layers": list(layer_density), "extra": extra}
    except (AttributeError, TypeError, ValueError) as e:
        raise TypeError(f"trainer.train must return (TrainResult, state or None) with numeric fields; "
                        f"got {result!r} ({e})") from None


def _no_emit(event: IMPEvent) -> None:
    pass


def run_imp(trainer: Trainer, config: IMPConfig, out_dir: Union[str, Path],
            on_progress: Optional[ProgressCallback] = None, overwrite: bool = False,
            seeds: Optional[Sequence[int]] = None, population: bool = True) -> IMPResults:
    """Run (or resume) IMP with ``trainer`` under ``config`` in the run folder ``out_dir``.

    A folder holding a finished or partial run of the same experiment is resumed from its last
    finished unit; one holding another experiment, or a checkpoint that cannot be read, raises
    :class:`~lottery_fast.imp.store.RunFolderError` naming the file. ``overwrite=True`` deletes
    the run's files (config.json, results.csv, seed_*/) and starts over.

    ``seeds`` (a subset of ``config.seeds``) runs only those seeds' units, so that several
    processes can share one run folder, one seed each: such a call touches nothing outside its
    seeds' folders and leaves ``results.csv`` alone (another process may be writing it); a later
    call without ``seeds`` (nothing left to train) writes it. Its return value lists its seeds only.

    The run is level-major: round ``i`` of every seed before round ``i + 1`` of any. With
    ``population=True`` (the default) and a trainer that has ``train_population(models, seeds,
    rewind_step, on_progress)``, each round's missing units (seeds x conditions) train together as
    one population; ``population=False``, or a trainer without it, trains them one by one. The two
    paths give different (each reproducible) results, so config.json records which one a folder holds.
    """
    if not isinstance(trainer, Trainer):
        raise TypeError(f"run_imp: {type(trainer).__name__} does not implement the Trainer protocol")
    if not isinstance(config, IMPConfig):
        raise TypeError(f"run_imp: config must be an IMPConfig, got {type(config).__name__}")
    cfg = config.resolved(tuple(trainer.default_prune_exclude), tuple(getattr(trainer, "output_layers", ())))
    run_seeds = _run_seeds(cfg.seeds, seeds, overwrite)
    use_population = bool(population) and callable(getattr(trainer, "train_population", None))
    if use_population and cfg.packed != "off":
        raise ValueError(f"run_imp: IMPConfig.packed={cfg.packed!r} trains units one at a time; trainer "
                         f"{trainer.name!r} trains populations (their members' dense weights batched): "
                         f"pass population=False, or packed='off'")
    experiment: Dict[str, Any] = {"imp": cfg.to_json(), "trainer": trainer_description(trainer)}
    if use_population:  # its results differ from the per-agent path's: a folder holds one or the other
        experiment["population"] = True
    folder = RunFolder(Path(out_dir))
    preflight(trainer, cfg)
    # the seeds stay locked for the whole run: a second command on them stops before touching a file
    with folder.hold(run_seeds):
        folder.prepare(experiment, overwrite=overwrite, seeds=None if seeds is None else run_seeds,
                       inputs=trainer_inputs(trainer))
        done = folder.finished_units(run_seeds, cfg.iterations, cfg.conditions)

        seed_pos = {s: i for i, s in enumerate(cfg.seeds)}
        cond_pos = {c: i for i, c in enumerate(cfg.conditions)}

        def ordered() -> List[Dict[str, Any]]:
            keys = sorted(done, key=lambda k: (seed_pos[k[0]], k[1], cond_pos[k[2]]))
            return [done[k] for k in keys]

        def publish() -> None:
            if seeds is None:
                folder.write_results(ordered())

        emit = on_progress if on_progress is not None else _no_emit
        clock = _Clock(len(run_seeds) * (1 + cfg.iterations * len(cfg.conditions)), len(done))
        publish()
        emit(clock.event("start"))
        runs = [_SeedRun(trainer, cfg, folder, seed, done, clock, emit, publish) for seed in run_seeds]
        for it in range(cfg.iterations + 1):
            late = cfg.rewind_step if it == 0 else None
            if use_population:
                # level-major: every seed's masks for this round first, then all its units as one population
                units = [u for run in runs for u in run.units(it)]
                if units:
                    _train_level(trainer, units, late, True, clock, emit)
            else:
                for run in runs:  # one unit at a time: never more than one model in memory
                    for unit in run.units(it):
                        _train_level(trainer, [unit], late, False, clock, emit)
        emit(clock.event("done"))
        if seeds is not None:
            return IMPResults(folder.root, ordered())
        return IMPResults(folder.root, load_results(folder.root))


def _run_seeds(all_seeds: Sequence[int], seeds: Optional[Sequence[int]], overwrite: bool) -> Tuple[int, ...]:
    if seeds is None:
        return tuple(all_seeds)
    picked = tuple(seeds)
    unknown = [s for s in picked if s not in all_seeds]
    if unknown or not picked or len(set(picked)) != len(picked):
        raise ValueError(f"run_imp: seeds={list(picked)} must be distinct run seeds of the config "
                         f"{list(all_seeds)}" + (f" (not in it: {unknown})" if unknown else ""))
    if overwrite:
        raise ValueError("run_imp: overwrite=True would delete the other seeds' units; it cannot be "
                         "combined with seeds=")
    return tuple(s for s in all_seeds if s in picked)
