"""Global magnitude pruning of k = 20% of all weights: the fused op vs plain torch.

Every method does the whole job on the same inputs -- find the k smallest |w| over ~8 tensors and
write the masks -- starting from all-kept masks (IMP's first and largest round). The torch
baselines get the cheapest version of their recipe (no masking of already-pruned entries, since
none are), so the ratios are conservative:

- ``cat_kthvalue``: ``|cat(w)|``, ``kthvalue(k)``, then ``mask &= |w| > t`` per tensor;
- ``cat_topk``: ``|cat(w)|``, ``topk(k, largest=False)``, then the indices cleared;
- ``quantile``: ``torch.quantile(|cat(w)|, k / n)``, then the masks; torch refuses > 16M inputs.

Sizes 1M, 10M, 100M parameters (100M float32 is 400 MB; one size is alive at a time), with
``torch.set_num_threads(2)`` and the core on 2 threads.

    PYTHONPATH=. python -m pytest bench/bench_threshold.py --benchmark-columns=median,min,rounds
    PYTHONPATH=. python bench/bench_threshold.py --sizes 1M 10M 100M   # ratio table + peak memory
"""
from __future__ import annotations

import argparse
import gc
import resource
import statistics
import time
from typing import Callable, Dict, List, Sequence, Tuple

import pytest
import torch

from lottery_fast import _core
from lottery_fast.prune import prune_smallest_

THREADS = 2
RATE = 0.2
SIZES = {"1M": 1_000_000, "10M": 10_000_000, "100M": 100_000_000}
# Shares of the parameters per tensor, roughly a conv trunk, a wide dense layer and small heads.
SHARES = (0.02, 0.08, 0.15, 0.30, 0.25, 0.15, 0.04, 0.01)
QUANTILE_LIMIT = 1 << 24  # torch.quantile: "input tensor is too large" beyond 16M elements

Model = Tuple[List[torch.Tensor], List[torch.Tensor]]


def make_model(n: int, seed: int = 0) -> Model:
    g = torch.Generator().manual_seed(seed)
    sizes = [int(n * s) for s in SHARES]
    sizes[-1] += n - sum(sizes)
    # layers on different scales, as with fan-in scaled inits
    weights = [torch.randn(s, generator=g) / (i + 1) for i, s in enumerate(sizes)]
    masks = [torch.ones(s, dtype=torch.bool) for s in sizes]
    return weights, masks


def ours(weights: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], k: int) -> None:
    prune_smallest_(weights, masks, k)


def _apply_threshold(weights, masks, t) -> None:
    for w, m in zip(weights, masks):
        m &= w.abs() > t


def cat_kthvalue(weights, masks, k: int) -> None:
    flat = torch.cat([w.reshape(-1) for w in weights]).abs_()
    _apply_threshold(weights, masks, flat.kthvalue(k).values)


def cat_topk(weights, masks, k: int) -> None:
    flat = torch.cat([w.reshape(-1) for w in weights]).abs_()
    idx = flat.topk(k, largest=False, sorted=False).indices
    whole = torch.cat([m.reshape(-1) for m in masks])
    whole[idx] = False
    for m, part in zip(masks, torch.split(whole, [m.numel() for m in masks])):
        m.copy_(part.view(m.shape))


def quantile(weights, masks, k: int) -> None:
    flat = torch.cat([w.reshape(-1) for w in weights]).abs_()
    _apply_threshold(weights, masks, torch.quantile(flat, k / flat.numel(), interpolation="lower"))


METHODS: Dict[str, Callable] = {"ours": ours, "cat_kthvalue": cat_kthvalue, "cat_topk": cat_topk, "quantile": quantile}


def _set_threads(n: int = THREADS) -> None:
    torch.set_num_threads(n)
    _core.set_num_threads(n)


# --- pytest-benchmark ------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=list(SIZES))
def model(request):
    _set_threads()
    n = SIZES[request.param]
    weights, masks = make_model(n)
    yield n, weights, masks
    del weights, masks
    gc.collect()


@pytest.mark.parametrize("method", list(METHODS))
def test_threshold(benchmark, model, method):
    n, weights, masks = model
    if method == "quantile" and n > QUANTILE_LIMIT:
        pytest.skip("torch.quantile refuses inputs over 16M elements")
    k = int(RATE * n)
    benchmark.group = f"threshold {n / 1e6:g}M"
    rounds = 5 if n <= 10_000_000 else 2

    def setup():
        for m in masks:
            m.fill_(True)
        return (weights, masks, k), {}

    benchmark.pedantic(METHODS[method], setup=setup, rounds=rounds, iterations=1, warmup_rounds=1)
    assert sum(int(m.sum()) for m in masks) == n - k  # continuous weights: no ties at the threshold


# --- ratio table -----------------------------------------------------------------------------------

def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=THREADS, help="for torch and the core alike")
    args = parser.parse_args(argv)
    _set_threads(args.threads)
    print(f"threads: torch {torch.get_num_threads()}, core {_core.max_threads()}; k = {RATE:g} n; median of {args.repeat}")
    for name in args.sizes:
        n = SIZES[name]
        weights, masks = make_model(n)
        k = int(RATE * n)
        rss0 = _peak_rss_mb()
        ours_extra = 0.0
        times: Dict[str, float] = {}
        for method, fn in METHODS.items():  # ours first: the peak-RSS growth after it is its own
            if method == "quantile" and n > QUANTILE_LIMIT:
                continue
            runs = []
            for rep in range(1 + (args.repeat if n <= 10_000_000 else max(2, args.repeat // 2))):
                for m in masks:
                    m.fill_(True)
                t0 = time.perf_counter()
                fn(weights, masks, k)
                if rep:  # the first run warms up thread pools and the allocator
                    runs.append(time.perf_counter() - t0)
            if method == "ours":  # before the check below, whose bool sums allocate
                ours_extra = _peak_rss_mb() - rss0
            assert sum(int(m.sum()) for m in masks) == n - k, method
            times[method] = statistics.median(runs)
        base = times["ours"]
        print(f"\n{name} parameters ({len(weights)} tensors, {4 * n / 2**20:.0f} MiB of float32 weights); "
              f"peak RSS growth during ours: {ours_extra:.1f} MiB")
        print(f"  {'method':<14}{'median ms':>11}{'time / ours':>13}")
        for method, t in times.items():
            print(f"  {method:<14}{t * 1e3:>11.1f}{t / base:>12.1f}x")
        del weights, masks
        gc.collect()


if __name__ == "__main__":
    main()
