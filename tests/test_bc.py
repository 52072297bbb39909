"""Behavioural cloning: student quality, one cached expert, atomic save/load, determinism, DAgger."""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lottery_fast.nn import masked_modules, set_masks
from lottery_fast.train.bc import BCConfig, BCTrainer
from lottery_fast.train.networks import NetworkConfig
from lottery_fast.train.ppo import PPOConfig, PPOTrainer
from lottery_fast.train.protocol import Trainer
from lottery_fast.train.rollout import collect_states

EXPERT = PPOConfig(total_steps=50_000, num_evals=1)
TINY_EXPERT = PPOConfig(total_steps=2048, num_evals=1, eval_episodes=2)


@pytest.fixture(scope="module")
def expert_path(tmp_path_factory):
    """A CartPole expert trained once for this file (about 50k env steps)."""
    path = tmp_path_factory.mktemp("expert") / "cartpole_expert.pt"
    trainer = BCTrainer("CartPole-v1", BCConfig(expert=EXPERT, expert_path=str(path)))
    trainer.expert()
    assert trainer.expert_return >= 400, trainer.expert_return
    return str(path)


def _config(path, **kw):
    base = dict(expert=EXPERT, expert_path=path, dataset_steps=8000, steps=400, num_evals=1)
    base.update(kw)
    return BCConfig(**base)


@pytest.mark.slow
def test_student_reaches_expert_level(expert_path):
    trainer = BCTrainer("CartPole-v1", _config(expert_path))
    assert isinstance(trainer, Trainer) and trainer.name == "bc"
    result, _ = trainer.train(trainer.build_model(1), seed=1)
    assert result.metric >= 400, result  # CartPole's maximum is 500
    assert result.extra["loss"] < 0.01 and result.extra["dataset_size"] > 7000


def test_expert_and_dataset_are_built_once(expert_path, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("the expert must be loaded, not trained again")

    monkeypatch.setattr(PPOTrainer, "train", no_training)
    trainer = BCTrainer("CartPole-v1", _config(expert_path, steps=20))
    expert = trainer.expert()
    assert trainer.expert() is expert and not any(p.requires_grad for p in expert.parameters())
    data = trainer.dataset()
    trainer.train(trainer.build_model(0), 0)
    trainer.train(trainer.build_model(1), 1)
    assert trainer.dataset() is data


def test_missing_expert_path_is_trained_once_and_saved_atomically(tmp_path, monkeypatch):
    calls = []
    real_train = PPOTrainer.train

    def counting(self, *args, **kwargs):
        calls.append(1)
        return real_train(self, *args, **kwargs)

    monkeypatch.setattr(PPOTrainer, "train", counting)
    path = tmp_path / "sub" / "expert.pt"
    cfg = BCConfig(expert=TINY_EXPERT, expert_path=str(path), dataset_steps=512, steps=5, num_evals=1,
                   eval_episodes=2)
    first = BCTrainer("CartPole-v1", cfg)
    first.train(first.build_model(0), 0)
    first.train(first.build_model(0), 1)
    assert len(calls) == 1 and path.exists()
    assert os.listdir(path.parent) == ["expert.pt"]  # no temporary files left behind
    second = BCTrainer("CartPole-v1", cfg)
    loaded = second.expert()
    assert len(calls) == 1
    for k, v in first.expert().state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    # a bare state_dict (e.g. of a PPO run) loads too
    bare = tmp_path / "bare.pt"
    torch.save(first.expert().state_dict(), bare)
    assert torch.equal(second.load_expert(bare).actor.head.weight, first.expert().actor.head.weight)


def test_bad_expert_files_are_rejected(tmp_path):
    trainer = BCTrainer("CartPole-v1", BCConfig(expert=TINY_EXPERT))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        trainer.load_expert(corrupt)
    other = BCTrainer("Acrobot-v1", BCConfig(expert=TINY_EXPERT))
    other._expert = other.build_model(0)  # stands in for a trained Acrobot expert
    saved = other.save_expert(tmp_path / "acrobot.pt")
    with pytest.raises(ValueError, match="Acrobot-v1"):
        trainer.load_expert(saved)
    wrong_shape = tmp_path / "wide.pt"
    wide = PPOTrainer("CartPole-v1", PPOConfig(network=NetworkConfig(hidden=(32,))))
    torch.save(wide.build_model(0).state_dict(), wrong_shape)
    with pytest.raises(ValueError, match="does not fit"):
        trainer.load_expert(wrong_shape)
    nan = trainer.build_model(0).state_dict()
    nan["actor.head.weight"][0, 0] = float("nan")
    torch.save(nan, tmp_path / "nan.pt")
    with pytest.raises(ValueError, match="NaN"):
        trainer.load_expert(tmp_path / "nan.pt")
    with pytest.raises(ValueError, match="steps"):
        BCConfig(steps=0).validate()


@pytest.mark.slow
def test_deterministic_rewindable_and_masks_hold(expert_path):
    short = BCTrainer("CartPole-v1", _config(expert_path, steps=10))
    long = BCTrainer("CartPole-v1", _config(expert_path, steps=30))
    ref = short.build_model(0)
    short.train(ref, 4)
    runs = []
    for _ in range(2):
        model = long.build_model(0)
        result, rewind = long.train(model, 4, rewind_step=10)
        runs.append((result, model.state_dict(), rewind))
    assert runs[0][0].metric == runs[1][0].metric
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])
    assert all(torch.equal(runs[0][2][k], v) for k, v in ref.state_dict().items())
    # the critic is not part of cloning: it stays at its initialisation
    assert torch.equal(runs[0][1]["critic.head.weight"], long.build_model(0).state_dict()["critic.head.weight"])

    model = long.build_model(0)
    g = torch.Generator().manual_seed(1)
    masks = {n: torch.rand(m.weight.shape, generator=g) < 0.3 for n, m in masked_modules(model).items()}
    set_masks(model, masks)
    long.train(model, 0)
    for name, layer in masked_modules(model).items():
        assert torch.all(layer.weight[~masks[name]] == 0), name


