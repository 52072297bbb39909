"""PPO training throughput on CartPole-v1 (env steps per second, rollouts and learning included).

Variants: the masked actor-critic at 0%, 90% and 99% sparsity, and the same network of plain
nn.Linear layers (``unmasked``), trained by the same PPO code. Sparsity is a random mask on every
masked layer (actor and critic) with exactly round((1 - s) * n) weights kept per layer, so the
masked kernels see the same density everywhere. No evaluation runs (``num_evals=0``).

pytest-benchmark:
    PYTHONPATH=. python -m pytest bench/bench_ppo.py --benchmark-json=/tmp/bench_ppo.json
Interleaved rounds with the overhead table (fairer on a busy machine, the numbers we report):
    PYTHONPATH=. python bench/bench_ppo.py [--steps 20480] [--rounds 5]
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List

import pytest
import torch
from torch import nn

from lottery_fast.nn import masked_modules, set_masks, unmasked
from lottery_fast.train.ppo import PPOConfig, PPOTrainer

VARIANTS = ["plain_dense", "masked_0", "masked_90", "masked_99"]
STEPS = 20_480  # 20 updates of 8 envs x 128 steps


def random_masks(model: nn.Module, sparsity: float, seed: int = 0) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    masks = {}
    for name, layer in masked_modules(model).items():
        n = layer.weight.numel()
        keep = torch.randperm(n, generator=g)[: max(1, round((1.0 - sparsity) * n))]
        mask = torch.zeros(n, dtype=torch.bool)
        mask[keep] = True
        masks[name] = mask.view_as(layer.weight)
    return masks


def make_model(trainer: PPOTrainer, variant: str) -> nn.Module:
    model = trainer.build_model(0)
    if variant == "plain_dense":
        return unmasked(model)
    sparsity = int(variant.split("_")[1]) / 100.0
    if sparsity > 0:
        set_masks(model, random_masks(model, sparsity))
    return model


def make_trainer(steps: int = STEPS) -> PPOTrainer:
    return PPOTrainer("CartPole-v1", PPOConfig(total_steps=steps, num_evals=0))


def run_once(trainer: PPOTrainer, variant: str) -> float:
    """Env steps per second of one training run (fresh model, same seed for every variant)."""
    model = make_model(trainer, variant)
    start = time.perf_counter()
    result, _ = trainer.train(model, seed=0)
    return result.steps / (time.perf_counter() - start)


@pytest.mark.parametrize("variant", VARIANTS)
def test_ppo_cartpole_throughput(benchmark, variant: str):
    trainer = make_trainer()
    rates: List[float] = []
    benchmark.group = "ppo-cartpole"
    benchmark.pedantic(lambda: rates.append(run_once(trainer, variant)), rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["env_steps_per_s"] = statistics.median(rates)
    benchmark.extra_info["env_steps"] = STEPS


def interleaved(steps: int, rounds: int, report: Callable[[str], None] = print) -> Dict[str, float]:
    """Median steps/s per variant over ``rounds`` rounds that each run every variant once."""
    trainer = make_trainer(steps)
    for v in VARIANTS:  # warm-up: imports, allocator, envpool threads
        run_once(make_trainer(2048), v)
    rates: Dict[str, List[float]] = {v: [] for v in VARIANTS}
    for r in range(rounds):
        for v in VARIANTS:
            rates[v].append(run_once(trainer, v))
        report(f"round {r + 1}/{rounds}: " + "  ".join(f"{v}={rates[v][-1]:.0f}" for v in VARIANTS))
    return {v: statistics.median(x) for v, x in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    medians = interleaved(args.steps, args.rounds)
    base = medians["plain_dense"]
    print(f"\nPPO CartPole-v1, {args.steps} env steps per run, median of {args.rounds} interleaved rounds")
    print(f"{'variant':<12} {'steps/s':>9} {'time vs plain dense':>20}")
    for v, rate in medians.items():
        print(f"{v:<12} {rate:>9.0f} {base / rate - 1:>+19.1%}")


if __name__ == "__main__":
    main()
