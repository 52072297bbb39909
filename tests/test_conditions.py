"""The four ticket conditions: what each keeps, what each shuffles, and determinism."""
from __future__ import annotations

import pytest
import torch

from lottery_fast.prune import CONDITION_REGISTRY, CONDITIONS, derive_condition, register_condition
from lottery_fast.prune.conditions import _check_same_layers

SHAPES = {"actor.0": (16, 4), "actor.2": (16, 16), "actor.4": (2, 16), "conv": (4, 3, 3, 3)}
DENSITY = {"actor.0": 0.6, "actor.2": 0.3, "actor.4": 0.0, "conv": 1.0}  # incl. fully pruned and dense


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    masks, init, fresh = {}, {}, {}
    for n, s in SHAPES.items():
        masks[n] = torch.rand(s, generator=g) < DENSITY[n]
        init[n] = torch.randn(s, generator=g, dtype=torch.float64) + 10.0  # distinct, never 0
        fresh[n] = torch.randn(s, generator=g, dtype=torch.float64) - 10.0
    return masks, init, fresh


def derive(condition, seed=123, data=None):
    masks, init, fresh = data or inputs()
    return derive_condition(condition, masks, init, fresh, torch.Generator().manual_seed(seed))


def multiset(t):
    return torch.sort(t.reshape(-1)).values


def test_condition_names():
    assert CONDITIONS == ("mask/weights", "mask/permuted", "permuted/permuted", "random/reinit")
    assert set(CONDITIONS) <= set(CONDITION_REGISTRY)


@pytest.mark.parametrize("condition", CONDITIONS)
def test_common_contract(condition):
    masks, init, fresh = data = inputs()
    copies = [{n: t.clone() for n, t in d.items()} for d in data]
    out_masks, weights = derive(condition, data=data)
    assert list(out_masks) == list(masks) and list(weights) == list(masks)
    for n in masks:
        assert out_masks[n].dtype == torch.bool and out_masks[n].shape == masks[n].shape
        assert weights[n].dtype == init[n].dtype and weights[n].shape == masks[n].shape
        assert torch.all(weights[n][~out_masks[n]] == 0)  # pruned positions are zero
        assert torch.all(weights[n][out_masks[n]] != 0)  # kept positions got a value
        assert out_masks[n].data_ptr() != masks[n].data_ptr()  # no aliasing of the inputs
    for d, c in zip(data, copies):  # inputs unchanged
        assert all(torch.equal(d[n], c[n]) for n in d)


@pytest.mark.parametrize("condition", CONDITIONS)
def test_deterministic_given_seed(condition):
    a_masks, a_w = derive(condition, seed=5)
    b_masks, b_w = derive(condition, seed=5)
    c_masks, c_w = derive(condition, seed=6)
    assert all(torch.equal(a_masks[n], b_masks[n]) and torch.equal(a_w[n], b_w[n]) for n in SHAPES)
    if condition != "mask/weights":  # every other condition draws something
        assert any(not torch.equal(a_masks[n], c_masks[n]) or not torch.equal(a_w[n], c_w[n]) for n in SHAPES)


def test_ticket_is_mask_and_init():
    masks, init, _ = data = inputs()
    out_masks, weights = derive("mask/weights", data=data)
    for n in masks:
        assert torch.equal(out_masks[n], masks[n])
        assert torch.equal(weights[n], init[n] * masks[n])


def test_mask_permuted_shuffles_values_within_layer():
    masks, init, _ = data = inputs()
    out_masks, weights = derive("mask/permuted", data=data)
    moved = 0
    for n in masks:
        assert torch.equal(out_masks[n], masks[n])
        assert torch.equal(multiset(weights[n][masks[n]]), multiset(init[n][masks[n]]))
        moved += int((weights[n][masks[n]] != init[n][masks[n]]).sum())
    assert moved > 0.8 * sum(int(m.sum()) for m in masks.values())  # a shuffle, not the identity


def test_permuted_permuted_keeps_layer_counts_and_values():
    masks, init, _ = data = inputs()
    out_masks, weights = derive("permuted/permuted", data=data)
    for n in masks:
        assert int(out_masks[n].sum()) == int(masks[n].sum())
        assert torch.equal(multiset(weights[n][out_masks[n]]), multiset(init[n][masks[n]]))
    assert not torch.equal(out_masks["actor.2"], masks["actor.2"])
    assert torch.equal(out_masks["conv"], masks["conv"])  # dense stays dense
    assert not out_masks["actor.4"].any()  # empty stays empty


def test_random_reinit_keeps_total_count_only():
    masks, _, fresh = data = inputs()
    out_masks, weights = derive("random/reinit", data=data)
    assert sum(int(m.sum()) for m in out_masks.values()) == sum(int(m.sum()) for m in masks.values())
    assert any(int(out_masks[n].sum()) != int(masks[n].sum()) for n in masks)  # layer ratios not kept
    for n in masks:
        assert torch.equal(weights[n], fresh[n] * out_masks[n])


def test_random_reinit_is_uniform_over_all_weights():
    # each position is kept with probability total_kept / total, whatever its layer's density was
    masks, init, fresh = inputs()
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    g = torch.Generator().manual_seed(0)
    hits = {n: 0 for n in masks}
    trials = 200
    for _ in range(trials):
        out, _ = derive_condition("random/reinit", masks, init, fresh, g)
        for n in masks:
            hits[n] += int(out[n].sum())
    for n in masks:
        expected = trials * masks[n].numel() * kept / total
        assert abs(hits[n] - expected) < 5 * expected ** 0.5 + 1, n


