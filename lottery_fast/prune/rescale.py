"""Initialisation rescaling: put every prunable layer on one weight scale before global pruning.

Global magnitude pruning compares weights across layers, so a layer initialised at a larger scale
is pruned last. With fan-in scaled inits (std = gain / sqrt(fan_in), torch's default family) a
control task's input layer (fan_in 4 on Cart-Pole) starts 4x larger than a 64-unit hidden layer,
and no input dimension is ever removed; rescaling lets all layers compete (the paper's third
claim, see /work/shared/paper/notes.md). Our PPO/BC networks use orthogonal inits, which already
give the input and hidden layers one scale: there ``"rms"`` mostly enlarges the 0.01-gain head and
``"fan_in"`` shrinks the input layer until pruning removes it (results/report-rescale). It changes
the network (its initial function), so it is part of the experiment's config, applied once to the
initial weights before IMP starts.

Modes, for each chosen layer ``l`` with weight ``W_l`` (biases are never touched, and pruned
entries stay 0 since they are only multiplied):

- ``"none"``: nothing changes (scale 1), so a config can name the baseline.
- ``"fan_in"``: ``W_l *= sqrt(fan_in_l / fan_in_ref)``, where ``fan_in_l = W_l[0].numel()``
  (in_features, or in_channels/groups * kh * kw) and ``fan_in_ref`` is ``reference`` or, by
  default, the largest fan-in among the layers (so no layer grows). A fan-in scaled init of
  std ``g / sqrt(fan_in_l)`` becomes std ``g / sqrt(fan_in_ref)`` in every layer; per-layer gains
  (e.g. an actor head at gain 0.01) are kept.
- ``"rms"``: ``W_l *= rms_ref / rms_l`` with ``rms_l = sqrt(mean(W_l[kept]^2))`` (the standard
  deviation about zero of the kept weights, i.e. the std of a zero-mean init, also defined for a
  single weight); ``rms_ref`` is ``reference`` or, by default, ``rms_l`` of the layer with the
  largest fan-in (the first such one). Every layer ends at the same RMS, gains included.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, Optional

import torch
from torch import nn

from ..nn.base import MaskedMixin, masked_modules

RESCALE_MODES = ("none", "fan_in", "rms")


def _fan_in(layer: MaskedMixin) -> int:
    return int(layer.weight[0].numel()) if layer.weight.dim() > 1 else 1


def _rms(name: str, layer: MaskedMixin) -> float:
    w = layer.weight.detach()
    kept = w[layer.mask].double()
    if kept.numel() == 0:
        raise ValueError(f"rescale_init_: layer {name!r} has no kept weights, its scale is undefined")
    rms = float(kept.square().mean().sqrt())
    if not math.isfinite(rms):
        raise ValueError(f"rescale_init_: layer {name!r} has non-finite weights")
    if rms == 0.0:
        raise ValueError(f"rescale_init_: layer {name!r} has all kept weights 0, its scale is undefined")
    return rms


@torch.no_grad()
def rescale_init_(
    model: nn.Module,
    layers: Optional[Iterable[str]] = None,
    mode: str = "fan_in",
    reference: Optional[float] = None,
) -> Dict[str, float]:
    """Rescale the weights of ``layers`` (masked-layer names; default all masked layers) in place.

    Returns the factor each layer's weight was multiplied by. See the module docstring for the
    exact formulas of ``mode`` and the default ``reference`` (a fan-in for ``"fan_in"``, an RMS
    for ``"rms"``).
    """
    if mode not in RESCALE_MODES:
        raise ValueError(f"rescale_init_: unknown mode {mode!r}; valid: {list(RESCALE_MODES)}")
    if reference is not None and not (isinstance(reference, (int, float)) and math.isfinite(reference) and reference > 0):
        raise ValueError(f"rescale_init_: reference must be a finite number > 0, got {reference!r}")
    available = masked_modules(model)
    names = list(available) if layers is None else list(layers)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise KeyError(f"rescale_init_: {unknown} are not masked layers of the model; masked layers: {list(available)}")
    if not names:
        raise ValueError("rescale_init_: no layers to rescale")
    chosen = {n: available[n] for n in names}
    if mode == "none":
        return {n: 1.0 for n in chosen}

    fan_in = {n: _fan_in(m) for n, m in chosen.items()}
    widest = max(chosen, key=lambda n: fan_in[n])  # first of the largest fan-ins
    if mode == "fan_in":
        ref = float(reference) if reference is not None else float(fan_in[widest])
        scales = {n: math.sqrt(fan_in[n] / ref) for n in chosen}
    else:
        rms = {n: _rms(n, m) for n, m in chosen.items()}
        ref = float(reference) if reference is not None else rms[widest]
        scales = {n: ref / rms[n] for n in chosen}
    for n, m in chosen.items():
        m.weight.mul_(scales[n])
    return scales
