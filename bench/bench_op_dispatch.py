"""What the torch custom-operator dispatcher costs a masked-linear layer, against the eager fast
path that calls the same kernels directly (nn/ops.py): MaskedLinear(path="sparse") at 90% sparsity,
a training step as bench_linear.py times it (forward with x.requires_grad, backward) and a no-grad
forward, both ways, interleaved in one run.

    PYTHONPATH=.:bench python bench/bench_op_dispatch.py

Times are the 10th percentile of many calls, in microseconds, on ``LF_BENCH_THREADS`` threads
(default 1 here: the dispatcher's cost is per call, not per thread). Run from the repository root
with ``bench`` on the path too: ``PYTHONPATH=.:bench``.
"""
from __future__ import annotations

import os
import time
from typing import Callable

import torch
from bench_linear import _step

from lottery_fast.nn import MaskedLinear
from lottery_fast.nn import ops

THREADS = int(os.environ.get("LF_BENCH_THREADS", "1"))
SIZES = [(64, 64, 32, 3000), (256, 256, 256, 1000), (1024, 1024, 256, 200)]  # in, out, batch, calls


def p10_us(fn: Callable[[], object], calls: int) -> float:
    for _ in range(20):
        fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 10] * 1e6


def main() -> None:
    torch.set_num_threads(THREADS)
    gen = torch.Generator().manual_seed(0)
    fast = ops._EAGER["cpu"]
    print(f"{'layer':>18} {'step fast':>10} {'step op':>10} {'ratio':>6} {'fwd fast':>9} {'fwd op':>9} {'ratio':>6}")
    for n_in, n_out, batch, calls in SIZES:
        layer = MaskedLinear(n_in, n_out, path="sparse")
        layer.set_mask(torch.rand(n_out, n_in, generator=gen) >= 0.9)
        x = torch.randn(batch, n_in, generator=gen).requires_grad_()
        gy = torch.randn(batch, n_out, generator=gen)
        xd = x.detach()
        got = {}
        for mode in ("fast", "op", "fast", "op"):  # interleaved: the machine's load drifts
            if mode == "op":
                ops._EAGER.pop("cpu")  # no eager kernels for the CPU: every call goes through torch.ops
            try:
                step = p10_us(_step(layer, x, gy), calls)
                with torch.no_grad():
                    fwd = p10_us(lambda: layer(xd), calls)
            finally:
                ops._EAGER["cpu"] = fast
            best = got.get(mode, (float("inf"), float("inf")))
            got[mode] = (min(best[0], step), min(best[1], fwd))
        (sf, ff), (so, fo) = got["fast"], got["op"]
        print(f"{f'{n_in}x{n_out} b{batch}':>18} {sf:10.1f} {so:10.1f} {so / sf:6.2f} {ff:9.1f} {fo:9.1f} {fo / ff:6.2f}")


if __name__ == "__main__":
    main()
