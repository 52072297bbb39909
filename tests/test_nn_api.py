"""The masked layers as torch users meet them: state_dict, conversion, deepcopy, optimizers."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lottery_fast.nn import (MaskedConv2d, MaskedLinear, get_masks, keep_pruned_at_zero, masked, masked_modules,
                             set_masks, unmasked)


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3))


def _convnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 6))


def _random_masks(model: nn.Module, sparsity: float, seed: int = 1) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.rand(m.weight.shape, generator=gen) >= sparsity for name, m in masked_modules(model).items()}


def _pruned_weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([m.weight.detach()[~m.mask] for m in masked_modules(model).values()])


# -- state_dict ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dense", [nn.Linear(7, 5), nn.Conv2d(3, 4, 3, padding=1)])
def test_state_dict_loads_into_plain_layer_and_back(dense):
    twin_cls = MaskedLinear if isinstance(dense, nn.Linear) else MaskedConv2d
    layer = twin_cls.from_dense(dense)
    mask = torch.rand(layer.weight.shape, generator=torch.Generator().manual_seed(0)) > 0.5
    layer.set_mask(mask)
    state = layer.state_dict()
    assert set(state) == set(dense.state_dict())  # no mask, no renamed keys
    assert torch.all(state["weight"][~mask] == 0)

    plain = copy.deepcopy(dense)
    plain.load_state_dict(state, strict=True)
    x = torch.randn(2, 7) if isinstance(dense, nn.Linear) else torch.randn(2, 3, 6, 6)
    assert torch.allclose(plain(x), layer(x), atol=1e-6)

    back = twin_cls.from_dense(plain)
    back.load_state_dict(dense.state_dict(), strict=True)  # a dense state loads too
    assert torch.equal(back.weight, dense.weight)


def test_loading_a_state_rezeroes_pruned_weights():
    layer = MaskedLinear(6, 4, path="sparse")
    layer.set_mask(torch.rand(4, 6) > 0.5)
    layer.load_state_dict(nn.Linear(6, 4).state_dict())
    assert torch.all(layer.weight[~layer.mask] == 0)


# -- conversion, copies ----------------------------------------------------------------------------

@pytest.mark.parametrize("make", [_mlp, _convnet])
def test_masked_unmasked_round_trip_keeps_outputs(make):
    model = make()
    x = torch.randn(5, 12) if make is _mlp else torch.randn(5, 2, 5, 5)
    ref = model(x)
    m = masked(model)
    assert all(type(layer) in (MaskedLinear, MaskedConv2d) for layer in masked_modules(m).values())
    assert len(masked_modules(m)) == sum(isinstance(x, (nn.Linear, nn.Conv2d)) for x in model.modules())
    assert torch.allclose(m(x), ref, atol=1e-6)

    set_masks(m, _random_masks(m, 0.9))
    y_masked = m(x)
    back = unmasked(m)
    assert not masked_modules(back)
    assert torch.allclose(back(x), y_masked, atol=1e-6)
    assert torch.allclose(model(x), ref)  # the original was copied, not changed


def test_sparse_and_dense_paths_agree_inside_a_model():
    model = masked(_mlp())
    set_masks(model, _random_masks(model, 0.95))
    x = torch.randn(40, 12)
    outs = {}
    for path in ("sparse", "dense"):
        for layer in masked_modules(model).values():
            layer.path = path
        outs[path] = model(x)
    assert torch.allclose(outs["sparse"], outs["dense"], atol=1e-5)


def test_deepcopy_is_independent_and_works():
    model = masked(_mlp())
    for layer in masked_modules(model).values():
        layer.path = "sparse"
    set_masks(model, _random_masks(model, 0.8))
    x = torch.randn(9, 12)
    y = model(x)  # builds the index caches before copying
    clone = copy.deepcopy(model)
    assert torch.equal(clone(x), y)
    for (name, a), b in zip(get_masks(model).items(), get_masks(clone).values()):
        assert torch.equal(a, b)
    clone[0].mask[:] = False  # in-place edit of the copy only
    assert torch.all(model[0].mask == get_masks(model)["0"])
    assert torch.equal(model(x), y)
    assert not torch.allclose(clone(x), y)


# -- masks ---------------------------------------------------------------------------------------

def test_mask_validation_errors():
    layer = MaskedLinear(4, 3)
    with pytest.raises(ValueError, match=r"mask shape \(4, 3\).*weight shape \(3, 4\)"):
        layer.set_mask(torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        layer.set_mask(torch.ones(3, 4))
    with pytest.raises(TypeError, match="bool"):
        layer.set_mask(torch.full((3, 4), 2))
    layer.set_mask(torch.tensor([[1, 0, 1, 1]] * 3))  # integer 0/1 is accepted
    assert layer.mask.dtype == torch.bool and int(layer.mask.sum()) == 9
    model = masked(_mlp())
    with pytest.raises(KeyError, match="missing"):
        set_masks(model, {"0": torch.ones(32, 12, dtype=torch.bool)})


def test_sparsity_and_density():
    layer = MaskedLinear(10, 10)
    assert layer.density == 1.0 and layer.sparsity == 0.0
    mask = torch.ones(10, 10, dtype=torch.bool)
    mask[:3] = False
    layer.set_mask(mask)
    assert layer.density == pytest.approx(0.7) and layer.sparsity == pytest.approx(0.3)
    layer.set_mask(torch.zeros(10, 10, dtype=torch.bool))
    assert layer.density == 0.0 and layer.sparsity == 1.0


# -- training keeps pruned weights at zero -------------------------------------------------------

OPTIMIZERS = {
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01),
    "adamw_decay": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
}


def _train(model, opt, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        x = torch.randn(64, 12, generator=gen)
        target = torch.sin(x[:, :3]) + 0.1 * x[:, 3:6]
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("path", ["sparse", "dense"])
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_training_from_a_mask_keeps_pruned_weights_zero(opt_name, path):
    model = masked(_mlp())
    for layer in masked_modules(model).values():
        layer.path = path
    set_masks(model, _random_masks(model, 0.8))
    opt = OPTIMIZERS[opt_name](model.parameters())
    losses = _train(model, opt, 30)
    # Pruned weights get exactly zero gradient, so even without the hook no optimizer moves them.
    assert torch.all(_pruned_weights(model) == 0)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_paths_train_identically(opt_name):
    models = {}
    for path in ("sparse", "dense"):
        model = masked(_mlp())
        for layer in masked_modules(model).values():
            layer.path = path
        set_masks(model, _random_masks(model, 0.7))
        _train(model, OPTIMIZERS[opt_name](model.parameters()), 10)
        models[path] = model
    for a, b in zip(models["sparse"].parameters(), models["dense"].parameters()):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_keep_pruned_at_zero_after_pruning_mid_training(opt_name):
    """Optimizer state from before pruning (momentum, Adam moments) moves pruned weights."""
    results = {}
    for hooked in (False, True):
        model = masked(_mlp())
        opt = OPTIMIZERS[opt_name](model.parameters())
        _train(model, opt, 5)  # dense training builds optimizer state
        set_masks(model, _random_masks(model, 0.8))
        handle = keep_pruned_at_zero(opt, model) if hooked else None
        after_step = []
        for step in range(5):
            _train(model, opt, 1, seed=100 + step)
            after_step.append(_pruned_weights(model).abs().max().item())
        results[hooked] = after_step
        if handle is not None:
            handle.remove()
            _train(model, opt, 1, seed=7)
            assert _pruned_weights(model).abs().max().item() > 0  # the hook is gone
        # Either way the next forward sees pruned weights at exactly zero.
        model(torch.randn(2, 12))
        assert torch.all(_pruned_weights(model) == 0)
    assert max(results[False]) > 0
    assert max(results[True]) == 0
