"""Where a masked-linear training step's time goes: the whole step (module forward + backward,
as bench_linear.py times it) against the compiled kernels called directly on preallocated
buffers, at 1024x1024, batch 256, for the sparsities given on the command line.

    PYTHONPATH=. python bench/profile_linear.py 0.9 0.99 1.0

Times are the minimum over 80 calls, in ms, on ``LF_BENCH_THREADS`` threads (default 2). The
step minus the kernels is what Python, autograd and the allocations cost around them.
"""
from __future__ import annotations

import sys
import time
from typing import Callable

import torch
from bench_linear import THREADS, _step
from torch import nn

from lottery_fast import MaskedLinear
from lottery_fast import _core

BATCH, FEATURES = 256, 1024


def best_ms(fn: Callable[[], object], rounds: int = 80) -> float:
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main(sparsities) -> None:
    torch.set_num_threads(THREADS)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, FEATURES, generator=gen).requires_grad_()
    gy = torch.randn(BATCH, FEATURES, generator=gen)
    dense = nn.Linear(FEATURES, FEATURES)

    def step(layer: nn.Module) -> Callable[[], None]:
        return _step(layer, x, gy)  # the step bench_linear.py times

    dense_ms = best_ms(step(dense))
    print(f"nn.Linear step {dense_ms:.3f} ms ({THREADS} threads, isa {_core.masked_linear_isa()})")
    n_in = n_out = FEATURES
    padded = _core.masked_linear_padded_batch(BATCH, 0)
    for sparsity in sparsities:
        layer = MaskedLinear.from_dense(dense, path="sparse")
        layer.set_mask(torch.rand(n_out, n_in, generator=gen) >= sparsity)
        index = layer.sparse_index()
        ptrs = index.pointers
        x_t, vals = torch.empty(n_in, padded), torch.empty(max(index.nnz, 1))
        y, gx, gw, gb = torch.empty(BATCH, n_out), torch.empty(BATCH, n_in), torch.empty(n_out, n_in), torch.empty(n_out)
        w, b, xd = layer.weight.detach(), layer.bias.detach(), x.detach()

        def forward() -> None:
            _core.masked_linear_forward(xd.data_ptr(), w.data_ptr(), b.data_ptr(), ptrs[0], ptrs[1], BATCH, n_in,
                                        n_out, padded, x_t.data_ptr(), vals.data_ptr(), y.data_ptr(), 0, THREADS)

        def backward(want_x: bool = True, want_w: bool = True) -> Callable[[], None]:
            return lambda: _core.masked_linear_backward(
                gy.data_ptr(), x_t.data_ptr(), vals.data_ptr(), *ptrs, BATCH, n_in, n_out, padded,
                gx.data_ptr() if want_x else 0, gw.data_ptr() if want_w else 0, 0, THREADS,
                gb.data_ptr() if want_w else 0)

        step_ms = best_ms(step(layer))
        fwd, bwd = best_ms(forward), best_ms(backward())
        print(f"sparsity {sparsity}: step {step_ms:.3f} ms ({dense_ms / step_ms:.2f}x dense); kernels: forward "
              f"{fwd:.3f}, backward {bwd:.3f} (grad_x alone {best_ms(backward(want_w=False)):.3f}, grad_W+b alone "
              f"{best_ms(backward(want_x=False)):.3f}); step - kernels {step_ms - fwd - bwd:.3f}")


if __name__ == "__main__":
    main([float(a) for a in sys.argv[1:]] or [0.9, 0.99, 1.0])
