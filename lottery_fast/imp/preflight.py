"""Checks of an IMP experiment against its trainer's model and budget, before any file is written.

Some settings can only be checked against a built model (module-name patterns) or the trainer's
budget (the rewind step). Checked only where they are used, they fail after round 0 has trained or
after config.json is written, and the folder then refuses the corrected command as another
experiment. :func:`run_imp` calls :func:`preflight` before it prepares the run folder, and the CLI
calls it for every experiment (every one of a report) before the first one trains.
"""
from __future__ import annotations

from ..prune import prunable_layers, prune_model, rescale_init_
from ..train.common import check_rewind_step, torch_threads
from ..train.protocol import Trainer
from .config import IMPConfig


def resolved_for(trainer: Trainer, config: IMPConfig) -> IMPConfig:
    """``config`` resolved against ``trainer`` as :func:`run_imp` resolves it (idempotent)."""
    return config.resolved(tuple(trainer.default_prune_exclude), tuple(getattr(trainer, "output_layers", ())))


def preflight(trainer: Trainer, config: IMPConfig) -> None:
    """Raise ``ValueError`` naming the setting if ``config`` cannot run on ``trainer``'s model.

    Builds the model of the first run seed (no training) and checks: every ``exclude`` pattern
    matches a masked layer and some layer is left to prune; every ``layer_rates`` pattern matches a
    prunable layer (by a dry run of one pruning round on the fresh model, so the check is the
    pruning code's own); the init rescaling applies; ``rewind_step`` is within the optimizer steps
    of the dense round, for trainers that report them (``optimizer_steps()``). A PPO run with
    ``target_kl`` can still stop its epochs before the rewind step: that is known only by training.
    """
    cfg = resolved_for(trainer, config)
    with torch_threads(1):  # as run_imp builds it: some inits differ in their last bits with the thread count
        model = trainer.build_model(cfg.seeds[0])
    layers = prunable_layers(model, cfg.prune.exclude)
    if not layers:
        raise ValueError(f"trainer {trainer.name!r}: the model has no prunable masked layers left after "
                         f"exclude={list(cfg.prune.exclude)!r}")
    if cfg.rescale != "none":
        rescale_init_(model, list(layers), mode=cfg.rescale, reference=cfg.rescale_reference)
    prune_model(model, cfg.prune)
    budget = getattr(trainer, "optimizer_steps", None)
    if cfg.rewind_step is not None and callable(budget):
        try:
            check_rewind_step(cfg.rewind_step, int(budget()))
        except ValueError as e:
            raise ValueError(f"trainer {trainer.name!r}: {e}") from None
