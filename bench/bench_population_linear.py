"""PopulationLinear forward+backward: the dense batched GEMM vs the per-member sparse kernels.

Which path wins decides ``path="auto"``: it takes the sparse kernels for a member whose layer is
not narrow and at least ``sparse_threshold`` sparse (MaskedLinear's rule). Times are the minimum of
``--rounds`` steps of forward, backward with x requiring grad; ratios dense/sparse > 1 mean sparse wins.

    PYTHONPATH=. python bench/bench_population_linear.py [--members 8] [--threads 1]
pytest-benchmark:
    PYTHONPATH=. python -m pytest bench/bench_population_linear.py --benchmark-json=/tmp/bench_poplin.json
"""
from __future__ import annotations

import argparse
import time

import pytest
import torch

from lottery_fast.nn.population import PopulationLinear

CASES = [(64, 64, 256), (256, 256, 256), (1024, 1024, 64)]  # (in, out, batch per member)
SPARSITIES = [0.0, 0.8, 0.9, 0.95, 0.99]


def make(members: int, n_in: int, n_out: int, batch: int, sparsity: float, path: str):
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(members, n_out, n_in, generator=g) >= sparsity
    layer = PopulationLinear(torch.randn(members, n_out, n_in, generator=g), torch.randn(members, n_out, generator=g),
                             mask, path=path)
    x = torch.randn(members, batch, n_in, generator=g, requires_grad=True)
    return layer, x


def step(layer: PopulationLinear, x: torch.Tensor) -> None:
    layer.weight.grad = None
    x.grad = None
    layer(x).sum().backward()


def best_time(layer, x, rounds: int) -> float:
    step(layer, x)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        step(layer, x)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"PopulationLinear fwd+bwd, {args.members} members, {args.threads} thread(s): dense ms / sparse ms (ratio)")
    print("| layer (batch) | " + " | ".join(f"{100 * s:.0f} %" for s in SPARSITIES) + " |")
    print("|---|" + "---|" * len(SPARSITIES))
    for n_in, n_out, batch in CASES:
        cells = []
        for s in SPARSITIES:
            dense = best_time(*make(args.members, n_in, n_out, batch, s, "dense"), args.rounds)
            sparse = best_time(*make(args.members, n_in, n_out, batch, s, "sparse"), args.rounds)
            cells.append(f"{1e3 * dense:.2f} / {1e3 * sparse:.2f} ({dense / sparse:.2f}x)")
        print(f"| {n_in}x{n_out} ({batch}) | " + " | ".join(cells) + " |")


@pytest.mark.parametrize("path", ["dense", "sparse"])
@pytest.mark.parametrize("sparsity", [0.9, 0.99])
def test_bench_population_linear(benchmark, path, sparsity):
    torch.set_num_threads(1)
    layer, x = make(8, 256, 256, 256, sparsity, path)
    benchmark(step, layer, x)


if __name__ == "__main__":
    main()