@pytest.mark.slow
def test_collected_states_exclude_final_observations():
    trainer = PPOTrainer("CartPole-v1", TINY_EXPERT)
    model = trainer.build_model(0)  # near-uniform policy: episodes end often
    obs, returns = collect_states(model, "CartPole-v1", seed=3, num_envs=4, steps=200,
                                  generator=torch.Generator().manual_seed(0))
    assert len(returns) > 20
    assert obs.shape[0] == 4 * 200 - len(returns)  # one autoreset row per finished episode dropped
    # CartPole ends when |angle| > 0.2095 or |x| > 2.4: no such (final) state was kept
    assert obs[:, 2].abs().max() <= 0.2095 and obs[:, 0].abs().max() <= 2.4


def test_dagger_grows_the_dataset(expert_path):
    trainer = BCTrainer("CartPole-v1", _config(expert_path, steps=40, dagger_rounds=1, dagger_steps=1600))
    result, _ = trainer.train(trainer.build_model(0), 0)
    base = trainer.dataset()[0].shape[0]
    # 16 envs x 100 student steps, less one autoreset row per finished episode (each lasts >= 8 steps)
    assert base + 1400 <= result.extra["dataset_size"] < base + 1600


@pytest.mark.slow
def test_continuous_bc_on_pendulum_copies_obs_statistics():
    expert_cfg = PPOConfig.continuous_control(total_steps=2048, num_evals=1, eval_episodes=2)
    trainer = BCTrainer("Pendulum-v1", BCConfig(expert=expert_cfg, dataset_steps=1024, steps=50,
                                                num_evals=1, eval_episodes=2))
    model = trainer.build_model(0)
    result, _ = trainer.train(model, 0)
    assert math.isfinite(result.metric) and math.isfinite(result.extra["loss"])
    for k in ("mean", "var", "count"):
        assert torch.equal(getattr(model.obs_norm, k), getattr(trainer.expert().obs_norm, k))
    assert float(model.obs_norm.count) > 1


_LOCKED_COUNTER = """
import sys, time
from pathlib import Path
from lottery_fast._atomic import exclusive
counter = Path(sys.argv[1])
with exclusive(counter):
    n = int(counter.read_text()) if counter.exists() else 0
    time.sleep(0.3)  # without the lock the other process reads the same n here
    counter.write_text(str(n + 1))
"""


@pytest.mark.slow
def test_exclusive_serialises_processes(tmp_path):
    # what keeps two IMP seed processes from both training the shared expert
    import lottery_fast

    env = dict(os.environ, PYTHONPATH=str(Path(lottery_fast.__file__).resolve().parents[1]))
    counter = tmp_path / "counter.txt"
    # cwd: not the checkout, whose lottery_fast/ has no compiled core when the package is installed
    procs = [subprocess.Popen([sys.executable, "-c", _LOCKED_COUNTER, str(counter)], env=env, cwd=tmp_path)
             for _ in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    assert counter.read_text() == "3"
    assert os.listdir(tmp_path) == ["counter.txt"]  # no lock file left behind
