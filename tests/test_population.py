"""Population training: stacked layers and optimizer against references, and member independence
(a member's results are bitwise the same alone or beside others, same seed)."""
from __future__ import annotations

import copy

import pytest
import torch

from lottery_fast.imp import IMPConfig, load_results, run_imp
from lottery_fast.nn import MaskedLinear
from lottery_fast.nn.population import PopulationLinear
from lottery_fast.train.population_optim import PopulationAdam, clip_grad_norm_
from lottery_fast.train.ppo import PPOConfig, PPOTrainer

pytestmark = pytest.mark.usefixtures("one_thread")

_TIMING = ("seconds", "steps_per_s", "population_size")


def _result_key(result):
    r, _ = result
    return (r.metric, r.best_metric, r.steps, {k: v for k, v in r.extra.items() if k not in _TIMING})


def _equal_states(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- PopulationLinear -------------------------------------------------------------------------
@pytest.mark.parametrize("P,batch,n_in,n_out", [(5, 7, 4, 64), (3, 1, 9, 5), (4, 33, 64, 1), (2, 16, 1, 3),
                                                (3, 40, 300, 260)])
@pytest.mark.parametrize("path", ["dense", "sparse", "auto"])
def test_population_linear_matches_float64_reference(P, batch, n_in, n_out, path):
    g = torch.Generator().manual_seed(P * 1000 + n_in)
    weight = torch.randn(P, n_out, n_in, generator=g)
    bias = torch.randn(P, n_out, generator=g)
    density = torch.tensor([0.9, 0.05, 0.0, 1.0, 0.3])[:P]  # a fully pruned member, a dense one
    mask = torch.rand(P, n_out, n_in, generator=g) < density.view(-1, 1, 1)
    mask[0, 0] = False  # an empty row
    layer = PopulationLinear(weight, bias, mask, path=path)
    x = torch.randn(P, batch, n_in, generator=g, requires_grad=True)
    y = layer(x)
    gy = torch.randn(y.shape, generator=g)
    y.backward(gy)

    w64 = (weight * mask).double().requires_grad_()
    b64 = bias.double().requires_grad_()
    x64 = x.detach().double().requires_grad_()
    y64 = torch.einsum("pbi,poi->pbo", x64, w64 * mask) + b64.unsqueeze(1)
    y64.backward(gy.double())
    torch.testing.assert_close(y, y64.float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x.grad, x64.grad.float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(layer.weight.grad, (w64.grad * mask).float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(layer.bias.grad, b64.grad.float(), rtol=1e-4, atol=1e-4)
    assert not layer.weight.grad[~mask].any()  # pruned weights get no gradient
    assert not layer.weight[~mask].any()


@pytest.mark.parametrize("P,batch,n_in,n_out", [(6, 256, 64, 1), (6, 8, 4, 64), (6, 1, 64, 2), (6, 10, 64, 2)])
def test_population_linear_member_does_not_depend_on_others(P, batch, n_in, n_out):
    g = torch.Generator().manual_seed(7)
    weight, bias = torch.randn(P, n_out, n_in, generator=g), torch.randn(P, n_out, generator=g)
    x, gy = torch.randn(P, batch, n_in, generator=g), torch.randn(P, batch, n_out, generator=g)

    def run(members):
        layer = PopulationLinear(weight[members], bias[members])
        xi = x[members].clone().requires_grad_()
        layer(xi).backward(gy[members])
        return layer(xi).detach(), xi.grad, layer.weight.grad

    together = run(list(range(P)))
    for p in (0, 3, P - 1):
        alone = run([p])
        assert all(torch.equal(a[0], t[p]) for a, t in zip(alone, together))


def test_population_linear_round_trip_into_masked_layers():
    layers = [MaskedLinear(6, 4) for _ in range(3)]
    for i, l in enumerate(layers):
        l.set_mask(torch.rand(4, 6, generator=torch.Generator().manual_seed(i)) < 0.5)
    pop = PopulationLinear.from_layers(layers)
    with torch.no_grad():
        pop.weight.add_(1.0 * pop.mask)
    for i, l in enumerate(layers):
        pop.write_to(l, i)
        assert torch.equal(l.weight, pop.weight[i]) and not l.weight[~l.mask].any()
    with pytest.raises(ValueError, match="mask is not member 0"):
        pop.write_to(layers[1], 0)


# -- optimizer ----------------------------------------------------------------------------------
def test_population_adam_and_clip_match_torch_per_member():
    g = torch.Generator().manual_seed(0)
    P = 4
    stacked = [torch.randn(P, 5, 3, generator=g).requires_grad_(), torch.randn(P, 5, generator=g).requires_grad_()]
    singles = [[t[p].detach().clone().requires_grad_() for t in stacked] for p in range(P)]
    opt = PopulationAdam(stacked, lr=0.01, eps=1e-5)
    refs = [torch.optim.Adam(s, lr=0.01, eps=1e-5) for s in singles]
    for step in range(5):
        grads = [torch.randn(t.shape, generator=g) * 3 for t in stacked]
        for t, gr in zip(stacked, grads):
            t.grad = gr.clone()
        clip_grad_norm_(stacked, 0.5)
        active = torch.tensor([True, step < 2, True, True])  # member 1 stops after two steps
        opt.step(active)
        for p in range(P):
            if not active[p]:
                continue
            for s, gr in zip(singles[p], grads):
                s.grad = gr[p].clone()
            torch.nn.utils.clip_grad_norm_(singles[p], 0.5)
            refs[p].step()
    for p in range(P):
        for t, s in zip(stacked, singles[p]):
            torch.testing.assert_close(t[p].detach(), s.detach(), rtol=1e-5, atol=1e-6)
    assert opt.steps == [5, 2, 5, 5]


# -- population PPO -----------------------------------------------------------------------------
def _pruned_models(trainer, seeds):
    models = []
    for s in seeds:
        m = trainer.build_model(s)
        g = torch.Generator().manual_seed(100 + s)
        for layer in (m.actor.body[0], m.actor.body[2], m.actor.head):
            layer.set_mask(torch.rand(layer.weight.shape, generator=g) < 0.2 + 0.04 * s)
        models.append(m)
    return models


@pytest.mark.parametrize("env_id,overrides", [
    ("CartPole-v1", dict(total_steps=2048, num_steps=64, target_kl=1e-5, num_evals=2, eval_episodes=3)),
    ("CartPole-v1", dict(total_steps=2048, num_steps=64, target_kl=1e-5, num_evals=2, eval_episodes=3,
                         env_backend="numpy")),  # all members' envs in one batch
    ("Pendulum-v1", dict(total_steps=2048, num_steps=128, num_minibatches=4, update_epochs=2, num_evals=1,
                         eval_episodes=2, norm_obs=True, norm_reward=True)),
])
@pytest.mark.slow
def test_member_is_bitwise_the_same_alone_and_in_a_population(env_id, overrides):
    base = PPOConfig() if env_id == "CartPole-v1" else PPOConfig.continuous_control()
    import dataclasses

    trainer = PPOTrainer(env_id, dataclasses.replace(base, **overrides))
    seeds = list(range(20)) if env_id == "CartPole-v1" else list(range(5))
    models = _pruned_models(trainer, seeds)
    originals = [copy.deepcopy(m) for m in models]
    together = trainer.train_population(models, seeds, rewind_step=3)
    if "target_kl" in overrides:  # the target-KL stop fired for some members, not for all
        kl_steps = {r.extra["optimizer_steps"] for r, _ in together}
        assert len(kl_steps) > 1
    for p in (0, len(seeds) - 1):
        alone_model = copy.deepcopy(originals[p])
        alone = trainer.train_population([alone_model], [seeds[p]], rewind_step=3)[0]
        assert _result_key(alone) == _result_key(together[p])
        assert _equal_states(alone_model.state_dict(), models[p].state_dict())
        assert _equal_states(alone[1], together[p][1])  # the rewind state too
        for name, layer in models[p].named_modules():
            if hasattr(layer, "mask"):
                assert torch.equal(layer.mask, dict(originals[p].named_modules())[name].mask)
                assert not layer.weight[~layer.mask].any()


@pytest.mark.slow
def test_population_ppo_learns_cartpole():
    trainer = PPOTrainer("CartPole-v1", PPOConfig(total_steps=30_000, num_evals=2, eval_episodes=5))
    seeds = [0, 1, 2]
    results = trainer.train_population([trainer.build_model(s) for s in seeds], seeds)
    assert min(r.best_metric for r, _ in results) > 100  # random play scores about 20


@pytest.mark.slow
def test_imp_population_units_do_not_depend_on_the_population(tmp_path):
    """Through the engine: seeds trained together equal each seed's own run, and resume per unit."""
    trainer = PPOTrainer("CartPole-v1", PPOConfig(total_steps=1024, num_steps=64, num_evals=1, eval_episodes=2))
    cfg = IMPConfig(iterations=1, seeds=(0, 1))
    together = run_imp(trainer, cfg, tmp_path / "together").rows
    run_imp(trainer, cfg, tmp_path / "alone", seeds=[1])  # each seed its own population
    run_imp(trainer, cfg, tmp_path / "alone", seeds=[0])
    drop = ("train_seconds", "extra/seconds", "extra/steps_per_s", "extra/population_size")

    def clean(rows):
        return sorted(({k: v for k, v in r.items() if k not in drop} for r in rows),
                      key=lambda r: (r["seed"], r["iteration"], r["condition"]))

    events = []
    run_imp(trainer, cfg, tmp_path / "alone", on_progress=events.append)  # nothing left: writes results.csv
    assert not [e for e in events if e.kind == "unit_start"]
    assert clean(load_results(tmp_path / "alone")) == clean(together)
    per_agent = run_imp(trainer, cfg, tmp_path / "per-agent", population=False).rows
    assert len(per_agent) == len(together)
    with pytest.raises(Exception, match="population"):  # a folder holds one path's results only
        run_imp(trainer, cfg, tmp_path / "together", population=False)


@pytest.mark.slow
@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_bc_student_is_bitwise_the_same_alone_and_in_a_population(env_id):
    from lottery_fast.train.bc import BCConfig, BCTrainer

    expert = PPOConfig(total_steps=2048, num_evals=1, eval_episodes=2)
    if env_id == "Pendulum-v1":
        expert = PPOConfig.continuous_control(total_steps=2048, num_evals=1, eval_episodes=2)
    trainer = BCTrainer(env_id, BCConfig(expert=expert, dataset_steps=1024, steps=40, batch_size=64, num_evals=2,
                                         eval_episodes=2, max_grad_norm=0.5))
    seeds = [3, 4, 5, 6]
    models = _pruned_models(trainer, seeds)
    originals = [copy.deepcopy(m) for m in models]
    together = trainer.train_population(models, seeds, rewind_step=7)
    for p in (0, 3):
        alone_model = copy.deepcopy(originals[p])
        alone = trainer.train_population([alone_model], [seeds[p]], rewind_step=7)[0]
        assert _result_key(alone) == _result_key(together[p])
        assert _equal_states(alone_model.state_dict(), models[p].state_dict())
        assert _equal_states(alone[1], together[p][1])
    # against the per-agent trainer: same data and objective, so a close (not bitwise) loss
    single = copy.deepcopy(originals[0])
    r, _ = trainer.train(single, seeds[0])
    assert abs(r.extra["loss"] - together[0][0].extra["loss"]) < 0.5 * abs(r.extra["loss"]) + 1e-3
