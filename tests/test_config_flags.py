"""Configs validate where they are made; the CLI's generated --SECTION.OPTION flags, CleanRL's names,
comma lists and --print-config."""
from __future__ import annotations

import dataclasses
import importlib
import json
import pkgutil

import pytest

import lottery_fast
from lottery_fast import cli, configs

BAD = [
    ("lottery_fast.train.ppo", "PPOConfig", {"gamma": 1.5}),
    ("lottery_fast.train.dqn", "DQNConfig", {"gamma": 1.5}),
    ("lottery_fast.train.bc", "BCConfig", {"lr": -1.0}),
    ("lottery_fast.train.digits", "DigitsConfig", {"test_fraction": 1.0}),
    ("lottery_fast.train.networks", "NetworkConfig", {"hidden": (0,)}),
    ("lottery_fast.imp.config", "IMPConfig", {"iterations": -1}),
    ("lottery_fast.prune.magnitude", "PruneConfig", {"rate": 1.5}),
    ("lottery_fast.envs.make", "EnvConfig", {"env_id": "CartPole-v1", "backend": "nope"}),
]


@pytest.mark.parametrize("module,name,bad", BAD, ids=[b[1] for b in BAD])
def test_a_bad_value_fails_at_construction(module, name, bad):
    with pytest.raises(ValueError, match=list(bad)[-1]):  # the message names the bad option
        getattr(importlib.import_module(module), name)(**bad)


def test_every_config_dataclass_validates_in_post_init():
    configs_found = []
    for info in pkgutil.walk_packages(lottery_fast.__path__, "lottery_fast."):
        if info.name.startswith(("lottery_fast.cli", "lottery_fast._")):
            continue
        mod = importlib.import_module(info.name)
        for obj in vars(mod).values():
            if (isinstance(obj, type) and obj.__module__ == mod.__name__ and dataclasses.is_dataclass(obj)
                    and obj.__name__.endswith("Config")):
                configs_found.append(obj)
                assert "__post_init__" in vars(obj), f"{obj.__module__}.{obj.__name__} has no __post_init__"
    assert {c.__name__ for c in configs_found} >= {b[1] for b in BAD} | {"ReportConfig"}


def _resolve(*argv):
    return cli._resolve(cli.build_parser().parse_args(["imp", *argv]))


def test_generated_flags_cleanrl_names_and_comma_lists():
    r = _resolve("--env-id", "CartPole-v1", "--ppo.learning-rate", "0.001", "--ppo.total-steps", "4096",
                 "--ppo.network.hidden", "32,32", "--ppo.distractors", "gaussian,constant:1", "--ppo.target-kl", "none",
                 "--dqn.gamma", "0.9", "--exclude", "critic*,actor.head", "--layer-rate", "a=0.1,b=0.2")
    assert r["env"] == "CartPole-v1"
    assert r["ppo"] == {"lr": 0.001, "total_steps": 4096, "network": {"hidden": [32, 32]},
                        "distractors": ["gaussian", "constant:1"], "target_kl": None}
    assert r["dqn"] == {"gamma": 0.9}
    assert r["imp"]["exclude"] == ["critic*", "actor.head"]
    assert r["imp"]["layer_rates"] == [["a", 0.1], ["b", 0.2]]
    # the old spellings of list flags still work: words after --exclude, --layer-rate repeated
    old = _resolve("--exclude", "critic*", "actor.head", "--layer-rate", "a=0.1", "--layer-rate", "b=0.2")
    assert old["imp"]["exclude"] == r["imp"]["exclude"] and old["imp"]["layer_rates"] == r["imp"]["layer_rates"]
    # --set wins over flags, and takes CleanRL's names too
    assert _resolve("--ppo.lr", "0.1", "--set", "ppo.learning_rate=0.2")["ppo"] == {"lr": 0.2}
    assert _resolve("--set", "env_id=Acrobot-v1")["env"] == "Acrobot-v1"


def test_cleanrl_names_in_config_files(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('env_id = "CartPole-v1"\n[ppo]\nlearning_rate = 0.001\ntotal_timesteps = 4096\n')
    r = _resolve("--config", str(path))
    assert r["env"] == "CartPole-v1" and r["ppo"] == {"lr": 0.001, "total_steps": 4096}
    path.write_text("[ppo]\nlearning_rate = 0.001\nlr = 0.002\n")
    with pytest.raises(ValueError, match="one option"):
        _resolve("--config", str(path))


def test_print_config_prints_the_resolved_config_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli.main(["imp", "--env", "CartPole-v1", "--preset", "quick", "--ppo.learning-rate", "0.001",
                   "--out", str(out), "--print-config"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["ppo"]["lr"] == 0.001 and printed["ppo"]["num_envs"] == 8  # defaults included
    assert printed["imp"]["iterations"] == 3 and printed["imp"]["prune"]["rate"] == 0.5
    assert not out.exists()
    # bad values fail as a run would, in one line
    assert cli.main(["imp", "--env", "CartPole-v1", "--ppo.gamma", "1.5", "--print-config"]) == 2
    assert "gamma" in capsys.readouterr().err


def test_report_print_config(tmp_path, capsys):
    assert cli.main(["report", "--preset", "full", "--parts", "distractors", "--out", str(tmp_path / "r"),
                     "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["preset"] == "full"
    assert printed["cartpole-distractors-ppo"]["imp"]["iterations"] == 20
    assert not (tmp_path / "r").exists()


def test_field_help_reads_the_field_comments():
    from lottery_fast.train.ppo import PPOConfig

    docs = configs.field_help(PPOConfig)
    assert docs["num_steps"] == "steps per env per rollout"
    assert docs["obs_select"].startswith("train on these observation dims only")
