"""Iterative magnitude pruning with rewinding, the four ticket conditions, results and resume.

One entry point, :func:`run_imp`, over any :class:`~lottery_fast.train.protocol.Trainer`;
:func:`load_results` and :func:`load_unit` read a run folder back without a trainer.
"""
from pathlib import Path
from typing import Dict, Optional, Union

import torch

from .config import TICKET, IMPConfig
from .engine import IMPResults, run_imp
from .progress import EVENT_KINDS, IMPEvent, format_event, text_progress
from .results import load_results, results_arrays
from .seeding import derive_seed
from .store import ConfigMismatchError, CorruptCheckpointError, FolderBusyError, RunFolder, RunFolderError


def load_unit(out_dir: Union[str, Path], seed: int, iteration: int, condition: str = TICKET) -> Dict[str, Dict[str, torch.Tensor]]:
    """Saved tensors of one finished unit: ``masks`` (prunable layers), ``start`` and, if kept, ``final``."""
    folder = RunFolder(Path(out_dir))
    record = folder.unit_stem(seed, iteration, condition).with_suffix(".json")
    if not record.is_file():  # never ran (or not finished): not a corrupt run folder
        raise FileNotFoundError(f"load_unit: {record} does not exist: seed {seed}, iteration {iteration}, "
                                f"{condition} has not finished in {out_dir}")
    return folder.load_unit((seed, iteration, condition))


def load_mask_history(out_dir: Union[str, Path], seed: Optional[int] = None,
                      condition: str = TICKET) -> Dict[int, Dict[str, torch.Tensor]]:
    """Masks of ``condition`` per finished IMP round of ``seed`` (default: the run's first seed),
    as ``{round: {layer: bool mask}}`` -- the mask history the analysis functions take."""
    folder = RunFolder(Path(out_dir))
    imp = folder.read_experiment()["imp"]
    seed = imp["seeds"][0] if seed is None else seed
    history = {}
    for it in range(imp["iterations"] + 1):
        if folder.unit_stem(seed, it, condition).with_suffix(".json").is_file():
            history[it] = folder.load_unit((seed, it, condition))["masks"]
    if not history:
        raise FileNotFoundError(f"load_mask_history: no finished {condition} unit for seed {seed} in {out_dir}")
    return history


def load_rewind(out_dir: Union[str, Path], seed: int) -> Dict[str, torch.Tensor]:
    """The state IMP rewinds to for ``seed`` (the initial weights, or the step-k weights)."""
    folder = RunFolder(Path(out_dir))
    if not folder.rewind_path(seed).is_file():
        raise FileNotFoundError(f"load_rewind: {folder.rewind_path(seed)} does not exist: seed {seed} has not "
                                f"finished round 0 in {out_dir}")
    return folder.load_rewind(seed)[0]


__all__ = ["IMPConfig", "IMPResults", "run_imp", "load_results", "results_arrays", "load_unit", "load_rewind",
           "load_mask_history",
           "IMPEvent", "EVENT_KINDS", "format_event", "text_progress", "derive_seed", "TICKET",
           "RunFolderError", "CorruptCheckpointError", "ConfigMismatchError", "FolderBusyError"]
