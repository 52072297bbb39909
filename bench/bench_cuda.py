"""GPU benchmarks: masked linear and conv2d forward+backward, and the global threshold, each
against what torch offers for the same job, timed on one GPU in one run (skipped without one).

    pytest bench/bench_cuda.py --benchmark-only --benchmark-json=/tmp/bench_cuda.json
    python bench/report_cuda.py /tmp/bench_cuda.json   # ratio tables

Every timed call ends with ``torch.cuda.synchronize()``, so a round is the wall time of the work
as a training loop sees it: launches, Python and autograd overhead and the GPU time. Linear
implementations are those of bench_linear.py (``dense`` nn.Linear is the baseline, measured at
every sparsity right before the others), plus ``dense_graph`` and ``ours_sparse_graph``: the same
step captured with ``torch.cuda.make_graphed_callables``, i.e. the GPU time without the Python and
launch overhead that bounds small layers; conv compares ``nn.Conv2d`` with ``MaskedConv2d`` on a
MinAtar-sized and an Atari-sized input; the threshold compares ``prune_smallest_`` (selection and
mask update) with ``torch.cat`` + ``kthvalue`` and ``torch.cat`` + ``topk`` (threshold only) over a
model-like split of 10M and 100M float32 weights, pruning 20%.
"""
from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from bench_linear import Size, _step, make_layer
from lottery_fast import cuda
from lottery_fast.nn import MaskedConv2d
from lottery_fast.prune import prune_smallest_

pytestmark = pytest.mark.skipif(not cuda.is_available(), reason="needs the CUDA core and a CUDA device")
DEV = torch.device("cuda")

LINEAR_SIZES = [Size(256, 4096), Size(1024, 256), Size(4096, 256)]
LINEAR_SPARSITIES = [0.0, 0.5, 0.8, 0.9, 0.95, 0.99]
LINEAR_IMPLS = ["dense", "torch_csr", "ours_dense", "ours_sparse", "ours_auto", "dense_graph", "ours_sparse_graph"]
ROUNDS = 30


def _synced(fn):
    def run() -> None:
        fn()
        torch.cuda.synchronize()
    return run


def _train_step(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor):
    return _synced(_step(layer, x, grad))


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("impl", LINEAR_IMPLS)
@pytest.mark.parametrize("sparsity", LINEAR_SPARSITIES)
@pytest.mark.parametrize("size", LINEAR_SIZES, ids=lambda s: s.name)
def test_cuda_linear_fwd_bwd(benchmark, size: Size, sparsity: float, impl: str):
    graphed = impl.endswith("_graph")
    layer = make_layer(impl.removesuffix("_graph"), size, sparsity).to(DEV)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(size.batch, size.features, generator=gen).to(DEV).requires_grad_()
    grad = torch.randn(size.batch, size.features, generator=gen).to(DEV)
    if hasattr(layer, "uses_sparse_path"):
        benchmark.extra_info["path_taken"] = "sparse" if layer.uses_sparse_path(x) else "dense"
    if graphed:
        # forward and backward captured as CUDA graphs: the GPU work without Python/launch overhead
        layer = torch.cuda.make_graphed_callables(layer, (x,))
    benchmark.group = f"cuda linear {size.name}"
    benchmark.extra_info.update(features=size.features, batch=size.batch, sparsity=sparsity, impl=impl,
                                device=torch.cuda.get_device_name())
    benchmark.pedantic(_train_step(layer, x, grad), rounds=ROUNDS, iterations=1, warmup_rounds=3)


# name: (batch, in_channels, height, width, out_channels, kernel, stride, padding)
CONV_CASES = {
    "minatar_b256_16x10x10": (256, 16, 10, 10, 32, 3, 1, 1),
    "atari_b256_4x84x84": (256, 4, 84, 84, 32, 8, 4, 0),
}
CONV_SPARSITIES = [0.0, 0.5, 0.8, 0.9, 0.95, 0.99]
CONV_IMPLS = ["dense", "ours_dense", "ours_sparse", "ours_auto"]


@functools.lru_cache(maxsize=None)
def _conv_mask(shape, sparsity: float) -> torch.Tensor:
    n = int(torch.Size(shape).numel())
    keep = torch.ones(n, dtype=torch.bool)
    keep[torch.randperm(n, generator=torch.Generator().manual_seed(1))[: round(sparsity * n)]] = False
    return keep.view(shape)


@pytest.mark.parametrize("impl", CONV_IMPLS)
@pytest.mark.parametrize("sparsity", CONV_SPARSITIES)
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_cuda_conv_fwd_bwd(benchmark, case: str, sparsity: float, impl: str):
    n, c, h, w, o, k, s, p = CONV_CASES[case]
    torch.manual_seed(0)
    dense = nn.Conv2d(c, o, k, stride=s, padding=p)
    if impl == "dense":
        layer: nn.Module = dense
    else:
        layer = MaskedConv2d.from_dense(dense, path=impl.split("_", 1)[1])
        layer.set_mask(_conv_mask(tuple(dense.weight.shape), sparsity))
    layer = layer.to(DEV)
    x = torch.randn(n, c, h, w, device=DEV).requires_grad_()
    grad = torch.randn_like(layer(x)).detach()
    benchmark.group = f"cuda conv {case}"
    benchmark.extra_info.update(case=case, sparsity=sparsity, impl=impl, device=torch.cuda.get_device_name())
    benchmark.pedantic(_train_step(layer, x, grad), rounds=ROUNDS, iterations=1, warmup_rounds=3)


# A model-like split: one big layer and a few smaller ones.
THRESHOLD_SPLIT = (0.6, 0.3, 0.09, 0.01)
THRESHOLD_IMPLS = ["ours", "cat_kthvalue", "cat_topk"]


@functools.lru_cache(maxsize=2)
def _weights(total: int):
    gen = torch.Generator(device=DEV).manual_seed(0)
    sizes = [int(total * f) for f in THRESHOLD_SPLIT]
    return [torch.randn(s, generator=gen, device=DEV) * (0.01 + i) for i, s in enumerate(sizes)]


@pytest.mark.parametrize("impl", THRESHOLD_IMPLS)
@pytest.mark.parametrize("total", [10_000_000, 100_000_000], ids=["10M", "100M"])
def test_cuda_global_threshold(benchmark, total: int, impl: str):
    weights = _weights(total)
    k = int(0.2 * sum(w.numel() for w in weights))
    masks = [torch.ones_like(w, dtype=torch.bool) for w in weights]
    benchmark.group = f"cuda threshold {total // 1_000_000}M"
    benchmark.extra_info.update(total=total, impl=impl, device=torch.cuda.get_device_name())

    def reset() -> None:
        for m in masks:
            m.fill_(True)
        torch.cuda.synchronize()

    if impl == "ours":
        run = _synced(lambda: prune_smallest_(weights, masks, k))
    elif impl == "cat_kthvalue":
        run = _synced(lambda: torch.cat([w.abs().reshape(-1) for w in weights]).kthvalue(k))
    else:
        run = _synced(lambda: torch.cat([w.abs().reshape(-1) for w in weights]).topk(k, largest=False, sorted=False))
    benchmark.pedantic(run, setup=reset, rounds=5 if impl == "ours" else 3, iterations=1, warmup_rounds=1)
