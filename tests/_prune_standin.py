"""TEMPORARY pure-torch stand-in for lottery_fast.prune until the real module lands in main.

Installed into the (still empty) ``lottery_fast.prune`` package only when it lacks ``prune_model``;
delete this file once the real implementation is merged.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Dict, Tuple

import torch

CONDITIONS = ("mask/weights", "mask/permuted", "permuted/permuted", "random/reinit")


@dataclass(frozen=True)
class PruneConfig:
    rate: float = 0.2
    scope: str = "global"
    exclude: Tuple[str, ...] = ()
    layer_rates: Tuple[Tuple[str, float], ...] = ()


@dataclass
class PruneReport:
    threshold: float
    pruned: Dict[str, int]
    density: Dict[str, float]
    overall_density: float


def prunable_layers(model, exclude=()):
    from lottery_fast.nn import masked_modules

    return {n: m for n, m in masked_modules(model).items() if not any(fnmatch.fnmatch(n, p) for p in exclude)}


def _prune_group(layers, rate):
    names = list(layers)
    mags = torch.cat([layers[n].weight.detach().abs().flatten().double() for n in names])
    kept = torch.cat([layers[n].mask.flatten() for n in names])
    idx = kept.nonzero().flatten()
    k = int(round(rate * idx.numel()))
    order = torch.argsort(mags[idx], stable=True)  # ties broken by flat index
    drop = idx[order[:k]]
    new = kept.clone()
    new[drop] = False
    thr = float(mags[drop].max()) if k else 0.0
    off = 0
    pruned = {}
    for n in names:
        m = layers[n].mask
        part = new[off:off + m.numel()].view_as(m)
        pruned[n] = int(m.sum() - part.sum())
        layers[n].set_mask(part)
        off += m.numel()
    return thr, pruned


def prune_model(model, config):
    layers = prunable_layers(model, config.exclude)
    if config.scope == "global":
        thr, pruned = _prune_group(layers, config.rate)
    else:
        pruned, thr = {}, 0.0
        for n, layer in layers.items():
            t, p = _prune_group({n: layer}, config.rate)
            pruned.update(p)
    dens = {n: l.density for n, l in layers.items()}
    total = sum(l.mask.numel() for l in layers.values())
    overall = sum(int(l.mask.sum()) for l in layers.values()) / total
    return PruneReport(thr, pruned, dens, overall)


def derive_condition(condition, masks, init_weights, fresh_weights, generator):
    out_m, out_w = {}, {}
    if condition == "mask/weights":
        for n, m in masks.items():
            out_m[n] = m.clone()
            out_w[n] = init_weights[n] * m
    elif condition in ("mask/permuted", "permuted/permuted"):
        for n, m in masks.items():
            flat = m.flatten()
            kept = flat.nonzero().flatten()
            vals = init_weights[n].flatten()[kept]
            vals = vals[torch.randperm(vals.numel(), generator=generator)]
            if condition == "permuted/permuted":
                pos = torch.randperm(flat.numel(), generator=generator)[:kept.numel()]
                flat = torch.zeros_like(flat)
                flat[pos] = True
                kept = flat.nonzero().flatten()
            w = torch.zeros(flat.numel(), dtype=init_weights[n].dtype)
            w[kept] = vals
            out_m[n] = flat.view_as(m)
            out_w[n] = w.view_as(m)
    elif condition == "random/reinit":
        names = list(masks)
        total = sum(masks[n].numel() for n in names)
        count = sum(int(masks[n].sum()) for n in names)
        flat = torch.zeros(total, dtype=torch.bool)
        flat[torch.randperm(total, generator=generator)[:count]] = True
        off = 0
        for n in names:
            m = flat[off:off + masks[n].numel()].view_as(masks[n])
            off += masks[n].numel()
            out_m[n] = m
            out_w[n] = fresh_weights[n] * m
    else:
        raise ValueError(condition)
    return out_m, out_w


RESCALE_MODES = ("none", "fan_in", "rms")


@torch.no_grad()
def rescale_init_(model, layers=None, mode="fan_in", reference=None):
    from lottery_fast.nn import masked_modules

    avail = masked_modules(model)
    chosen = {n: avail[n] for n in (layers if layers is not None else avail)}
    if mode == "none":
        return {n: 1.0 for n in chosen}
    assert mode == "fan_in", "stand-in: fan_in only"
    fan = {n: m.weight[0].numel() for n, m in chosen.items()}
    ref = reference if reference is not None else max(fan.values())
    scales = {n: (fan[n] / ref) ** 0.5 for n in chosen}
    for n, m in chosen.items():
        m.weight.mul_(scales[n])
    return scales


def install() -> None:
    import lottery_fast.prune as target

    if hasattr(target, "prune_model"):
        return
    for name in ("CONDITIONS", "PruneConfig", "PruneReport", "prunable_layers", "prune_model", "derive_condition",
                 "RESCALE_MODES", "rescale_init_"):
        setattr(target, name, globals()[name])
