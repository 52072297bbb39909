"""Magnitude pruning of a model's masked layers: global (one threshold over all of them) or layer-wise.

One call of :func:`prune_model` removes ``rate`` of the still-unpruned prunable weights: the
smallest by ``|w|``, exactly ``round(rate * remaining)`` of them (round half up), ties broken by
(layer order, flat index) -- see :mod:`lottery_fast.prune.threshold`. Only the ``weight`` of masked
layers is pruned, never biases. Module-name patterns (``fnmatch``, case-sensitive) select layers:
a pattern matches a layer when it matches the layer's name or the name of a module containing it,
so ``"critic"`` and ``"critic.*"`` both cover ``critic.0``. The first ``layer_rates`` entry that
matches a layer gives its rate.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .. import cuda
from .._buffers import dtype_code
from ..nn.base import MaskedMixin, masked_modules
from ..nn.packed import PackedMixin
from .threshold import prune_smallest_

SCOPES = ("global", "layerwise")


def _check_rate(rate: float, what: str) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
        raise ValueError(f"{what} must be a number in [0, 1), got {rate!r}")
    return float(rate)


@dataclass(frozen=True)
class PruneConfig:
    #: fraction of the still-unpruned prunable weights removed per call, in [0, 1)
    rate: float = 0.2
    #: "global": one magnitude ranking over all prunable layers; "layerwise": each layer alone
    scope: str = "global"
    #: module-name patterns never pruned (e.g. "critic.*")
    exclude: Tuple[str, ...] = ()
    #: (module-name pattern, rate): matching layers are pruned layer-wise at their own rate
    layer_rates: Tuple[Tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        _check_rate(self.rate, "PruneConfig.rate")
        if self.scope not in SCOPES:
            raise ValueError(f"PruneConfig.scope must be one of {SCOPES}, got {self.scope!r}")
        if isinstance(self.exclude, str) or not all(isinstance(p, str) for p in self.exclude):
            raise TypeError(f"PruneConfig.exclude must be a tuple of patterns, got {self.exclude!r}")
        for entry in self.layer_rates:
            if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], str)):
                raise TypeError(f"PruneConfig.layer_rates entries must be (pattern, rate), got {entry!r}")
            _check_rate(entry[1], f"PruneConfig.layer_rates rate for {entry[0]!r}")
        # Accept lists (e.g. from a JSON config) but store tuples: the config stays hashable.
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "layer_rates", tuple((p, float(r)) for p, r in self.layer_rates))


@dataclass
class PruneReport:
    #: largest |w| pruned by the global ranking; None when no global ranking ran or nothing was pruned
    threshold: Optional[float]
    #: weights pruned by this call, per prunable layer
    pruned: Dict[str, int] = field(default_factory=dict)
    #: kept fraction per prunable layer after the call
    density: Dict[str, float] = field(default_factory=dict)
    #: kept / total over all prunable layers after the call
    overall_density: float = 1.0


def name_matches(name: str, pattern: str) -> bool:
    parts = name.split(".")
    return any(fnmatchcase(".".join(parts[:i]), pattern) for i in range(1, len(parts) + 1))


def prunable_layers(model: nn.Module, exclude: Sequence[str] = ()) -> Dict[str, MaskedMixin]:
    """The masked layers of ``model`` (registration order) not matched by any ``exclude`` pattern.

    Raises ``ValueError`` for a pattern that matches no masked layer (a typo would silently prune
    what it meant to protect).
    """
    layers = masked_modules(model)
    for pattern in exclude:
        if not any(name_matches(name, pattern) for name in layers):
            raise ValueError(f"exclude pattern {pattern!r} matches no masked layer; masked layers: {list(layers)}")
    return {name: m for name, m in layers.items() if not any(name_matches(name, p) for p in exclude)}


def _rate_overrides(layers: Iterable[str], layer_rates: Sequence[Tuple[str, float]]) -> Dict[str, float]:
    names = list(layers)
    for pattern, _ in layer_rates:
        if not any(name_matches(name, pattern) for name in names):
            raise ValueError(f"layer_rates pattern {pattern!r} matches no prunable layer; prunable layers: {names}")
    out = {}
    for name in names:
        for pattern, rate in layer_rates:
            if name_matches(name, pattern):
                out[name] = rate
                break
    return out


def prune_groups(layer_names: Iterable[str], config: PruneConfig) -> List[Tuple[str, ...]]:
    """The layers :func:`prune_model` ranks together, as groups in layer order: under global scope
    every layer without a ``layer_rates`` override is one group and each overridden layer its own;
    under layer-wise scope every layer is its own group. A condition that redraws masks at random
    (``random/reinit``) keeps each group's kept count, so a layer IMP protects keeps its share."""
    names = list(layer_names)
    own = _rate_overrides(names, config.layer_rates)
    if config.scope == "layerwise":
        return [(n,) for n in names]
    ranked = tuple(n for n in names if n not in own)
    return ([ranked] if ranked else []) + [(n,) for n in names if n in own]


