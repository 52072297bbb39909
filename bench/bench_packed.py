"""Whole training step of a sparse layer: packed vs masked-dense vs plain torch, same AdamW.

    PYTHONPATH=. python bench/bench_packed.py                 # table: linear and conv, 1 and 2 threads
    PYTHONPATH=. python bench/bench_packed.py --quick         # 1024x1024 batch 256 and the conv shapes only
    PYTHONPATH=. python -m pytest bench/bench_packed.py --benchmark-only   # pytest-benchmark cases

One step is what a training loop does per minibatch: ``opt.zero_grad(set_to_none=True)``,
``y = layer(x)`` with ``x.requires_grad`` (an inner layer, so the input gradient is computed too),
``y.backward(g)``, ``opt.step()`` with ``torch.optim.AdamW(foreach=True, weight_decay=0.01)``.
Implementations (``impl``):

- ``torch``: plain ``nn.Linear``/``nn.Conv2d`` (ignores the mask; every ratio is taken against it);
- ``masked``: ``MaskedLinear``/``MaskedConv2d`` (default path choice; AdamW over the full weight);
- ``packed``: ``lottery_fast.packed`` of the masked layer (default path choice; AdamW over the
  kept values);
- with ``--paths``, also ``packed_sparse`` and ``packed_dense``: the packed layer with its path
  forced (where ``path="auto"`` should switch).

The three run interleaved, step by step, on the same data, and each reports the minimum over its
steps (the machine is shared; the minimum is the least disturbed run). Threads: torch's and the
kernels', set with ``torch.set_num_threads``.
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import pytest
import torch
from torch import nn

from lottery_fast.nn import MaskedConv2d, MaskedLinear, packed

SPARSITIES = [0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99]
IMPLS = ("torch", "masked", "packed")


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[], nn.Module]   # the dense torch layer
    x_shape: Tuple[int, ...]
    steps: int


LINEAR = [Case("linear 256x256 b2048", lambda: nn.Linear(256, 256), (2048, 256), 40),
          Case("linear 1024x1024 b256", lambda: nn.Linear(1024, 1024), (256, 1024), 30),
          Case("linear 4096x4096 b256", lambda: nn.Linear(4096, 4096), (256, 4096), 6)]
CONV = [Case("conv MinAtar 16->16 3x3 10x10 b256", lambda: nn.Conv2d(16, 16, 3, padding=1), (256, 16, 10, 10), 30),
        Case("conv Atari 32->64 4x4 s2 b32", lambda: nn.Conv2d(32, 64, 4, stride=2), (32, 32, 20, 20), 40)]


def _mask(shape, sparsity: float) -> torch.Tensor:
    """Exactly round(sparsity * n) weights pruned, uniformly at random (fixed seed)."""
    n = int(torch.Size(shape).numel())
    order = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    keep = torch.ones(n, dtype=torch.bool)
    keep[order[: round(sparsity * n)]] = False
    return keep.view(shape)


def build(case: Case, sparsity: float, paths: bool = False) -> Dict[str, Tuple[nn.Module, torch.optim.Optimizer]]:
    torch.manual_seed(0)
    dense = case.make()
    twin = MaskedConv2d if isinstance(dense, nn.Conv2d) else MaskedLinear
    masked_layer = twin.from_dense(dense)
    masked_layer.set_mask(_mask(dense.weight.shape, sparsity))
    layers = {"torch": dense, "masked": masked_layer, "packed": packed(nn.Sequential(masked_layer))[0]}
    if paths:
        for path in ("sparse", "dense"):
            layers[f"packed_{path}"] = packed(nn.Sequential(masked_layer), path=path)[0]
    return {k: (m, torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.01, foreach=True))
            for k, m in layers.items()}


def step(layer: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, g: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    layer(x).backward(g)
    opt.step()


def measure(case: Case, sparsity: float, threads: int, steps: int = 0, paths: bool = False,
            clock: Callable[[], float] = time.perf_counter) -> Dict[str, float]:
    """Minimum seconds per step of each implementation, interleaved (``clock``: wall time, or
    ``time.process_time``: CPU seconds of this process, all threads together)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        impls = build(case, sparsity, paths)
        gen = torch.Generator().manual_seed(2)
        x = torch.randn(case.x_shape, generator=gen).requires_grad_()
        with torch.no_grad():
            g = torch.randn_like(impls["torch"][0](x))
        best = {k: float("inf") for k in impls}
        for i in range(steps or case.steps):
            for k, (layer, opt) in impls.items():
                x.grad = None
                t0 = clock()
                step(layer, opt, x, g)
                if i:  # the first step allocates optimizer state and builds the index
                    best[k] = min(best[k], clock() - t0)
        return best
    finally:
        torch.set_num_threads(before)


# -- pytest-benchmark cases --------------------------------------------------------------------
THREADS = int(os.environ.get("LF_BENCH_THREADS", "2"))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("case", LINEAR + CONV, ids=lambda c: c.name.replace(" ", "_"))
def test_train_step(benchmark, case: Case, sparsity: float, impl: str) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        layer, opt = build(case, sparsity)[impl]
        x = torch.randn(case.x_shape).requires_grad_()
        with torch.no_grad():
            g = torch.randn_like(layer(x))
        step(layer, opt, x, g)
        benchmark.pedantic(step, args=(layer, opt, x, g), rounds=case.steps, warmup_rounds=1)
    finally:
        torch.set_num_threads(before)


# -- table -------------------------------------------------------------------------------------
def table(cases: List[Case], sparsities: List[float], threads: List[int], paths: bool = False,
          steps: int = 0, clock: Callable[[], float] = time.perf_counter) -> None:
    extra = ("packed_sparse", "packed_dense") if paths else ()
    print(f"{'case':38s} {'thr':>3s} {'sparsity':>8s} {'torch ms':>9s} {'masked ms':>9s} {'packed ms':>9s} "
          f"{'packed/torch':>12s} {'packed/masked':>13s}" + "".join(f" {k + ' ms':>16s}" for k in extra))
    for case in cases:
        for t in threads:
            for s in sparsities:
                best = measure(case, s, t, steps, paths, clock)
                print(f"{case.name:38s} {t:3d} {s:8.2f} {best['torch'] * 1e3:9.3f} {best['masked'] * 1e3:9.3f} "
                      f"{best['packed'] * 1e3:9.3f} {best['torch'] / best['packed']:11.2f}x "
                      f"{best['masked'] / best['packed']:12.2f}x" + "".join(f" {best[k] * 1e3:16.3f}" for k in extra),
                      flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1024x1024 and the conv shapes, 2 threads")
    ap.add_argument("--threads", type=int, nargs="+", default=None)
    ap.add_argument("--sparsities", type=float, nargs="+", default=None)
    ap.add_argument("--cases", nargs="+", default=None, help="substrings of case names")
    ap.add_argument("--steps", type=int, default=0, help="steps per measurement (default: per case)")
    ap.add_argument("--paths", action="store_true", help="also the packed layer with each path forced")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time steps in CPU seconds of this process (time.process_time) instead of wall time: "
                         "on a loaded machine, with one thread, it leaves out the time other processes took")
    args = ap.parse_args()
    cases = LINEAR + CONV
    if args.quick:
        cases = [LINEAR[1]] + CONV
    if args.cases:
        cases = [c for c in cases if any(s in c.name for s in args.cases)]
    threads = args.threads or ([2] if args.quick else [1, 2])
    table(cases, args.sparsities or SPARSITIES, threads, args.paths, args.steps,
          time.process_time if args.cpu_time else time.perf_counter)
