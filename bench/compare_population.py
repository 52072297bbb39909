"""Population PPO vs the per-agent PPO trainer on dense CartPole-v1: same hyperparameters and budget.

For each seed: the best evaluation (10 evaluations of 10 greedy episodes through training) and the
env steps at the first evaluation reaching 475 ("solved"). Variants: the per-agent trainer
(EnvPool), the population trainer on EnvPool, and the population trainer on the numpy backend.
Writes a markdown table (stdout, and ``--out`` if given) and the raw rows as JSON beside it.

    PYTHONPATH=. python bench/compare_population.py [--seeds 5] [--steps 500000] [--out results/population-vs-agent/README.md]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from lottery_fast.train.ppo import PPOConfig, PPOTrainer

SOLVED = 475.0


def solved_at(evals: List[float], total: int) -> Optional[int]:
    for k, r in enumerate(evals, 1):
        if r >= SOLVED:
            return round(k * total / len(evals))
    return None


def run(variant: str, seeds: List[int], steps: int) -> List[Dict]:
    backend = "numpy" if variant == "population (numpy envs)" else "auto"
    trainer = PPOTrainer("CartPole-v1", dataclasses.replace(PPOConfig(), total_steps=steps, env_backend=backend))
    models = [trainer.build_model(s) for s in seeds]
    t0 = time.perf_counter()
    if variant == "per-agent":
        results = [trainer.train(m, s)[0] for m, s in zip(models, seeds)]
    else:
        results = [r for r, _ in trainer.train_population(models, seeds)]
    wall = time.perf_counter() - t0
    return [{"variant": variant, "seed": s, "best": r.best_metric, "final": r.metric,
             "evals": r.evals, "wall_s": wall} for s, r in zip(seeds, results)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=500_000)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = list(range(args.seeds))
    rows: List[Dict] = []
    for variant in ("per-agent", "population (EnvPool envs)", "population (numpy envs)"):
        rows += run(variant, seeds, args.steps)
    lines = [f"Dense PPO on CartPole-v1, {args.steps:,} env steps per seed, seeds {seeds}, CleanRL's "
             f"hyperparameters (PPOConfig defaults), one torch thread, one process.", "",
             "| variant | seeds solved (best eval >= 475) | best eval per seed | env steps to the first eval >= 475 | wall time |",
             "|---|---|---|---|---|"]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        vr = [r for r in rows if r["variant"] == variant]
        at = [solved_at(r["evals"], args.steps) if r["evals"] else None for r in vr]
        best = ", ".join(f"{r['best']:.0f}" for r in vr)
        when = ", ".join("-" if a is None else f"{a // 1000}k" for a in at)
        solved = sum(r["best"] >= SOLVED for r in vr)
        lines.append(f"| {variant} | {solved}/{len(vr)} | {best} | {when} | {vr[0]['wall_s']:.0f} s |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n", encoding="utf-8")
        out.with_suffix(".json").write_text(json.dumps(rows, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
