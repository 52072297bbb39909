"""Model-level magnitude pruning against hand-computed golden masks."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lottery_fast.nn import MaskedConv2d, MaskedLinear
from lottery_fast.prune import PruneConfig, PruneReport, prunable_layers, prune_model, rescale_init_, sparsity_after

L0 = [[0.10, -0.80], [0.30, 0.05], [-0.60, 0.20]]  # actor.0: 3x2
L1 = [[0.04, 0.70, -0.15], [0.50, -0.02, 0.90]]  # actor.2: 2x3
CR = [[0.01, -0.03]]  # critic: 1x2


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.actor = nn.Sequential(MaskedLinear(2, 3), nn.Tanh(), MaskedLinear(3, 2))
        self.critic = nn.Sequential(MaskedLinear(2, 1))
        with torch.no_grad():
            for layer, w in ((self.actor[0], L0), (self.actor[2], L1), (self.critic[0], CR)):
                layer.weight.copy_(torch.tensor(w))
                layer.bias.fill_(1e-4)  # smaller than every weight: pruning them would show


def masks_of(model):
    return {n: m.mask.int().tolist() for n, m in prunable_layers(model).items()}


GOLDEN = [
    # (config, expected masks, expected threshold)
    (PruneConfig(rate=0.25),  # round(0.25 * 14) = 4 smallest: .01 .02 .03 .04
     {"actor.0": [[1, 1], [1, 1], [1, 1]], "actor.2": [[0, 1, 1], [1, 0, 1]], "critic.0": [[0, 0]]}, 0.04),
    (PruneConfig(rate=0.25, exclude=("critic",)),  # round(0.25 * 12) = 3: .02 .04 .05
     {"actor.0": [[1, 1], [1, 0], [1, 1]], "actor.2": [[0, 1, 1], [1, 0, 1]], "critic.0": [[1, 1]]}, 0.05),
    (PruneConfig(rate=0.5, scope="layerwise", exclude=("critic.*",)),  # 3 of 6 in each actor layer
     {"actor.0": [[0, 1], [1, 0], [1, 0]], "actor.2": [[0, 1, 0], [1, 0, 1]], "critic.0": [[1, 1]]}, None),
    (PruneConfig(rate=0.25, exclude=("critic",), layer_rates=(("actor.2", 0.5),)),
     # global over actor.0 alone: round(1.5) = 2 (.05 .10); actor.2 alone at 0.5: .02 .04 .15
     {"actor.0": [[0, 1], [1, 0], [1, 1]], "actor.2": [[0, 1, 0], [1, 0, 1]], "critic.0": [[1, 1]]}, 0.10),
    (PruneConfig(rate=0.0), {"actor.0": [[1, 1]] * 3, "actor.2": [[1, 1, 1]] * 2, "critic.0": [[1, 1]]}, None),
]


@pytest.mark.parametrize("config,expected,threshold", GOLDEN)
def test_golden_masks(config, expected, threshold):
    model = Tiny()
    report = prune_model(model, config)
    assert masks_of(model) == expected
    if threshold is None:
        assert report.threshold is None
    else:
        assert report.threshold == pytest.approx(threshold, rel=1e-6)
    layers = prunable_layers(model)
    for name, layer in layers.items():
        assert torch.all(layer.weight[~layer.mask] == 0)  # pruned weights are exactly 0
        assert torch.equal(layer.weight[layer.mask], torch.tensor(
            {"actor.0": L0, "actor.2": L1, "critic.0": CR}[name])[layer.mask])  # kept ones untouched
        assert torch.all(layer.bias == 1e-4)  # biases never pruned
    prunable = prunable_layers(model, config.exclude)
    kept = {n: sum(map(sum, expected[n])) for n in prunable}
    assert report.pruned == {n: layers[n].mask.numel() - kept[n] for n in prunable}
    assert report.density == pytest.approx({n: kept[n] / layers[n].mask.numel() for n in prunable})
    assert report.overall_density == pytest.approx(sum(kept.values()) / sum(layers[n].mask.numel() for n in prunable))


def test_rate_applies_to_the_remaining_weights():
    model = Tiny()
    prune_model(model, PruneConfig(rate=0.25))  # 14 -> 10 kept
    report = prune_model(model, PruneConfig(rate=0.25))  # round(2.5) = 3 more: .05 .10 .15
    assert masks_of(model) == {"actor.0": [[0, 1], [1, 0], [1, 1]], "actor.2": [[0, 1, 0], [1, 0, 1]], "critic.0": [[0, 0]]}
    assert report.pruned == {"actor.0": 2, "actor.2": 1, "critic.0": 0}
    assert report.threshold == pytest.approx(0.15)


def test_ties_go_by_layer_order_then_flat_index():
    model = Tiny()
    with torch.no_grad():
        for layer in prunable_layers(model).values():
            layer.weight.fill_(-0.5)
    prune_model(model, PruneConfig(rate=0.5))  # 7 of 14, all tied: actor.0 (6) then actor.2[0, 0]
    assert masks_of(model) == {"actor.0": [[0, 0]] * 3, "actor.2": [[0, 1, 1], [1, 1, 1]], "critic.0": [[1, 1]]}


def test_prunable_layers_order_and_patterns():
    model = Tiny()
    assert list(prunable_layers(model)) == ["actor.0", "actor.2", "critic.0"]
    assert list(prunable_layers(model, ("critic",))) == ["actor.0", "actor.2"]
    assert list(prunable_layers(model, ("actor",))) == ["critic.0"]  # a parent name covers its layers
    assert list(prunable_layers(model, ("actor.*", "crit*"))) == []
    with pytest.raises(ValueError, match="'critc' matches no masked layer"):
        prunable_layers(model, ("critc",))


@pytest.mark.parametrize("kwargs,match", [
    (dict(rate=1.0), "rate"), (dict(rate=-0.1), "rate"), (dict(rate=math.nan), "rate"),
    (dict(rate=True), "rate"), (dict(scope="local"), "scope"),
    (dict(layer_rates=(("actor.0", 1.0),)), "layer_rates"), (dict(layer_rates=(("actor.0",),)), "layer_rates"),
])
def test_config_validation(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        PruneConfig(**kwargs)


def test_config_accepts_lists_and_stays_hashable():
    c = PruneConfig(exclude=["critic"], layer_rates=[["actor.2", 0.1]])
    assert c.exclude == ("critic",) and c.layer_rates == (("actor.2", 0.1),)
    hash(c)


@pytest.mark.parametrize("config,match", [
    (PruneConfig(exclude=("policy.*",)), "'policy.\\*' matches no masked layer"),
    (PruneConfig(layer_rates=(("value", 0.1),)), "'value' matches no prunable layer"),
    (PruneConfig(exclude=("critic",), layer_rates=(("critic", 0.1),)), "'critic' matches no prunable layer"),
    (PruneConfig(exclude=("actor", "critic")), "no prunable"),
])
def test_pattern_and_empty_errors(config, match):
    model = Tiny()
    with pytest.raises(ValueError, match=match):
        prune_model(model, config)
    assert all(bool(m.mask.all()) for m in prunable_layers(model).values())


def test_model_without_masked_layers():
    with pytest.raises(ValueError, match="no prunable"):
        prune_model(nn.Sequential(nn.Linear(2, 2)), PruneConfig())


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_nan_weight_names_layer_and_changes_nothing(scope):
    model = Tiny()
    with torch.no_grad():
        model.actor[2].weight[1, 2] = math.nan
    with pytest.raises(ValueError, match=r"'actor\.2'.*non-finite.*index 5"):
        prune_model(model, PruneConfig(rate=0.5, scope=scope))
    assert all(bool(m.mask.all()) for m in prunable_layers(model).values())
    # a NaN at an already-pruned position is no error (it is zeroed by apply_mask_)
    model.actor[2].set_mask(torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool))
    with torch.no_grad():
        model.actor[2].weight[1, 2] = math.nan
    prune_model(model, PruneConfig(rate=0.5, scope=scope))
    assert model.actor[2].weight[1, 2] == 0


def test_float16_layer_rejected_before_any_change():
    model = Tiny()
    model.critic[0].half()
    with pytest.raises(TypeError, match="critic"):
        prune_model(model, PruneConfig(scope="layerwise"))
    assert all(bool(m.mask.all()) for m in prunable_layers(model).values())


def expected_kept(n, rate, iterations):
    for _ in range(iterations):
        n -= math.floor(rate * n + 0.5)
    return n


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_twenty_iterations_reach_point8_to_the_20(scope):
    torch.manual_seed(0)
    model = nn.Sequential(MaskedLinear(40, 100), nn.ReLU(), MaskedLinear(100, 60), nn.ReLU(), MaskedLinear(60, 5))
    total = 40 * 100 + 100 * 60 + 60 * 5
    for _ in range(20):
        report = prune_model(model, PruneConfig(rate=0.2, scope=scope))
    assert report.overall_density == pytest.approx(0.8 ** 20, abs=20 * 0.5 * 3 / total)
    assert report.overall_density == pytest.approx(1 - sparsity_after(20, 0.2), abs=20 * 0.5 * 3 / total)
    if scope == "global":
        assert round(report.overall_density * total) == expected_kept(total, 0.2, 20)
    else:
        for name, layer in prunable_layers(model).items():
            assert int(layer.mask.sum()) == expected_kept(layer.mask.numel(), 0.2, 20)


def test_global_prunes_small_scale_layer_first():
    # an output layer initialised far smaller loses all its weights first under the global threshold
    torch.manual_seed(1)
    model = nn.Sequential(MaskedLinear(8, 32), nn.Tanh(), MaskedLinear(32, 2))
    with torch.no_grad():
        model[2].weight.mul_(1e-6)
    report = prune_model(model, PruneConfig(rate=0.2))
    assert report.density["2"] == 0.0 and report.pruned["2"] == 64
    assert report.pruned["0"] == round(0.2 * (256 + 64)) - 64


def test_channels_last_conv_matches_contiguous():
    torch.manual_seed(2)
    dense = MaskedConv2d(3, 8, 3)
    cl = MaskedConv2d(3, 8, 3).to(memory_format=torch.channels_last)
    cl.load_state_dict(dense.state_dict())
    cl.mask = torch.ones_like(cl.weight, dtype=torch.bool)  # ones_like keeps the channels_last strides
    assert not cl.mask.is_contiguous()
    r1 = prune_model(dense, PruneConfig(rate=0.3))
    r2 = prune_model(cl, PruneConfig(rate=0.3))
    assert torch.equal(dense.mask, cl.mask) and r1.pruned == r2.pruned
    assert torch.equal(dense.weight, cl.weight)


def test_report_type_and_sparsity_after():
    assert isinstance(prune_model(Tiny(), PruneConfig()), PruneReport)
    assert sparsity_after(0, 0.2) == 0.0
    assert sparsity_after(10, 0.2) == pytest.approx(1 - 0.8 ** 10)
    for bad in [(-1, 0.2), (3, 1.0), (2.0, 0.2)]:
        with pytest.raises(ValueError):
            sparsity_after(*bad)


# --- init rescaling -------------------------------------------------------------------------------

def cartpole_actor(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(MaskedLinear(4, 64), nn.Tanh(), MaskedLinear(64, 64), nn.Tanh(), MaskedLinear(64, 2))


def test_rescale_fan_in_formula():
    model = cartpole_actor()
    before = {n: (m.weight.detach().clone(), m.bias.detach().clone()) for n, m in prunable_layers(model).items()}
    scales = rescale_init_(model, mode="fan_in")
    assert scales == pytest.approx({"0": math.sqrt(4 / 64), "2": 1.0, "4": 1.0})
    for n, m in prunable_layers(model).items():
        assert torch.allclose(m.weight, before[n][0] * scales[n])
        assert torch.equal(m.bias, before[n][1])  # biases untouched
    # default nn.Linear init is fan-in scaled: afterwards every layer has about the same std
    stds = [float(m.weight.detach().std()) for m in prunable_layers(model).values()]
    assert max(stds) / min(stds) < 1.2
    # an explicit reference fan-in, on chosen layers only
    model = cartpole_actor()
    w2 = model[2].weight.detach().clone()
    assert rescale_init_(model, ["0", "4"], mode="fan_in", reference=16) == pytest.approx({"0": 0.5, "4": 2.0})
    assert torch.equal(model[2].weight, w2)


def test_rescale_rms_equalises_layers_including_gains():
    model = cartpole_actor()
    with torch.no_grad():
        model[4].weight.mul_(0.01)  # a CleanRL-style small actor head
        model[2].weight[:5] = 0.0
    model[2].set_mask(model[2].weight != 0)  # rms over kept weights only
    ref = float(model[2].weight.detach()[model[2].mask].pow(2).mean().sqrt())  # the widest layer (fan-in 64, first)
    scales = rescale_init_(model, mode="rms")
    assert scales["2"] == pytest.approx(1.0)
    for m in prunable_layers(model).values():
        assert float(m.weight.detach()[m.mask].double().pow(2).mean().sqrt()) == pytest.approx(ref, rel=1e-5)
        assert torch.all(m.weight[~m.mask] == 0)
    rescale_init_(model, mode="rms", reference=0.3)
    for m in prunable_layers(model).values():
        assert float(m.weight.detach()[m.mask].double().pow(2).mean().sqrt()) == pytest.approx(0.3, rel=1e-5)


def test_rescale_lets_global_pruning_reach_the_input_layer():
    # without rescaling the 4-input layer (4x larger init) keeps most of its weights at 49% sparsity
    plain, rescaled = cartpole_actor(3), cartpole_actor(3)
    rescale_init_(rescaled, mode="fan_in")
    for _ in range(3):
        d_plain = prune_model(plain, PruneConfig(rate=0.2)).density["0"]
        d_rescaled = prune_model(rescaled, PruneConfig(rate=0.2)).density["0"]
    assert d_plain > 0.8 and d_rescaled < 0.65  # expected about 0.86 and 0.51


def test_rescale_errors_and_none():
    model = cartpole_actor()
    w = model[0].weight.detach().clone()
    assert rescale_init_(model, mode="none") == {"0": 1.0, "2": 1.0, "4": 1.0}
    assert torch.equal(model[0].weight, w)
    with pytest.raises(ValueError, match="unknown mode 'std'.*fan_in"):
        rescale_init_(model, mode="std")
    with pytest.raises(KeyError, match="'9'"):
        rescale_init_(model, ["0", "9"])
    with pytest.raises(ValueError, match="reference"):
        rescale_init_(model, reference=0.0)
    with pytest.raises(ValueError, match="no layers"):
        rescale_init_(model, [])
    model[4].set_mask(torch.zeros(2, 64, dtype=torch.bool))
    with pytest.raises(ValueError, match="'4' has no kept weights"):
        rescale_init_(model, mode="rms")
    assert torch.equal(model[0].weight, w)  # nothing changed before the error
