"""The trainer and preset registries: a registered trainer runs through `lottery-fast imp` with its own
config section; presets are shared by imp and report, old names stay aliases."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import lottery_fast
from lottery_fast import cli
from lottery_fast.experiments import make_trainer
from lottery_fast.imp import load_results
from lottery_fast.presets import Preset, get_preset, preset_names, register_preset
from lottery_fast.report import ReportConfig, plan
from lottery_fast.train import TrainResult
from lottery_fast.train.registry import (TrainerSpec, display_name, register_trainer, trainer_names, trainer_spec,
                                         unregister_trainer)


@dataclasses.dataclass(frozen=True)
class TinyConfig:
    lr: float = 0.1
    steps: int = 5

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"TinyConfig.lr must be positive, got {self.lr}")


class TinyTrainer:
    name = "tiny"
    default_prune_exclude = ()

    def __init__(self, config: TinyConfig) -> None:
        self.config = config

    def input_names(self):
        return {"obs_names": [f"x{i}" for i in range(4)]}

    def build_model(self, seed):
        torch.manual_seed(seed)
        return lottery_fast.masked(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)))

    def train(self, model, seed, rewind_step=None, on_progress=None):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(32, 4, generator=g)
        opt = torch.optim.SGD(model.parameters(), lr=self.config.lr)
        for _ in range(self.config.steps):
            opt.zero_grad()
            loss = (model(x) - x[:, :1]).square().mean()
            loss.backward()
            opt.step()
        return TrainResult(metric=-float(loss.detach()), best_metric=-float(loss.detach()), steps=self.config.steps), None

    def evaluate(self, model, seed):
        return 0.0


@pytest.fixture
def tiny():
    spec = register_trainer(TrainerSpec("tiny", TinyTrainer, TinyConfig, "a tiny regression", needs_env=False))
    yield spec
    unregister_trainer("tiny")


def test_builtin_trainers_are_registered():
    assert trainer_names()[:4] == ("ppo", "bc", "dqn", "digits")
    assert display_name("bc") == "behavioural cloning" and trainer_spec("digits").image_shape == (1, 8, 8)
    with pytest.raises(ValueError, match="unknown paradigm 'nope'.*'ppo'"):
        trainer_spec("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_trainer(TrainerSpec("ppo", TinyTrainer, TinyConfig, "x"))
    with pytest.raises(ValueError, match="identifier"):
        TrainerSpec("a.b", TinyTrainer, TinyConfig, "x")


def test_a_registered_trainer_runs_through_the_cli(tiny, tmp_path, capsys):
    trainer = make_trainer("tiny", None, {"lr": 0.05})
    assert isinstance(trainer, TinyTrainer) and trainer.config == TinyConfig(lr=0.05)
    with pytest.raises(ValueError, match="tiny: unknown option"):
        make_trainer("tiny", None, {"learning_rat": 1})
    out = tmp_path / "run"
    rc = cli.main(["imp", "--paradigm", "tiny", "--iterations", "1", "--seeds", "1", "--conditions", "ticket",
                   "--set", "tiny.steps=3", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    rows = load_results(out / "tiny")
    assert [(r["iteration"], r["steps"]) for r in rows] == [(0, 3), (1, 3)]
    record = json.loads((out / "tiny" / "config.json").read_text())
    assert record["experiment"]["trainer"]["config"] == {"lr": 0.1, "steps": 3}
    assert record["inputs"] == {"obs_names": ["x0", "x1", "x2", "x3"]}  # recorded when the run started


def test_presets_are_shared_and_old_names_are_aliases(tmp_path):
    assert get_preset("full") is get_preset("paper")
    assert set(preset_names("imp")) >= {"quick", "paper", "full"}
    assert set(preset_names("report")) >= {"quick", "paper", "full"}
    # the same experiments under either name
    assert plan(ReportConfig(out=tmp_path, preset="full")) == plan(ReportConfig(out=tmp_path, preset="paper"))
    args = cli.build_parser().parse_args(["imp", "--preset", "full"])
    assert cli._resolve(args)["imp"] == {"iterations": 20, "rate": 0.2, "seeds": 5}
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        get_preset("huge")


def test_a_registered_preset_serves_the_command_it_configures(tmp_path):
    register_preset(Preset("tiny-imp", "two rounds", imp={"imp": {"iterations": 2}}), replace=True)
    args = cli.build_parser().parse_args(["imp", "--preset", "tiny-imp"])
    assert cli._resolve(args)["imp"] == {"iterations": 2}
    with pytest.raises(ValueError, match="no settings for `report`"):
        ReportConfig(out=tmp_path, preset="tiny-imp")
    with pytest.raises(ValueError, match="already taken"):
        register_preset(Preset("other", "x", imp={}, aliases=("quick",)))
