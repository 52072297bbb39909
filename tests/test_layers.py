"""The library's layers hold: the IMP engine runs a custom trainer with the RL stack unimportable."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import lottery_fast

PACKAGE_PARENT = Path(lottery_fast.__file__).resolve().parents[1]

CHILD = textwrap.dedent("""
    import sys
    BLOCKED = ("gymnasium", "envpool", "sklearn", "matplotlib")
    for name in BLOCKED:  # None in sys.modules: any import of it raises ImportError
        sys.modules[name] = None
    import torch
    import lottery_fast
    from lottery_fast.imp import IMPConfig

    class Tiny:
        name = "tiny"
        default_prune_exclude = ()
        def build_model(self, seed):
            torch.manual_seed(seed)
            return lottery_fast.masked(torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(),
                                                           torch.nn.Linear(16, 1)))
        def train(self, model, seed, rewind_step=None, on_progress=None):
            from lottery_fast.train import TrainResult
            g = torch.Generator().manual_seed(seed)
            x = torch.randn(64, 6, generator=g)
            y = x[:, :1] * 2
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            for _ in range(20):
                opt.zero_grad()
                loss = (model(x) - y).square().mean()
                loss.backward()
                opt.step()
            return TrainResult(metric=-float(loss), best_metric=-float(loss), steps=20), None
        def evaluate(self, model, seed):
            return 0.0

    res = lottery_fast.run_imp(Tiny(), IMPConfig(iterations=2, seeds=(0,)), sys.argv[1])
    assert len(res.rows) == 1 + 2 * 4, res.rows
    loaded = [m for m in sys.modules if m.split(".")[0] in BLOCKED and sys.modules[m] is not None]
    assert not loaded, loaded
    print("ok")
""")


def test_run_imp_needs_no_rl_stack(tmp_path):
    env = {"PYTHONPATH": str(PACKAGE_PARENT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    # cwd away from the checkout: `python -c` puts the working directory first on sys.path, and a clean
    # clone's source tree has no compiled _core (CI tests the installed package).
    r = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "run")], env=env, capture_output=True,
                       text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr
