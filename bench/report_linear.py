"""Ratio table for bench/bench_linear.py: time of each implementation / dense nn.Linear.

    python bench/report_linear.py /tmp/bench_linear.json [--stat min|median]

Per size (one pytest-benchmark group), one row per sparsity: the time of each implementation
divided by the time of plain ``nn.Linear`` measured at the same sparsity (i.e. just before it in
the same run; < 1 means faster than dense),
and per size the crossover sparsity from which ``ours_sparse`` beats ``nn.Linear``, interpolated
linearly in sparsity between the two measured points around ratio 1. ``min`` is the default
statistic: on a shared machine the fastest round is the one least disturbed by other work.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

IMPL_ORDER = ["prune", "torch_csr", "ours_dense", "ours_sparse", "ours_auto"]


def load(path: str, stat: str) -> Dict[Tuple[int, int], Dict[str, Dict[float, float]]]:
    """{(features, batch): {impl: {sparsity: seconds}}} from a --benchmark-json file."""
    with open(path) as f:
        data = json.load(f)
    table: Dict[Tuple[int, int], Dict[str, Dict[float, float]]] = defaultdict(lambda: defaultdict(dict))
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        table[(info["features"], info["batch"])][info["impl"]][info["sparsity"]] = bench["stats"][stat]
    return table


def crossover(ratios: Dict[float, float]) -> Optional[float]:
    """Lowest sparsity at which the ratio drops below 1, interpolated; None if it never does."""
    points = sorted(ratios.items())
    if points and points[0][1] < 1.0:
        return points[0][0]
    for (s0, r0), (s1, r1) in zip(points, points[1:]):
        if r0 >= 1.0 > r1:
            return s0 + (r0 - 1.0) / (r0 - r1) * (s1 - s0)
    return None


def report(table, stat: str) -> str:
    lines: List[str] = [f"time / nn.Linear time ({stat} of rounds; < 1 is faster than dense)"]
    for (features, batch), impls in sorted(table.items()):
        dense_at = impls.get("dense", {})
        if not dense_at:
            lines.append(f"\n{features}x{features} batch {batch}: no dense baseline in this run")
            continue
        present = [i for i in IMPL_ORDER if i in impls]
        best = min(dense_at.values())
        lines.append(f"\n{features}x{features} batch {batch}   nn.Linear fwd+bwd {best * 1e3:.3f} ms (best)")
        lines.append("sparsity   nn.Linear ms" + "".join(f"{i:>12s}" for i in present) + "   dense/ours_sparse")
        ratios = {}
        for s in sorted({s for i in present for s in impls[i]}):
            dense = dense_at.get(s, dense_at.get(0.0))
            if dense is None:
                continue
            cells = "".join(f"{impls[i][s] / dense:12.3f}" if s in impls[i] else f"{'-':>12s}" for i in present)
            if s in impls.get("ours_sparse", {}):
                ratios[s] = impls["ours_sparse"][s] / dense
            speedup = 1.0 / ratios[s] if s in ratios else float("nan")
            lines.append(f"{s:8.2f}  {dense * 1e3:12.3f}{cells}   {speedup:8.2f}x")
        if ratios:
            cross = crossover(ratios)
            lines.append("crossover (ours_sparse faster than nn.Linear from sparsity): "
                         + ("never in the measured range" if cross is None else f"{cross:.3f}"))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", help="pytest-benchmark --benchmark-json output of bench/bench_linear.py")
    parser.add_argument("--stat", default="min", choices=["min", "median", "mean"])
    args = parser.parse_args()
    print(report(load(args.json, args.stat), args.stat))


if __name__ == "__main__":
    main()