def _count_to_prune(rate: float, remaining: int) -> int:
    return int(math.floor(rate * remaining + 0.5))


def _ranked(layer: MaskedMixin) -> Tuple[torch.Tensor, torch.Tensor]:
    """(weights, mask) the magnitude ranking reads and prunes in place. A packed layer ranks its
    kept values (row-major order, so ties fall as in the dense layout) under a mask of its own."""
    if isinstance(layer, PackedMixin):
        v = layer.values.detach()
        return v, torch.ones(v.shape, dtype=torch.bool, device=v.device)
    return layer.weight.detach(), layer.mask


def _validate(name: str, layer: MaskedMixin) -> None:
    w, keep = _ranked(layer)
    dtype_code(w, f"prune_model: layer {name!r} weight")
    if not bool(torch.isfinite(w).all()):
        bad = ~torch.isfinite(w) & keep
        if bool(bad.any()):
            idx = int(bad.reshape(-1).nonzero()[0])
            raise ValueError(
                f"prune_model: layer {name!r} has a non-finite weight ({float(w.reshape(-1)[idx])}) "
                f"at kept flat index {idx}"
            )


def _prune_group(names: List[str], layers: Dict[str, MaskedMixin], rate: float) -> Tuple[float, List[int]]:
    weights, masks = (list(t) for t in zip(*(_ranked(layers[n]) for n in names)))
    device = masks[0].device
    on_device = (device.type == "cuda" and cuda.built() and all(m.is_contiguous() for m in masks)
                 and all(t.device == device for t in masks + weights))
    # The kernels take contiguous buffers on one device: masks elsewhere (mixed devices, a GPU
    # without the CUDA core, channels_last) are pruned as contiguous CPU copies and copied back.
    work = masks if on_device else [
        m if m.device.type == "cpu" and m.is_contiguous() else m.detach().cpu().contiguous() for m in masks]
    if not on_device:
        weights = [w.cpu() for w in weights]
    remaining = sum(int(m.count_nonzero()) for m in work)
    res = prune_smallest_(weights, work, _count_to_prune(rate, remaining), names=names)
    with torch.no_grad():
        for n, m, w in zip(names, masks, work):
            if w is not m:
                m.copy_(w)
            if isinstance(layers[n], PackedMixin):
                layers[n].keep_values_(m)  # repacks the layer without the pruned values
    return res.threshold, res.pruned


def prune_model(model: nn.Module, config: PruneConfig) -> PruneReport:
    """Prune ``model``'s masked layers in place per ``config``; pruned weights become exactly 0.

    Global scope: ``round(rate * remaining)`` weights over all prunable layers without a
    ``layer_rates`` override, ranked together. Layer-wise scope, and every overridden layer: each
    layer loses ``round(layer_rate * remaining_in_layer)``. Masks and weights are left unchanged
    when an error is raised (bad config, unsupported dtype, NaN/inf weight, no prunable layer).
    """
    if not isinstance(config, PruneConfig):
        raise TypeError(f"prune_model: config must be a PruneConfig, got {type(config).__name__}")
    layers = prunable_layers(model, config.exclude)
    if not layers:
        raise ValueError("prune_model: the model has no prunable (masked, not excluded) layers")
    per_layer = _rate_overrides(layers, config.layer_rates)
    for name, layer in layers.items():
        _validate(name, layer)  # before any mask changes, so an error leaves the model as it was

    pruned: Dict[str, int] = {}
    threshold: Optional[float] = None
    ranked = [n for n in layers if n not in per_layer]
    with contextlib.ExitStack() as held:
        # The core writes the masks through raw pointers: a forward of these layers in another
        # thread waits until the masks and weights are all pruned (see nn.base, "Threads").
        for layer in layers.values():
            held.enter_context(layer.mask_lock)
        if config.scope == "global":
            if ranked:
                t, counts = _prune_group(ranked, layers, config.rate)
                pruned.update(zip(ranked, counts))
                threshold = t if sum(counts) else None
        else:
            per_layer = {**{n: config.rate for n in ranked}, **per_layer}
        for name, rate in per_layer.items():
            _, (count,) = _prune_group([name], layers, rate)
            pruned[name] = count

        for layer in layers.values():
            layer.apply_mask_()
    kept = sum(int(layer.mask.count_nonzero()) for layer in layers.values())
    total = sum(layer.mask.numel() for layer in layers.values())
    return PruneReport(
        threshold=threshold,
        pruned={name: pruned[name] for name in layers},
        density={name: layer.density for name, layer in layers.items()},
        overall_density=kept / total if total else 0.0,
    )


def sparsity_after(iterations: int, rate: float) -> float:
    """Fraction pruned after ``iterations`` calls at ``rate`` (ignoring rounding): 1 - (1 - rate)^n."""
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"sparsity_after: iterations must be an int >= 0, got {iterations!r}")
    return 1.0 - (1.0 - _check_rate(rate, "sparsity_after: rate")) ** iterations
