"""Small pieces every RL trainer here shares: seeds, rewind snapshots, masks, evaluation schedule."""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, Optional

import torch
from torch import nn

from ..nn import masked_modules

#: env seeds stay below this so that seed + env index fits EnvPool's int32 seeds
_MAX_ENV_SEED = 2**31 - 2**16


def generator(seed: int) -> torch.Generator:
    """The one random stream of a training run: every other seed of the run is drawn from it."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return torch.Generator().manual_seed(seed)


def draw_seed(g: torch.Generator) -> int:
    """A fresh env seed drawn from ``g`` (so env seeds are derived from the run's torch seed)."""
    return int(torch.randint(_MAX_ENV_SEED, (1,), generator=g))


def snapshot(model: nn.Module) -> Dict[str, torch.Tensor]:
    """A detached copy of ``model.state_dict()`` (weights and buffers such as obs statistics)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def enforce_masks(model: nn.Module) -> None:
    """Put every pruned weight back to exactly 0 (cheap; done before weights leave a trainer)."""
    for m in masked_modules(model).values():
        m.apply_mask_()


def check_finite(model: nn.Module, what: str = "model") -> None:
    """Refuse to train or clone from weights that already hold NaN or inf."""
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"{what}: {name} holds NaN or inf values")


def check_rewind_step(rewind_step: Optional[int], total: int) -> None:
    if rewind_step is None:
        return
    if isinstance(rewind_step, bool) or not isinstance(rewind_step, int) or not 0 <= rewind_step <= total:
        raise ValueError(f"rewind_step must be an integer in [0, {total}] (optimizer steps of this run), "
                         f"got {rewind_step!r}")


def eval_points(n: int, num_evals: int) -> frozenset:
    """The iterations (1-based, out of ``n``) after which to evaluate: evenly spaced, the last included."""
    if num_evals <= 0:
        return frozenset()
    return frozenset(max(1, round(k * n / num_evals)) for k in range(1, num_evals + 1))


@contextlib.contextmanager
def torch_threads(n: Optional[int]) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads, restoring the previous count after (None: leave it).

    Small policy networks lose badly to threading: on a loaded 2-core machine one
    ``log_softmax`` of an [8, 2] tensor took 5 ms with 2 threads and 1 us with 1.
    """
    if n is None:
        yield
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"num_threads must be a positive integer or None, got {n!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
