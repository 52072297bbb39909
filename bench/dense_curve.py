"""One dense PPO agent: its evaluation curve, final/best return and wall time (budget sizing for docs/claim3.md).

    python bench/dense_curve.py ENV_ID STEPS SEED [KEY=JSON ...]

KEY is a PPOConfig option, dotted for nested ones (``network.image_torso='"mlp"'``,
``env_kwargs='{"step_penalty":0.02}'``); values are JSON. Prints one JSON line. Steps/s include
env creation and the evaluations, so they understate pure training throughput.
"""
import json
import sys
import time

from lottery_fast.experiments import make_trainer


def main(argv):
    if len(argv) < 3:
        raise SystemExit(__doc__)
    env, steps, seed = argv[0], int(argv[1]), int(argv[2])
    section = {"total_steps": steps, "num_evals": 10, "eval_episodes": 20}
    for kv in argv[3:]:
        if "=" not in kv:
            raise SystemExit(f"{kv!r}: expected KEY=JSON")
        key, value = kv.split("=", 1)
        node = section
        *path, last = key.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = json.loads(value)
    start = time.perf_counter()
    trainer = make_trainer("ppo", env, section)
    result, _ = trainer.train(trainer.build_model(seed), seed)
    seconds = time.perf_counter() - start
    print(json.dumps({"env": env, "steps": steps, "seed": seed, "section": section, "final": result.metric,
                      "best": result.best_metric, "evals": [round(e, 3) for e in result.evals],
                      "train_return": result.extra.get("train_return"), "seconds": round(seconds, 1),
                      "steps_per_s": round(steps / seconds)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
