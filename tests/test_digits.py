"""Digits MLP trainer: protocol, determinism, fresh optimizer, masks respected, late rewinding,
and the input mask of IMP dropping the constant border pixels first (with its image)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lottery_fast.analysis.mask_images import plot_input_masks, run_input_survival
from lottery_fast.imp import IMPConfig, load_mask_history, run_imp
from lottery_fast.nn import MaskedLinear, masked_modules
from lottery_fast.train import DigitsConfig, DigitsTrainer, Trainer, TrainResult

FAST = DigitsConfig(hidden=(32, 32), epochs=3, batch_size=64, lr=3e-3)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trainer():
    return DigitsTrainer(FAST)


def _equal_states(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_protocol_and_model_shape(trainer):
    assert isinstance(trainer, Trainer) and trainer.name == "digits" and trainer.default_prune_exclude == ()
    model = trainer.build_model(0)
    layers = masked_modules(model)
    assert list(layers) == ["fc1", "fc2", "out"] and all(isinstance(m, MaskedLinear) for m in layers.values())
    assert model(torch.zeros(5, 64)).shape == (5, 10)
    data = trainer.data
    assert data.x_train.shape[1] == 64 and len(data.y_test) == 449 and len(data.y_train) == 1797 - 449
    assert float(data.x_train.min()) == 0.0 and float(data.x_train.max()) == 1.0


def test_build_model_is_deterministic_and_leaves_global_rng_alone(trainer):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, b, c = (trainer.build_model(s).state_dict() for s in (7, 7, 8))
    assert torch.equal(torch.rand(3), expected)
    assert _equal_states(a, b) and not torch.equal(a["fc1.weight"], c["fc1.weight"])


def test_train_deterministic_with_fresh_optimizer_each_call(trainer):
    model = trainer.build_model(0)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    res1, none = trainer.train(model, seed=11)
    after_first = {k: v.clone() for k, v in model.state_dict().items()}
    assert none is None and isinstance(res1, TrainResult) and res1.steps == trainer.total_steps()
    assert res1.metric > 0.8 and res1.best_metric >= res1.metric
    assert res1.metric == trainer.evaluate(model, 0)
    # same start, same seed, after the trainer has already trained once: identical, so no optimizer
    # moments (or any other state) survive between calls
    model.load_state_dict(start)
    res2, _ = trainer.train(model, seed=11)
    assert _equal_states(model.state_dict(), after_first) and res2.metric == res1.metric
    model.load_state_dict(start)
    trainer.train(model, seed=12)
    assert not torch.equal(model.state_dict()["fc1.weight"], after_first["fc1.weight"])


def test_pruned_weights_stay_zero_and_untrained_is_chance(trainer):
    model = trainer.build_model(1)
    assert trainer.evaluate(model) < 0.3
    gen = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(m.weight.shape, generator=gen) < 0.3 for n, m in masked_modules(model).items()}
    for n, m in masked_modules(model).items():
        m.set_mask(masks[n])
    trainer.train(model, seed=2)
    for n, m in masked_modules(model).items():
        assert torch.all(m.weight[~masks[n]] == 0) and torch.equal(m.mask, masks[n])
        assert torch.all(m.weight[masks[n]] != 0)


def test_late_rewinding_state_is_the_step_k_weights(trainer):
    k = 7
    model = trainer.build_model(3)
    start = {kk: v.clone() for kk, v in model.state_dict().items()}
    _, rewind = trainer.train(model, seed=4, rewind_step=k)
    short = DigitsTrainer(DigitsConfig(**{**FAST.__dict__, "max_steps": k}))
    ref = short.build_model(3)
    res, _ = short.train(ref, seed=4)
    assert res.steps == k and _equal_states(rewind, ref.state_dict())
    assert not _equal_states(rewind, start)
    ref.load_state_dict(start)
    _, at_zero = short.train(ref, seed=4, rewind_step=0)
    assert _equal_states(at_zero, start)
    with pytest.raises(ValueError, match="rewind_step"):
        trainer.train(trainer.build_model(0), seed=0, rewind_step=trainer.total_steps() + 1)


@pytest.mark.parametrize("kwargs", [dict(hidden=(0,)), dict(epochs=0), dict(lr=0.0), dict(batch_size=0),
                                    dict(test_fraction=1.0), dict(max_steps=0), dict(weight_decay=-1.0)])
def test_config_validation(kwargs):
    with pytest.raises(ValueError, match="DigitsConfig"):
        DigitsConfig(**kwargs)


@pytest.mark.slow
def test_imp_prunes_constant_border_pixels_first(tmp_path):
    from sklearn.datasets import load_digits

    variance = load_digits().data.var(axis=0).reshape(8, 8)
    constant = variance == 0  # three pixels, all on the border, are 0 in every image
    assert constant.sum() == 3 and not constant[1:7, 1:7].any()
    centre = np.zeros((8, 8), dtype=bool)
    centre[2:6, 2:6] = True

    run_imp(DigitsTrainer(DigitsConfig(epochs=10)), IMPConfig(iterations=3, conditions=("mask/weights",)), tmp_path)
    history = load_mask_history(tmp_path)
    assert sorted(history) == [0, 1, 2, 3] and list(history[3]) == ["fc1", "fc2", "out"]
    surv = run_input_survival(tmp_path)
    assert surv.layer == "fc1" and surv.iterations == [0, 1, 2, 3]
    kept = surv.pixel_fraction[:, 0]  # [round, 8, 8] share of fc1's units still connected to each pixel
    assert np.array_equal(kept[3], history[3]["fc1"].float().mean(0).reshape(8, 8).numpy())
    assert (kept[0] == 1).all()
    assert kept[-1][constant].mean() < 0.75 * kept[-1][centre].mean()
    border = np.ones((8, 8), dtype=bool)
    border[1:7, 1:7] = False
    assert kept[-1][border].mean() < kept[-1][centre].mean()

    png = plot_input_masks(tmp_path)
    assert png == tmp_path / "input_masks_seed0.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="image_shape"):
        run_input_survival(tmp_path, image_shape=(7, 7))
