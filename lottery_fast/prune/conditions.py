"""The four ticket conditions: which mask and which weights a pruned network restarts from.

Every condition maps one IMP iteration's masks ``m`` (per prunable layer), the initial weights
``W0`` and a fresh initialisation ``Wf`` to ``(masks, weights)`` per layer. Only the layers given
are touched (biases and excluded layers are the caller's and stay as they are). In every returned
weight the pruned positions are exactly 0, and new tensors are returned (inputs are not modified).

``mask/weights`` (the ticket): mask ``m``, weights ``W0 * m``.

``mask/permuted``: mask ``m``. Within each layer, the values ``W0[m]`` (the surviving initial
values) are randomly permuted among that layer's kept positions. Per-layer kept counts, each
layer's mask and each layer's multiset of values are those of the ticket; only which kept position
holds which surviving value changes.

``permuted/permuted``: within each layer, the mask is a uniformly random set of positions of the
same size as the layer's kept count (positions are drawn over the whole layer, so the
within-layer structure -- e.g. which inputs are pruned -- is destroyed), and the layer's surviving
values ``W0[m]`` are placed on the new kept positions in random order. Per-layer kept counts and
value multisets are preserved.

``random/reinit``: within each *pruning group* (the layers magnitude pruning ranks together, see
:func:`lottery_fast.prune.magnitude.prune_groups`), one uniformly random set of positions of the
same total size as the group's kept count, weights ``Wf`` masked by it. Within the globally ranked
group per-layer ratios are not kept (only equal in expectation to the group's density); a layer
pruned at its own rate (the PPO actor head under ``output_rate_factor``) keeps its kept count, as
it does under IMP, so the comparison with the ticket is not confounded by a starved head. Without
``groups`` all given layers form one group (the rule before groups existed:
``IMPConfig(random_pool="all")``).

Randomness comes only from ``generator``, consumed layer by layer in the order of ``masks``: the
same generator state and inputs give the same result. Draws happen on the generator's device
(normally CPU) and are moved to each tensor's device.

New conditions register in one place: decorate a function with ``@register_condition("name")``
(``fresh_init=True`` when it reads ``fresh_weights``, so that IMP builds a fresh initialisation for
it; ``grouped=True`` when it takes the ``groups`` keyword). Everything else (IMPConfig's validation, the IMP engine, the CLI's ``--conditions all``, the
results' condition order) reads this registry, so a registered condition runs through IMP.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

Tensors = Dict[str, torch.Tensor]
ConditionFn = Callable[[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor], Mapping[str, torch.Tensor],
                        torch.Generator], Tuple[Tensors, Tensors]]

@dataclass(frozen=True)
class Condition:
    """A registered condition: its name, its function and whether it needs a fresh initialisation."""

    name: str
    fn: ConditionFn
    fresh_init: bool = False
    grouped: bool = False  # fn takes ``groups=`` (the pruning groups); others ignore the groups

    def __call__(self, masks, init_weights, fresh_weights, generator, groups=None) -> Tuple[Tensors, Tensors]:
        if self.grouped:
            return self.fn(masks, init_weights, fresh_weights, generator, groups=groups)
        return self.fn(masks, init_weights, fresh_weights, generator)


#: name -> Condition, in registration order (the built-ins first, in the paper's order)
CONDITION_REGISTRY: Dict[str, Condition] = {}


def register_condition(name: str, fresh_init: bool = False,
                       grouped: bool = False) -> Callable[[ConditionFn], ConditionFn]:
    """Register ``fn(masks, init_weights, fresh_weights, generator) -> (masks, weights)`` as ``name``
    (``grouped``: ``fn`` also takes ``groups=``, the pruning groups or ``None``)."""
    if not isinstance(name, str) or not name or name.strip() != name:
        raise ValueError(f"condition name must be a non-empty string without outer spaces, got {name!r}")

    def add(fn: ConditionFn) -> ConditionFn:
        if name in CONDITION_REGISTRY:
            raise ValueError(f"condition {name!r} is already registered")
        CONDITION_REGISTRY[name] = Condition(name, fn, bool(fresh_init), bool(grouped))
        return fn

    return add


def condition_names() -> Tuple[str, ...]:
    """Every registered condition, in registration order (read it when needed: users add more)."""
    return tuple(CONDITION_REGISTRY)


def needs_fresh_init(condition: str) -> bool:
    return CONDITION_REGISTRY[condition].fresh_init


def _randperm(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randperm(n, generator=generator, device=generator.device).to(device)


def _masked(weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, weights, torch.zeros((), dtype=weights.dtype, device=weights.device))


def _place(values: torch.Tensor, positions: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A zero tensor shaped like ``like`` holding ``values`` at flat ``positions``."""
    out = torch.zeros(like.numel(), dtype=like.dtype, device=like.device)
    out[positions] = values
    return out.view(like.shape)


@register_condition("mask/weights")
def _ticket(masks, init_weights, fresh_weights, generator):
    return ({n: m.clone() for n, m in masks.items()},
            {n: _masked(init_weights[n], m) for n, m in masks.items()})


