"""Wall time of one IMP round's training vs density, packed and unpacked, in one run.

    PYTHONPATH=. python bench/imp_round_packed.py                   # digits MLP 64-1024-1024-10
    PYTHONPATH=. python bench/imp_round_packed.py --hidden 2048 2048 --epochs 1

What a user sees per IMP round: ``DigitsTrainer.train`` (Adam with weight decay, batch 128, the
digits data) of the digits MLP widened so that its layers matter, at the density IMP reaches after
``n`` rounds of 20 % global magnitude pruning. ``unpacked`` trains the masked model as it comes
(``IMPConfig.packed="off"``); ``packed`` packs it first as ``IMPConfig.packed="auto"`` does (layers
at least ``PACK_MIN_SPARSITY`` sparse). Both train the same model from the same weights with the
same seed, alternately, ``--repeats`` times; the table keeps each one's fastest run.
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

from lottery_fast.nn import masked_modules
from lottery_fast.nn.packed import pack_for_training
from lottery_fast.prune import PruneConfig, prune_model
from lottery_fast.train import DigitsConfig, DigitsTrainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, nargs="+", default=[1024, 1024])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, nargs="+", default=[0, 3, 7, 10, 14, 20])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    trainer = DigitsTrainer(DigitsConfig(hidden=tuple(args.hidden), epochs=args.epochs, batch_size=128, lr=1e-3))
    base = trainer.build_model(0)
    print(f"digits MLP {'-'.join(map(str, [64, *args.hidden, 10]))}, {args.epochs} epochs "
          f"({trainer.total_steps()} Adam steps), {args.threads} threads")
    print(f"{'round':>5s} {'density':>8s} {'unpacked s':>10s} {'packed s':>9s} {'speedup':>8s}")
    done = 0
    for rounds in sorted(args.rounds):
        for _ in range(rounds - done):  # IMP's density schedule (magnitudes of the init stand in for trained ones)
            prune_model(base, PruneConfig(rate=0.2, layer_rates=(("out", 0.1),)))
        done = rounds
        best = {"unpacked": float("inf"), "packed": float("inf")}
        for _ in range(args.repeats):
            for mode in best:
                model = copy.deepcopy(base)
                if mode == "packed":
                    model = pack_for_training(model, "auto")
                t0 = time.perf_counter()
                trainer.train(model, seed=1)
                best[mode] = min(best[mode], time.perf_counter() - t0)
        layers = masked_modules(base).values()
        density = sum(int(m.mask.sum()) for m in layers) / sum(m.mask.numel() for m in layers)
        print(f"{rounds:5d} {density:8.3f} {best['unpacked']:10.3f} {best['packed']:9.3f} "
              f"{best['unpacked'] / best['packed']:7.2f}x", flush=True)


if __name__ == "__main__":
    main()
