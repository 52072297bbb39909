"""The library's layers hold: the IMP engine runs a custom trainer with the RL stack unimportable, and each
layer imports with every layer above it blocked (the dependency direction of docs/architecture.md)."""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

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


@pytest.mark.slow
def test_run_imp_needs_no_rl_stack(tmp_path):
    env = {"PYTHONPATH": str(PACKAGE_PARENT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    # cwd away from the checkout: `python -c` puts the working directory first on sys.path, and a clean
    # clone's source tree has no compiled _core (CI tests the installed package).
    r = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "run")], env=env, capture_output=True,
                       text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr


# -- the dependency direction ------------------------------------------------------------------------
#: bottom to top; a layer may import the layers before it, never one after it
APP = ("lottery_fast.cli", "lottery_fast.configs", "lottery_fast.experiments", "lottery_fast.presets",
       "lottery_fast.report", "lottery_fast.backends", "lottery_fast.tracking", "lottery_fast.live")
TRAINERS = ("lottery_fast.train.ppo", "lottery_fast.train.bc", "lottery_fast.train.dqn", "lottery_fast.train.digits",
            "lottery_fast.train.ppo_population", "lottery_fast.train.rollout", "lottery_fast.train.networks")
RL_STACK = ("gymnasium", "envpool", "sklearn", "matplotlib")
LAYERS = {
    # the masked layers and pruning: torch and numpy only
    "core": (("lottery_fast", "lottery_fast.nn", "lottery_fast.prune"),
             ("lottery_fast.imp", "lottery_fast.train", "lottery_fast.envs", "lottery_fast.analysis", *APP,
              *RL_STACK)),
    # the generic IMP loop: the trainer protocol, never a trainer, an env or the app
    "imp": (("lottery_fast.imp",), (*TRAINERS, "lottery_fast.train.registry", "lottery_fast.envs",
                                    "lottery_fast.analysis", *APP, *RL_STACK)),
    "envs": (("lottery_fast.envs",), ("lottery_fast.imp", "lottery_fast.train", "lottery_fast.analysis", *APP)),
    "train": (("lottery_fast.train",), ("lottery_fast.imp", "lottery_fast.analysis", *APP)),
    # analysis reads run folders: the library below it, never the app
    "analysis": (("lottery_fast.analysis",), APP),
    "configs": (("lottery_fast.configs",), tuple(m for m in APP if m != "lottery_fast.configs")),
    "presets": (("lottery_fast.presets",), ("lottery_fast.cli", "lottery_fast.experiments", "lottery_fast.report")),
    "experiments": (("lottery_fast.experiments",), ("lottery_fast.cli", "lottery_fast.report")),
    # tracking and the live display serve the runner; the backends run its tasks
    "tracking": (("lottery_fast.tracking", "lottery_fast.live"), tuple(m for m in APP if m not in
                 ("lottery_fast.tracking", "lottery_fast.live", "lottery_fast.configs", "lottery_fast.presets"))),
    "backends": (("lottery_fast.backends",), ("lottery_fast.cli", "lottery_fast.report")),
    "report": (("lottery_fast.report",), ("lottery_fast.cli",)),
}

LAYER_CHILD = textwrap.dedent("""
    import importlib, pkgutil, sys
    modules, blocked = sys.argv[1].split(","), sys.argv[2].split(",")
    for name in blocked:  # None in sys.modules: importing it raises ImportError
        sys.modules[name] = None
    for name in modules:  # the layer's packages and every module in them
        mod = importlib.import_module(name)
        if name != "lottery_fast" and hasattr(mod, "__path__"):
            for info in pkgutil.walk_packages(mod.__path__, name + "."):
                importlib.import_module(info.name)
    print("ok")
""")


@pytest.mark.slow
@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_layer_imports_without_the_layers_above(layer, tmp_path):
    modules, blocked = LAYERS[layer]
    env = {"PYTHONPATH": str(PACKAGE_PARENT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", LAYER_CHILD, ",".join(modules), ",".join(blocked)], env=env,
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), f"{layer} imports a layer above it:\n{r.stderr}"


def _imports_of_the_package_root(path: Path):
    """``from .. import NAME`` (relative to the package root) where NAME is not a module: the root itself."""
    root = PACKAGE_PARENT / "lottery_fast"
    depth = len(path.relative_to(root).parts) - 1  # how many dots lead to the root
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module is None and node.level == depth + 1:
            for alias in node.names:
                # a module, a package or a compiled extension (lottery_fast._core) is not the root
                if not (any(root.glob(f"{alias.name}.*")) or (root / alias.name / "__init__.py").is_file()):
                    yield f"{path.relative_to(root)}:{node.lineno}: from {'.' * node.level} import {alias.name}"


def test_no_module_imports_the_package_root():
    # importing the root from inside would load the whole public API (and any cycle through it)
    root = PACKAGE_PARENT / "lottery_fast"
    found = [hit for path in sorted(root.rglob("*.py")) if path.parent != root or path.name != "__init__.py"
             for hit in _imports_of_the_package_root(path)]
    assert not found, found