def test_errors():
    masks, init, fresh = inputs()
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="unknown condition 'ticket'.*mask/weights.*random/reinit"):
        derive_condition("ticket", masks, init, fresh, g)
    with pytest.raises(KeyError, match="init_weights"):
        derive_condition("mask/weights", masks, {"actor.0": init["actor.0"]}, fresh, g)
    bad = dict(init, conv=torch.zeros(4, 3, 3))
    with pytest.raises(ValueError, match="conv"):
        derive_condition("mask/permuted", masks, bad, fresh, g)
    with pytest.raises(KeyError, match="fresh_weights"):
        derive_condition("random/reinit", masks, init, {}, g)
    with pytest.raises(TypeError, match="bool"):
        derive_condition("mask/weights", {n: m.float() for n, m in masks.items()}, init, fresh, g)
    with pytest.raises(TypeError, match="Generator"):
        derive_condition("mask/weights", masks, init, fresh, 0)
    # fresh weights are only read by random/reinit
    derive_condition("mask/weights", masks, init, {}, g)


def test_register_condition_in_one_place():
    name = "mask/zeros-test"
    try:
        @register_condition(name)
        def _zeros(masks, init_weights, fresh_weights, generator):
            return dict(masks), {n: torch.zeros_like(w) for n, w in init_weights.items()}

        masks, init, fresh = inputs()
        _, weights = derive_condition(name, masks, init, fresh, torch.Generator())
        assert all(not w.any() for w in weights.values())
        with pytest.raises(ValueError, match="already registered"):
            register_condition(name)(_zeros)
    finally:
        CONDITION_REGISTRY.pop(name, None)


def test_parameters_give_detached_results():
    masks, init, fresh = inputs()
    params = {n: torch.nn.Parameter(w) for n, w in init.items()}
    for condition in CONDITIONS:
        _, weights = derive_condition(condition, masks, params, fresh, torch.Generator().manual_seed(0))
        assert not any(w.requires_grad for w in weights.values())
    _check_same_layers(masks, params, "init_weights")


@pytest.mark.slow
def test_a_registered_condition_runs_through_imp(tmp_path):
    """register_condition is the one place: IMPConfig, the engine and the results take it as it is."""
    from lottery_fast.imp import IMPConfig, load_results, run_imp
    from lottery_fast.prune import CONDITION_REGISTRY, condition_names, register_condition
    from lottery_fast.train import DigitsConfig, DigitsTrainer

    name = "mask/flipped-sign"

    @register_condition(name)
    def _flipped(masks, init_weights, fresh_weights, generator):
        return ({n: m.clone() for n, m in masks.items()},
                {n: torch.where(m, -init_weights[n], torch.zeros(())) for n, m in masks.items()})

    try:
        assert condition_names()[-1] == name
        cfg = IMPConfig(iterations=1, seeds=(0,), conditions=("mask/weights", name))
        run_imp(DigitsTrainer(DigitsConfig(hidden=(12,), epochs=1)), cfg, tmp_path)
        rows = load_results(tmp_path)
        assert [(r["iteration"], r["condition"]) for r in rows] == [(0, "mask/weights"), (1, "mask/weights"),
                                                                    (1, name)]
        # the unit started from the negated initial weights of the ticket's mask
        unit = torch.load(tmp_path / "seed_0" / "iter_001" / "mask-flipped-sign.pt", weights_only=True)
        ticket = torch.load(tmp_path / "seed_0" / "iter_001" / "mask-weights.pt", weights_only=True)
        for k, v in unit["start"].items():
            if k.endswith("weight") and k[:-len(".weight")] in unit["masks"]:
                assert torch.equal(v, -ticket["start"][k])
    finally:
        del CONDITION_REGISTRY[name]


def test_random_reinit_keeps_each_pruning_group_count():
    # the actor head pruned at its own rate keeps its kept count; the globally ranked layers are pooled
    masks, init, fresh = inputs()
    names = list(masks)
    groups = [tuple(n for n in names if n != "actor.2"), ("actor.2",)]
    g = torch.Generator().manual_seed(1)
    pooled_counts_differ = False
    for _ in range(20):
        out, weights = derive_condition("random/reinit", masks, init, fresh, g, groups=groups)
        assert int(out["actor.2"].sum()) == int(masks["actor.2"].sum())
        assert sum(int(out[n].sum()) for n in groups[0]) == sum(int(masks[n].sum()) for n in groups[0])
        pooled_counts_differ |= any(int(out[n].sum()) != int(masks[n].sum()) for n in groups[0])
        for n in masks:
            assert torch.equal(weights[n], fresh[n] * out[n])
    assert pooled_counts_differ  # within the pooled group per-layer ratios are still not kept


def test_random_reinit_groups_must_partition_the_layers():
    masks, init, fresh = inputs()
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="exactly once"):
        derive_condition("random/reinit", masks, init, fresh, g, groups=[tuple(masks)[:1]])


def test_prune_groups_follow_the_pruning_rule():
    from lottery_fast.prune import PruneConfig, prune_groups

    names = ["actor.0", "actor.2", "actor.4"]
    assert prune_groups(names, PruneConfig()) == [tuple(names)]
    assert prune_groups(names, PruneConfig(layer_rates=(("actor.4", 0.1),))) == [("actor.0", "actor.2"), ("actor.4",)]
    assert prune_groups(names, PruneConfig(scope="layerwise")) == [(n,) for n in names]
