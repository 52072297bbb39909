"""Masked linear layer, forward + backward, against what torch offers for the same job.

    PYTHONPATH=. python -m pytest bench/bench_linear.py --benchmark-only \\
        --benchmark-json=/tmp/bench_linear.json          # add -k "not 4096" to skip the heavy size
    python bench/report_linear.py /tmp/bench_linear.json  # ratio table and crossover per size

Every implementation does one training step's worth of work on the same data: ``y = layer(x)``
with ``x.requires_grad`` (an inner layer), then ``y.backward(g)``, which produces the input, weight
and bias gradients; gradients are reset to None before each call, as ``optimizer.zero_grad()``
does. Implementations (``impl``):

- ``dense``: plain ``nn.Linear`` (ignores the mask; the baseline every ratio is taken against);
- ``prune``: ``nn.Linear`` with ``torch.nn.utils.prune.l1_unstructured`` (weight = orig * mask
  recomputed by a forward pre-hook);
- ``torch_csr``: ``(weight * mask).to_sparse_csr() @ x.T`` with torch autograd; the conversion is
  part of each call because training changes the weight values every step;
- ``ours_sparse``: ``MaskedLinear(path="sparse")``, the compiled kernels;
- ``ours_dense``: ``MaskedLinear(path="dense")``, torch's GEMM on the masked weight;
- ``ours_auto``: ``MaskedLinear`` with its default automatic choice.

``dense`` ignores the sparsity but is measured at every sparsity anyway, right before the others,
so that each ratio compares runs that were close in time (this machine is shared and noisy).

Two threads everywhere (torch and our kernels, which follow ``torch.get_num_threads()``);
``LF_BENCH_THREADS=1`` runs everything single-threaded, which other load disturbs much less.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from lottery_fast.nn import MaskedLinear

THREADS = int(os.environ.get("LF_BENCH_THREADS", "2"))


@dataclass(frozen=True)
class Size:
    features: int
    batch: int

    @property
    def name(self) -> str:
        return f"{self.features}x{self.features}_b{self.batch}"


SIZES = [Size(64, 2048), Size(256, 2048), Size(1024, 256), Size(4096, 256)]
# Rounds per benchmark: 4096x4096 takes 0.1-3 s per call.
ROUNDS = {64: 60, 256: 40, 1024: 30, 4096: 4}
SPARSITIES = [0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99]
IMPLS = ["dense", "prune", "torch_csr", "ours_sparse", "ours_dense", "ours_auto"]


@pytest.fixture(autouse=True)
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


def _mask(size: Size, sparsity: float) -> torch.Tensor:
    """Exactly round(sparsity * n) weights pruned, chosen uniformly at random."""
    n = size.features * size.features
    order = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    keep = torch.ones(n, dtype=torch.bool)
    keep[order[: round(sparsity * n)]] = False
    return keep.view(size.features, size.features)


class _TorchCSR(nn.Module):
    def __init__(self, dense: nn.Linear, mask: torch.Tensor) -> None:
        super().__init__()
        self.weight, self.bias = dense.weight, dense.bias
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = (self.weight * self.mask).to_sparse_csr()
        return (w @ x.t()).t() + self.bias


def make_layer(impl: str, size: Size, sparsity: float) -> nn.Module:
    torch.manual_seed(0)
    dense = nn.Linear(size.features, size.features)
    mask = _mask(size, sparsity)
    if impl == "dense":
        return dense
    if impl == "prune":
        # l1_unstructured picks its own positions (smallest |w|); only the amount matters here.
        return prune.l1_unstructured(dense, "weight", amount=sparsity) if sparsity > 0 else dense
    if impl == "torch_csr":
        return _TorchCSR(dense, mask)
    path = impl.split("_", 1)[1]
    layer = MaskedLinear.from_dense(dense, path=path)
    layer.set_mask(mask)
    return layer


def _step(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor):
    def run() -> None:
        x.grad = None
        for p in layer.parameters():
            p.grad = None
        layer(x).backward(grad)

    return run


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: s.name)
def test_linear_fwd_bwd(benchmark, size: Size, sparsity: float, impl: str):
    layer = make_layer(impl, size, sparsity)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(size.batch, size.features, generator=gen).requires_grad_()
    grad = torch.randn(size.batch, size.features, generator=gen)
    benchmark.group = f"linear {size.name}"
    benchmark.extra_info.update(features=size.features, batch=size.batch, sparsity=sparsity, impl=impl,
                                threads=THREADS)
    if isinstance(layer, MaskedLinear):
        benchmark.extra_info["path_taken"] = "sparse" if layer.uses_sparse_path(x) else "dense"
    # One call per round and many rounds: on a shared machine the minimum over single calls is
    # the least disturbed measurement (averaging iterations inside a round would blur it).
    benchmark.pedantic(_step(layer, x, grad), rounds=ROUNDS[size.features], iterations=1, warmup_rounds=2)
