"""Dense PPO return curve on Acrobot-v1 (numpy backend), 5 seeds as one population, to pick the IMP budget."""
import json
import sys
import time
from lottery_fast.experiments import make_trainer
steps = int(sys.argv[1])
tr = make_trainer("ppo", "Acrobot-v1", {"total_steps": steps, "env_backend": "numpy", "num_evals": 20})
seeds = list(range(5))
models = [tr.build_model(s) for s in seeds]
t = time.time()
res = tr.train_population(models, seeds)
wall = time.time() - t
out = {"steps": steps, "wall_s": wall, "evals": [r.evals for r, _ in res], "best": [r.best_metric for r, _ in res]}
print(json.dumps(out))