@register_condition("mask/permuted")
def _mask_permuted(masks, init_weights, fresh_weights, generator):
    weights = {}
    for n, m in masks.items():
        kept = m.reshape(-1).nonzero().squeeze(1)
        values = init_weights[n].reshape(-1)[kept]
        weights[n] = _place(values[_randperm(kept.numel(), generator, values.device)], kept, init_weights[n])
    return {n: m.clone() for n, m in masks.items()}, weights


@register_condition("permuted/permuted")
def _permuted_permuted(masks, init_weights, fresh_weights, generator):
    out_masks, weights = {}, {}
    for n, m in masks.items():
        flat = m.reshape(-1)
        values = init_weights[n].reshape(-1)[flat]
        # The first `kept` entries of a random permutation: a uniform random subset in random order,
        # so values (in flat order) land on uniformly random new positions in one draw.
        positions = _randperm(flat.numel(), generator, m.device)[: values.numel()]
        new = torch.zeros_like(flat)
        new[positions] = True
        out_masks[n] = new.view(m.shape)
        weights[n] = _place(values, positions, init_weights[n])
    return out_masks, weights


@register_condition("random/reinit", fresh_init=True, grouped=True)
def _random_reinit(masks, init_weights, fresh_weights, generator, groups=None):
    _check_same_layers(masks, fresh_weights, "fresh_weights")
    out_masks, weights = {}, {}
    for group in _check_groups(masks, groups):
        sizes = [masks[n].numel() for n in group]
        kept = sum(int(masks[n].sum()) for n in group)
        chosen = torch.zeros(sum(sizes), dtype=torch.bool, device=generator.device)
        chosen[_randperm(chosen.numel(), generator, chosen.device)[:kept]] = True
        for n, part in zip(group, torch.split(chosen, sizes)):
            out_masks[n] = part.view(masks[n].shape).to(masks[n].device).clone()
            weights[n] = _masked(fresh_weights[n].detach(), out_masks[n])
    return {n: out_masks[n] for n in masks}, {n: weights[n] for n in masks}


def _check_groups(masks: Mapping[str, torch.Tensor], groups) -> List[Tuple[str, ...]]:
    """``groups`` as tuples in the given order, each layer of ``masks`` in exactly one; ``None``: one group."""
    if groups is None:
        return [tuple(masks)]
    groups = [tuple(g) for g in groups]
    flat = [n for g in groups for n in g]
    if sorted(flat) != sorted(masks) or len(set(flat)) != len(flat):
        raise ValueError(f"derive_condition: groups {groups} must hold each layer of {list(masks)} exactly once")
    return groups


#: the paper's four conditions, in its order (CONDITION_REGISTRY also holds any registered later)
CONDITIONS: Tuple[str, ...] = tuple(CONDITION_REGISTRY)


def _check_same_layers(masks: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor], what: str) -> None:
    if set(masks) != set(weights):
        raise KeyError(f"derive_condition: {what} has layers {sorted(weights)}, masks have {sorted(masks)}")
    for n, m in masks.items():
        w = weights[n]
        if not isinstance(w, torch.Tensor) or w.shape != m.shape:
            shape = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
            raise ValueError(f"derive_condition: {what}[{n!r}] has shape {shape}, its mask {tuple(m.shape)}")
        if not w.dtype.is_floating_point:
            raise TypeError(f"derive_condition: {what}[{n!r}] must be floating point, got {w.dtype}")


def derive_condition(
    condition: str,
    masks: Mapping[str, torch.Tensor],
    init_weights: Mapping[str, torch.Tensor],
    fresh_weights: Mapping[str, torch.Tensor],
    generator: torch.Generator,
    groups: Optional[Sequence[Sequence[str]]] = None,
) -> Tuple[Tensors, Tensors]:
    """(masks, weights) per prunable layer for ``condition`` (see the module docstring).

    ``masks``: bool, per layer name; ``init_weights``: the same layers' initial weights (the
    rewind point); ``fresh_weights``: a new initialisation of the same layers, read only by
    ``random/reinit``; ``groups``: the pruning groups (``prune_groups``), read by grouped conditions
    (``random/reinit`` pools its random mask within each; ``None``: all layers pooled). Raises ``ValueError`` for an unknown condition (listing the valid ones) or
    mismatched shapes, ``KeyError`` for mismatched layer names.
    """
    try:
        fn = CONDITION_REGISTRY[condition]
    except (KeyError, TypeError):
        raise ValueError(f"unknown condition {condition!r}; valid: {list(CONDITION_REGISTRY)}") from None
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"derive_condition: generator must be a torch.Generator, got {type(generator).__name__}")
    for n, m in masks.items():
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
            raise TypeError(f"derive_condition: masks[{n!r}] must be a bool tensor")
    _check_same_layers(masks, init_weights, "init_weights")
    detached = {n: w.detach() for n, w in init_weights.items()}  # results carry no autograd history
    return fn(masks, detached, fresh_weights, generator, groups=groups)
