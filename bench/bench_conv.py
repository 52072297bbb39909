"""Masked conv2d forward+backward: our sparse kernel vs dense nn.Conv2d vs torch.nn.utils.prune.

Run:   PYTHONPATH=. python -m pytest bench/bench_conv.py --benchmark-json=/tmp/bench_conv.json
Ratios: python bench/bench_conv.py /tmp/bench_conv.json [more.json ...]
        (ours/dense per configuration and sparsity; with several runs, each statistic's best)

Two threads for torch and for our kernels (which follow torch.get_num_threads()); the environment
variable LF_BENCH_THREADS overrides that. Layer sizes are those of the MinAtar network (one 3x3
conv over 10x10 frames, batch 256) and of the Nature-DQN Atari network's first two convolutions
(batch 32). On a shared machine, OpenMP barriers make multi-threaded medians swing by 10x or
more; the summary therefore gives ratios of the minimum (the run least disturbed) and of the
median.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from lottery_fast.nn.conv import MaskedConv2d


@dataclass(frozen=True)
class ConvCase:
    name: str
    batch: int
    in_channels: int
    out_channels: int
    size: int
    kernel: int
    stride: int
    input_grad: bool  # an inner layer also needs the gradient of its input


CASES = [
    ConvCase("minatar_c4", 256, 4, 16, 10, 3, 1, False),
    ConvCase("minatar_c16", 256, 16, 16, 10, 3, 1, False),
    ConvCase("atari_conv1", 32, 4, 32, 84, 8, 4, False),
    ConvCase("atari_conv2", 32, 32, 64, 20, 4, 2, True),
]
SPARSITIES = [0.0, 0.5, 0.7, 0.9, 0.95, 0.99]
IMPLS = ["dense", "torch_prune", "ours_sparse", "ours_auto"]


THREADS = int(os.environ.get("LF_BENCH_THREADS", "2"))


@pytest.fixture(autouse=True)
def bench_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


def make_layer(case: ConvCase, impl: str, sparsity: float) -> nn.Module:
    torch.manual_seed(0)
    dense = nn.Conv2d(case.in_channels, case.out_channels, case.kernel, stride=case.stride)
    scores = torch.rand(dense.weight.shape, generator=torch.Generator().manual_seed(1))
    mask = scores >= torch.quantile(scores.flatten(), sparsity) if sparsity > 0 else torch.ones_like(scores).bool()
    if impl == "dense":
        return dense
    if impl == "torch_prune":
        return prune.custom_from_mask(dense, "weight", mask)
    layer = MaskedConv2d.from_dense(dense, path="sparse" if impl == "ours_sparse" else "auto")
    layer.set_mask(mask)
    return layer


def step(layer: nn.Module, x: torch.Tensor) -> None:
    for p in layer.parameters():
        p.grad = None
    layer(x).sum().backward()


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_conv_forward_backward(benchmark, case: ConvCase, impl: str, sparsity: float):
    if impl == "dense" and sparsity > 0:
        pytest.skip("dense nn.Conv2d does not depend on sparsity")
    layer = make_layer(case, impl, sparsity)
    x = torch.randn(case.batch, case.in_channels, case.size, case.size, requires_grad=case.input_grad)
    benchmark.group = case.name
    benchmark.extra_info.update(impl=impl, sparsity=sparsity)
    if isinstance(layer, MaskedConv2d):
        benchmark.extra_info["sparse_path"] = layer.uses_sparse_path(x)
    step(layer, x)  # warm-up: index build, allocator
    benchmark.extra_info["threads"] = torch.get_num_threads()
    benchmark.pedantic(step, args=(layer, x), rounds=30, iterations=1, warmup_rounds=2)


def summarize(paths: Sequence[str]) -> None:
    """Print time ratios ours/dense (min and median) and where the sparse path overtakes dense.

    With several benchmark files (repeated runs on a busy machine), each statistic is the best
    (lowest) over the files.
    """
    stats: Dict[Tuple[str, str, float], Dict[str, float]] = {}
    for path in paths:
        with open(path) as f:
            runs = json.load(f)["benchmarks"]
        for r in runs:
            info = r["extra_info"]
            key = (r["group"], info["impl"], info["sparsity"])
            best = stats.setdefault(key, {"min": float("inf"), "median": float("inf")})
            best["min"] = min(best["min"], r["stats"]["min"])
            best["median"] = min(best["median"], r["stats"]["median"])
    impls = ("ours_sparse", "torch_prune", "ours_auto")
    for case in CASES:
        dense = stats.get((case.name, "dense", 0.0))
        if dense is None:
            continue
        print(f"{case.name}: dense nn.Conv2d forward+backward min {dense['min'] * 1e3:.3f} ms, "
              f"median {dense['median'] * 1e3:.3f} ms; ratios to it as min (median)")
        print("  sparsity  " + "  ".join(f"{name:>14}" for name in impls))
        crossover = None
        for s in SPARSITIES:
            cells = []
            for impl in impls:
                st = stats.get((case.name, impl, s))
                cells.append(f"{st['min'] / dense['min']:5.2f} ({st['median'] / dense['median']:5.2f})"
                             if st else f"{'-':>14}")
            print(f"  {s:8.2f}  " + "  ".join(cells))
            sparse = stats.get((case.name, "ours_sparse", s))
            if crossover is None and sparse is not None and sparse["min"] < dense["min"]:
                crossover = s
        print(f"  sparse path faster than dense (min) from sparsity {crossover}" if crossover is not None
              else "  sparse path never faster than dense (min) here")


if __name__ == "__main__":
    summarize(sys.argv[1:] or ["/tmp/bench_conv.json"])
