"""Aggregate PPO throughput of population training vs the per-agent trainer (env steps/s, learning
included, no evaluation).

Variants, measured side by side in one run:
  * ``single``: today's per-agent PPOTrainer.train, one agent after another in each process;
  * ``pop P``: PPOTrainer.train_population with P members in each process.
With ``--procs 2`` each variant runs in two processes at once (one torch thread each, the way
``--jobs 2`` uses both cores), and the figure is the sum of the two processes' steps over the wall
time of the slower one.

pytest-benchmark (one small case per variant):
    PYTHONPATH=. python -m pytest bench/bench_population.py --benchmark-json=/tmp/bench_pop.json
The table we report (interleaved rounds, minimum wall time of each variant):
    PYTHONPATH=. python bench/bench_population.py --env CartPole-v1 --sizes 1,4,20,64 --procs 1,2 [--profile]
"""
from __future__ import annotations

import argparse
import cProfile
import json
import multiprocessing
import pstats
import sys
import time
from typing import Dict, List, Tuple

import pytest
import torch

from lottery_fast.train.ppo import PPOConfig, PPOTrainer

STEPS = 8_192  # env steps per member: 8 updates of 8 envs x 128 steps


def _trainer(env_id: str, steps: int, backend: str = "auto") -> PPOTrainer:
    base = PPOTrainer(env_id).config
    import dataclasses

    return PPOTrainer(env_id, dataclasses.replace(base, total_steps=steps, num_evals=0, env_backend=backend))


def _use_tanh(kind: str) -> None:
    """Which tanh the agents' hidden layers use: the core's vector tanh (the default) or torch's own."""
    from torch import nn

    from lottery_fast.nn.activation import Tanh
    from lottery_fast.train import networks

    networks._ACTIVATIONS["tanh"] = {"core": Tanh, "torch": nn.Tanh}[kind]


def run_variant(env_id: str, members: int, steps: int, population: bool, seed0: int = 0,
                backend: str = "auto", tanh: str = "core") -> Tuple[int, float]:
    """Train ``members`` agents; returns (env steps, seconds)."""
    torch.set_num_threads(1)
    _use_tanh(tanh)
    trainer = _trainer(env_id, steps, backend)
    seeds = list(range(seed0, seed0 + members))
    models = [trainer.build_model(s) for s in seeds]
    t0 = time.perf_counter()
    if population:
        results = trainer.train_population(models, seeds)
    else:
        results = [trainer.train(m, s) for m, s in zip(models, seeds)]
    seconds = time.perf_counter() - t0
    return sum(r.steps for r, _ in results), seconds


def _child(args) -> Tuple[int, float]:
    return run_variant(*args)


def measure(env_id: str, members: int, steps: int, population: bool, procs: int, backend: str = "auto",
            tanh: str = "core") -> float:
    """Aggregate env steps/s of ``procs`` processes training ``members`` agents each."""
    if procs == 1:
        n, s = run_variant(env_id, members, steps, population, 0, backend, tanh)
        return n / s
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(procs) as pool:
        t0 = time.perf_counter()
        out = pool.map(_child, [(env_id, members, steps, population, 1000 * i, backend, tanh)
                              for i in range(procs)])
        wall = time.perf_counter() - t0
    # pool start-up is excluded: the slowest worker's own training time is the wall that counts
    return sum(n for n, _ in out) / max(s for _, s in out) if wall > 0 else float("nan")


def profile(env_id: str, members: int, steps: int, backend: str = "auto") -> Dict[str, float]:
    """Share of a population run's time in env stepping, rollout forward, learning and the rest."""
    prof = cProfile.Profile()
    prof.enable()
    _, total = run_variant(env_id, members, steps, True, 0, backend)
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]

    def cum(pred) -> float:
        return sum(v[3] for k, v in stats.items() if pred(k))

    env = cum(lambda k: k[2] in ("step_async", "step_wait") and k[0].endswith("make.py"))
    collect = cum(lambda k: k[2] == "_collect" and k[0].endswith("ppo_population.py"))
    update = cum(lambda k: k[2] == "_update" and k[0].endswith("ppo_population.py"))
    return {"total_s": total, "env_step": env / total, "rollout_forward_and_rest": (collect - env) / total,
            "learning": update / total, "other": max(0.0, 1 - (collect + update) / total)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="CartPole-v1")
    ap.add_argument("--sizes", default="1,4,20,64")
    ap.add_argument("--procs", default="1,2")
    ap.add_argument("--steps", type=int, default=STEPS, help="env steps per member")
    ap.add_argument("--single-members", type=int, default=2, help="agents the per-agent variant trains per process")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--backend", default="auto", choices=("auto", "envpool", "gymnasium", "numpy"),
                    help="env backend of the population variants (the per-agent variant always uses auto)")
    ap.add_argument("--profile", action="store_true", help="also profile a P=20 population (one process)")
    ap.add_argument("--tanh", default="core",
                    help="comma list of core (the core's vector tanh, the default) and torch (torch.tanh): "
                         "each variant once per tanh")
    ap.add_argument("--json", help="write the table here")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    procs = [int(p) for p in args.procs.split(",")]
    tanhs = args.tanh.split(",")
    suffix = (lambda t: f", {t} tanh") if len(tanhs) > 1 else (lambda t: "")
    variants = [(f"{name}{suffix(t)}", members, population, backend, t) for t in tanhs
                for name, members, population, backend in
                [("single", args.single_members, False, "auto")]
                + [(f"pop {P}", P, True, args.backend) for P in sizes]]
    best: Dict[Tuple[str, int], float] = {}
    for _ in range(args.rounds):  # interleaved: every variant once per round
        for name, members, population, backend, tanh in variants:
            for n in procs:
                sps = measure(args.env, members, args.steps, population, n, backend, tanh)
                best[(name, n)] = max(best.get((name, n), 0.0), sps)
    print(f"{args.env}: aggregate env steps/s (best of {args.rounds} rounds, {args.steps} steps per member, "
          f"population env backend {args.backend})")
    print("| variant | " + " | ".join(f"{n} proc" for n in procs) + f" | vs {variants[0][0]} ({procs[-1]} proc) |")
    print("|---|" + "---|" * (len(procs) + 1))
    base = best[(variants[0][0], procs[-1])]
    for name, *_ in variants:
        cells = " | ".join(f"{best[(name, n)]:,.0f}" for n in procs)
        print(f"| {name} | {cells} | {best[(name, procs[-1])] / base:.2f}x |")
    table = {f"{k[0]}@{k[1]}": v for k, v in best.items()}
    if args.profile:
        table["profile_pop20"] = profile(args.env, 20, args.steps, args.backend)
        print("profile of pop 20 (shares of wall time):", json.dumps(table["profile_pop20"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(table, f, indent=2)


@pytest.mark.parametrize("variant", ["single", "pop 1", "pop 20"])
def test_bench_population(benchmark, variant):
    members, population = (1, False) if variant == "single" else (int(variant.split()[1]), True)
    benchmark.pedantic(run_variant, args=("CartPole-v1", members, 2048, population), rounds=2, iterations=1)


if __name__ == "__main__":
    sys.exit(main())
