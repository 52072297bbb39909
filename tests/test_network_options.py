"""NetworkConfig's init schemes and image torsos."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lottery_fast.envs.make import make_vec_env
from lottery_fast.nn import masked_modules
from lottery_fast.train.networks import NetworkConfig, build_actor_critic


@pytest.fixture(scope="module")
def cartpole_spec():
    with make_vec_env("CartPole-v1", 1, 0) as env:
        return env.spec


@pytest.fixture(scope="module")
def grid_spec():
    with make_vec_env("lottery_fast/PatrolGridDistractors-v0", 1, 0) as env:
        return env.spec


def _layers(model):
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def test_torch_default_is_torchs_own_reset(cartpole_spec):
    """Each layer gets exactly what its reset_parameters draws, layer after layer from the seed."""
    model = build_actor_critic(cartpole_spec, 3, NetworkConfig(init="torch_default"))
    ref = build_actor_critic(cartpole_spec, 0)
    torch.manual_seed(3)
    order = [m for net in (ref.actor, ref.critic) for m in
             [x for x in net.modules() if isinstance(x, (nn.Linear, nn.Conv2d)) and x is not net.head] + [net.head]]
    for m in order:
        nn.Linear.reset_parameters(m)
    for ours, theirs in zip(_layers(model), _layers(ref)):
        torch.testing.assert_close(ours.weight, theirs.weight, rtol=0, atol=0)
        torch.testing.assert_close(ours.bias, theirs.bias, rtol=0, atol=0)


def test_torch_default_puts_layers_on_fan_in_scales(cartpole_spec):
    model = build_actor_critic(cartpole_spec, 0, NetworkConfig(init="torch_default"))
    orth = build_actor_critic(cartpole_spec, 0)
    for m in _layers(model):
        bound = 1 / math.sqrt(m.weight.shape[1])
        assert float(m.weight.detach().abs().max()) <= bound and float(m.bias.detach().abs().max()) <= bound
        assert float(m.bias.detach().abs().max()) > 0  # biases are drawn, not zero
    rms = {n: float(m.weight.detach().pow(2).mean().sqrt()) for n, m in masked_modules(model).items()}
    # fan-in 4 vs 64: the input layer starts about 4x larger than the hidden layer
    assert 3.0 < rms["actor.body.0"] / rms["actor.body.2"] < 5.5
    orms = {n: float(m.weight.detach().pow(2).mean().sqrt()) for n, m in masked_modules(orth).items()}
    assert orms["actor.body.0"] / orms["actor.body.2"] < 1.5  # orthogonal: one scale
    assert float(orth.actor.body[0].bias.detach().abs().max()) == 0
    again = build_actor_critic(cartpole_spec, 0, NetworkConfig(init="torch_default"))
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # a pure function of the seed


def test_default_init_is_unchanged(cartpole_spec):
    a = build_actor_critic(cartpole_spec, 5)
    b = build_actor_critic(cartpole_spec, 5, NetworkConfig(init="orthogonal"))
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_mlp_torso_reads_every_cell(grid_spec):
    c, h, w = grid_spec.obs_shape
    model = build_actor_critic(grid_spec, 0, NetworkConfig(image_torso="mlp"))
    masks = masked_modules(model)
    assert list(masks)[0] == "actor.body.0" and tuple(masks["actor.body.0"].weight.shape) == (64, c * h * w)
    assert not any("encoder" in n for n in masks)
    obs = torch.rand(3, c, h, w)
    assert model(obs).shape == (3, grid_spec.n_actions)
    conv = build_actor_critic(grid_spec, 0)
    assert list(masked_modules(conv))[0] == "actor.encoder.0"  # the conv torso stays the default


@pytest.mark.parametrize("kw, match", [({"init": "xavier"}, "init must be one of"),
                                       ({"image_torso": "vit"}, "image_torso must be one of"),
                                       ({"image_torso": "mlp", "conv": ((8, 3, 1),)}, "image_torso is 'mlp'")])
def test_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        NetworkConfig(**kw)


def test_init_is_recorded_through_the_trainer_config():
    from lottery_fast.experiments import make_trainer
    from lottery_fast.imp.config import trainer_description

    trainer = make_trainer("ppo", "CartPole-v1", {"total_steps": 1024, "network": {"init": "torch_default"}})
    assert trainer_description(trainer)["config"]["network"]["init"] == "torch_default"
