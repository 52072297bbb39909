"""Ratio tables for bench/bench_cuda.py.

    python bench/report_cuda.py /tmp/bench_cuda.json [--stat min|median]

Linear: the table of report_linear.py (time / nn.Linear time at the same sparsity, crossover).
Conv: time / nn.Conv2d time per case and sparsity. Threshold: milliseconds and the speed-up of
``prune_smallest_`` over cat + kthvalue and cat + topk.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report_linear  # noqa: E402


def graphs(data: dict, stat: str) -> str:
    """ours_sparse_graph / dense_graph per size and sparsity (both captured as CUDA graphs)."""
    t: Dict[tuple, Dict[str, Dict[float, float]]] = defaultdict(lambda: defaultdict(dict))
    for b in data["benchmarks"]:
        info = b["extra_info"]
        if info.get("impl", "").endswith("_graph"):
            t[(info["features"], info["batch"])][info["impl"]][info["sparsity"]] = b["stats"][stat]
    lines: List[str] = [f"CUDA graphs (no launch overhead): ours_sparse_graph / dense_graph time ({stat})"]
    for (features, batch), impls in sorted(t.items()):
        dense, ours = impls.get("dense_graph", {}), impls.get("ours_sparse_graph", {})
        cells = "  ".join(f"{s:.2f}: {ours[s] / dense[s]:.3f} ({dense[s] * 1e3:.3f} ms dense)"
                          for s in sorted(ours) if s in dense)
        lines.append(f"{features}x{features} batch {batch}: {cells}")
    return "\n".join(lines)


def conv_and_threshold(data: dict, stat: str) -> str:
    conv: Dict[str, Dict[str, Dict[float, float]]] = defaultdict(lambda: defaultdict(dict))
    thr: Dict[int, Dict[str, float]] = defaultdict(dict)
    device = ""
    for b in data["benchmarks"]:
        info, t = b["extra_info"], b["stats"][stat]
        device = info.get("device", device)
        if "case" in info:
            conv[info["case"]][info["impl"]][info["sparsity"]] = t
        elif "total" in info:
            thr[info["total"]][info["impl"]] = t
    lines: List[str] = [f"device: {device}"]
    for case, impls in sorted(conv.items()):
        dense = impls.get("dense", {})
        others = [i for i in ("ours_dense", "ours_sparse", "ours_auto") if i in impls]
        lines.append(f"\nconv {case}: time / nn.Conv2d time ({stat})")
        lines.append("sparsity  nn.Conv2d ms" + "".join(f"{i:>12s}" for i in others))
        for s in sorted(dense):
            lines.append(f"{s:8.2f}  {dense[s] * 1e3:12.3f}"
                         + "".join(f"{impls[i][s] / dense[s]:12.3f}" if s in impls[i] else f"{'-':>12s}" for i in others))
    for total, impls in sorted(thr.items()):
        ours = impls.get("ours")
        cells = ", ".join(f"{i} {t * 1e3:.2f} ms" for i, t in impls.items())
        lines.append(f"\nthreshold {total / 1e6:.0f}M: {cells}")
        if ours:
            lines.append("  speed-up of ours: " + ", ".join(
                f"{t / ours:.1f}x vs {i}" for i, t in impls.items() if i != "ours"))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json")
    parser.add_argument("--stat", default="min", choices=["min", "median", "mean"])
    args = parser.parse_args()
    with open(args.json) as f:
        data = json.load(f)
    linear = {"benchmarks": [b for b in data["benchmarks"]
                             if "features" in b["extra_info"] and not b["extra_info"]["impl"].endswith("_graph")]}
    with tempfile.NamedTemporaryFile("w", suffix=".json") as tmp:
        json.dump(linear, tmp)
        tmp.flush()
        print(report_linear.report(report_linear.load(tmp.name, args.stat), args.stat))
    print()
    print(graphs(data, args.stat))
    print()
    print(conv_and_threshold(data, args.stat))


if __name__ == "__main__":
    main()
