"""Masks that survive saving: lottery_fast.save / lottery_fast.load."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import lottery_fast
from lottery_fast.nn import get_masks, masked, masked_modules, set_masks


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return masked(nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(),
                                nn.Linear(3 * 5 * 5, 33), nn.Tanh(), nn.Linear(33, 4)))


def _prune(model: nn.Module, sparsity: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    masks = {name: torch.rand(m.weight.shape, generator=gen) >= sparsity for name, m in masked_modules(model).items()}
    masks["5"][1] = False  # a fully pruned output row
    set_masks(model, masks)


def _pruned_weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([m.weight.detach()[~m.mask] for m in masked_modules(model).values()])


def _train(model: nn.Module, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(steps):
        x = torch.randn(8, 2, 5, 5, generator=gen)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_saved_masks_survive_reload_and_training(tmp_path, sparsity):
    model = _model(0)
    _prune(model, sparsity, seed=1)
    _train(model, 3, seed=2)  # weights moved since the masks were set
    path = tmp_path / "ticket.pt"
    lottery_fast.save(model, path)

    fresh = _model(7)  # other weights, full masks
    assert lottery_fast.load(fresh, path) is fresh
    saved = get_masks(model)
    for name, mask in get_masks(fresh).items():
        assert torch.equal(mask, saved[name]), name
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.all(_pruned_weights(fresh) == 0)
    x = torch.randn(4, 2, 5, 5)
    assert torch.equal(fresh(x), model(x))

    _train(fresh, 5, seed=3)  # a fresh optimizer, weight decay: pruned weights must not grow back
    assert torch.all(_pruned_weights(fresh) == 0)
    for name, mask in get_masks(fresh).items():
        assert torch.equal(mask, saved[name]), name


def test_plain_state_dict_drops_masks_but_load_takes_it(tmp_path):
    """The reason for save/load: a bare state dict has no masks. load() still reads one (weights
    only, masks left as they are), from a masked or a plain model."""
    model = _model(0)
    _prune(model, 0.8, seed=1)
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    fresh = _model(5)
    lottery_fast.load(fresh, tmp_path / "plain.pt")
    assert all(bool(m.mask.all()) for m in masked_modules(fresh).values())
    assert torch.equal(fresh.state_dict()["5.weight"], model.state_dict()["5.weight"])

    torch.manual_seed(3)
    plain = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 5 * 5, 33), nn.Tanh(), nn.Linear(33, 4))
    torch.save(plain.state_dict(), tmp_path / "dense.pt")
    lottery_fast.load(fresh, tmp_path / "dense.pt")
    x = torch.randn(2, 2, 5, 5)
    assert torch.allclose(fresh(x), plain(x), atol=1e-6)


def test_saved_state_dict_loads_into_a_plain_model(tmp_path):
    model = _model(0)
    _prune(model, 0.7, seed=1)
    lottery_fast.save(model, tmp_path / "ticket.pt")
    obj = torch.load(tmp_path / "ticket.pt", weights_only=True)
    plain = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 5 * 5, 33), nn.Tanh(), nn.Linear(33, 4))
    plain.load_state_dict(obj["state_dict"], strict=True)
    x = torch.randn(3, 2, 5, 5)
    assert torch.allclose(plain(x), model(x), atol=1e-6)
    lottery_fast.load(_model(2), obj)  # the loaded dict itself is accepted too


def test_load_errors_name_the_problem(tmp_path):
    model = _model(0)
    lottery_fast.save(model, tmp_path / "ticket.pt")
    with pytest.raises(TypeError, match="nn.Module"):
        lottery_fast.save({"w": torch.ones(1)}, tmp_path / "x.pt")  # type: ignore[arg-type]
    assert not (tmp_path / "x.pt").exists()
    with pytest.raises(TypeError, match="nn.Module"):
        lottery_fast.load(tmp_path / "ticket.pt", model)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        lottery_fast.load(model, {"format": "other", "state_dict": {}, "masks": {}})
    smaller = masked(nn.Sequential(nn.Linear(3, 4)))
    with pytest.raises(RuntimeError, match="state_dict"):
        lottery_fast.load(smaller, tmp_path / "ticket.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(TypeError, match="not a state dict"):
        lottery_fast.load(model, tmp_path / "list.pt")
