"""IMP engine on the digits trainer: densities, results table, rewinding, conditions, determinism."""
from __future__ import annotations

import math

import pytest
import torch

from lottery_fast.imp import (IMPConfig, IMPEvent, derive_seed, format_event, load_results, load_rewind,
                              load_unit, results_arrays, run_imp)
from lottery_fast.prune import CONDITIONS, PruneConfig
from lottery_fast.train import DigitsConfig, DigitsTrainer

SMALL = DigitsConfig(hidden=(24, 16), epochs=2, batch_size=128, lr=1e-2)
ITERS = 2
LAYERS = ("fc1", "fc2", "out")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("imp")
    events = []
    res = run_imp(DigitsTrainer(SMALL), IMPConfig(iterations=ITERS, seeds=(3,)), out, on_progress=events.append)
    return out, res, events


def _total_weights():
    return sum(p.numel() for n, p in DigitsTrainer(SMALL).build_model(0).named_parameters() if n.endswith("weight"))


def test_density_follows_point_eight_power(run):
    _, res, _ = run
    total = _total_weights()
    for row in res.rows:
        # each round rounds its count to a whole weight: allow one weight per round
        assert abs(row["density"] - 0.8 ** row["iteration"]) <= (row["iteration"] + 0.5) / total
    masks = load_unit(run[0], 3, ITERS)["masks"]
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept / total == pytest.approx(0.8 ** ITERS, abs=ITERS / total)


def test_results_table_shape_and_columns(run):
    out, res, _ = run
    rows = load_results(out)
    assert rows == res.rows
    assert len(rows) == 1 + ITERS * len(CONDITIONS)
    assert list(rows[0]) == ["seed", "condition", "iteration", "density", "metric", "best_metric", "steps",
                             "train_seconds", *(f"density/{n}" for n in LAYERS), "extra/train_loss"]
    assert [(r["iteration"], r["condition"]) for r in rows] == [(0, "mask/weights")] + [
        (i, c) for i in range(1, ITERS + 1) for c in CONDITIONS]
    steps = DigitsTrainer(SMALL).total_steps()
    for r in rows:
        assert r["seed"] == 3 and r["steps"] == steps
        assert 0.0 <= r["metric"] <= r["best_metric"] <= 1.0
        assert r["train_seconds"] > 0 and math.isfinite(r["extra/train_loss"])
    assert rows[0]["metric"] > 0.5  # the dense net learned something in two epochs
    cols = results_arrays(rows)
    assert cols["iteration"].dtype.kind == "i" and cols["condition"].dtype == object
    assert cols["density"].shape == (len(rows),)
    assert (res.column("density") == cols["density"]).all()
    # conditions derived from one round's IMP mask keep its density; the mask-preserving ones its layer ratios
    for i in range(1, ITERS + 1):
        same = [r for r in rows if r["iteration"] == i]
        assert len({r["density"] for r in same}) == 1
        for c in ("mask/permuted", "permuted/permuted"):
            r = next(r for r in same if r["condition"] == c)
            assert all(r[f"density/{n}"] == same[0][f"density/{n}"] for n in LAYERS)


def test_rewind_restores_unpruned_weights_to_init_exactly(run):
    out = run[0]
    init = DigitsTrainer(SMALL).build_model(3).state_dict()
    assert all(torch.equal(init[k], v) for k, v in load_rewind(out, 3).items())
    for it in range(ITERS + 1):
        unit = load_unit(out, 3, it)
        for n in LAYERS:
            m = unit["masks"][n]
            assert torch.equal(unit["start"][f"{n}.weight"], init[f"{n}.weight"] * m)
            assert torch.equal(unit["start"][f"{n}.bias"], init[f"{n}.bias"])  # biases never pruned
            assert torch.all(unit["final"][f"{n}.weight"][~m] == 0)  # pruned weights stayed 0 in training
        if it:
            prev = load_unit(out, 3, it - 1)["masks"]
            assert all(not torch.any(unit["masks"][n] & ~prev[n]) for n in LAYERS)  # masks only shrink


def test_next_mask_is_magnitude_of_trained_ticket(run):
    out = run[0]
    prev, now = load_unit(out, 3, 0), load_unit(out, 3, 1)
    mags = torch.cat([prev["final"][f"{n}.weight"].abs().flatten() for n in LAYERS])
    kept = torch.cat([now["masks"][n].flatten() for n in LAYERS])
    assert mags[kept].min() >= mags[~kept].max()  # global: every survivor outweighs every pruned weight


def test_derived_conditions(run):
    out = run[0]
    init = DigitsTrainer(SMALL).build_model(3).state_dict()
    ticket = load_unit(out, 3, ITERS)["masks"]
    mp = load_unit(out, 3, ITERS, "mask/permuted")
    pp = load_unit(out, 3, ITERS, "permuted/permuted")
    rr = load_unit(out, 3, ITERS, "random/reinit")
    assert "final" not in mp  # derived conditions keep their final weights only on request
    for n in LAYERS:
        w0, m = init[f"{n}.weight"], ticket[n]
        assert torch.equal(mp["masks"][n], m)
        assert torch.equal(mp["start"][f"{n}.weight"][m].sort().values, w0[m].sort().values)
        assert not torch.equal(mp["start"][f"{n}.weight"], w0 * m)
        assert int(pp["masks"][n].sum()) == int(m.sum()) and not torch.equal(pp["masks"][n], m)
        pm = pp["masks"][n]
        assert torch.equal(pp["start"][f"{n}.weight"][pm].sort().values, w0[m].sort().values)
        assert torch.equal(rr["start"][f"{n}.bias"], init[f"{n}.bias"])
    assert sum(int(rr["masks"][n].sum()) for n in LAYERS) == sum(int(ticket[n].sum()) for n in LAYERS)
    kept = [rr["start"][f"{n}.weight"][rr["masks"][n]] for n in LAYERS]
    assert not any(torch.isin(k, init[f"{n}.weight"]).all() for k, n in zip(kept, LAYERS))  # fresh values


def test_progress_events(run):
    _, res, events = run
    assert all(isinstance(e, IMPEvent) for e in events)
    assert events[0].kind == "start" and events[-1].kind == "done"
    done = [e for e in events if e.kind == "unit_done"]
    assert [e.units_done for e in done] == list(range(1, len(res.rows) + 1))
    assert all(e.units_total == len(res.rows) for e in events)
    assert [(e.iteration, e.condition, e.metric) for e in done] == [
        (r["iteration"], r["condition"], r["metric"]) for r in res.rows]
    assert done[-1].eta_s == 0.0 and all(e.eta_s is not None and e.eta_s >= 0 for e in done)
    train = [e for e in events if e.kind == "train"]
    assert len(train) == len(res.rows) * SMALL.epochs and "loss" in train[0].info
    assert "mask/permuted" in format_event(done[2]) and format_event(train[0]) is None


def test_training_seeds_come_from_seed_condition_iteration(tmp_path):
    seen = []

    class Spy(DigitsTrainer):
        def train(self, model, seed, rewind_step=None, on_progress=None):
            seen.append(seed)
            return super().train(model, seed, rewind_step, on_progress)

    run_imp(Spy(SMALL), IMPConfig(iterations=1, seeds=(5,)), tmp_path)
    assert seen == [derive_seed(5, "mask/weights", 0, "train")] + [
        derive_seed(5, c, 1, "train") for c in CONDITIONS]
    assert len(set(seen)) == len(seen)


def test_determinism_two_runs_identical(run, tmp_path):
    res = run_imp(DigitsTrainer(SMALL), IMPConfig(iterations=ITERS, seeds=(3,)), tmp_path)
    strip = [{k: v for k, v in r.items() if k != "train_seconds"} for r in res.rows]
    assert strip == [{k: v for k, v in r.items() if k != "train_seconds"} for r in run[1].rows]
    a, b = load_unit(run[0], 3, ITERS, "random/reinit"), load_unit(tmp_path, 3, ITERS, "random/reinit")
    assert all(torch.equal(a["start"][k], b["start"][k]) for k in a["start"])


def test_late_rewinding_returns_step_k_weights(tmp_path):
    k = 5
    trainer = DigitsTrainer(SMALL)
    run_imp(trainer, IMPConfig(iterations=1, rewind_step=k, conditions=("mask/weights", "mask/permuted")), tmp_path)
    rewind = load_rewind(tmp_path, 0)
    # the step-k state of the dense round, reproduced by stopping that same training after k steps
    model = trainer.build_model(0)
    DigitsTrainer(DigitsConfig(**{**SMALL.__dict__, "max_steps": k})).train(
        model, derive_seed(0, "mask/weights", 0, "train"))
    init = trainer.build_model(0).state_dict()
    assert all(torch.equal(rewind[n], v) for n, v in model.state_dict().items())
    assert not torch.equal(rewind["fc1.weight"], init["fc1.weight"])
    assert torch.equal(load_unit(tmp_path, 0, 0)["start"]["fc1.weight"], init["fc1.weight"])  # round 0 from init
    unit = load_unit(tmp_path, 0, 1)
    for n in LAYERS:
        assert torch.equal(unit["start"][f"{n}.weight"], rewind[f"{n}.weight"] * unit["masks"][n])
        assert torch.equal(unit["start"][f"{n}.bias"], rewind[f"{n}.bias"])
    mp = load_unit(tmp_path, 0, 1, "mask/permuted")
    m = unit["masks"]["fc1"]
    assert torch.equal(mp["start"]["fc1.weight"][m].sort().values, rewind["fc1.weight"][m].sort().values)


def test_exclude_and_layerwise(tmp_path):
    cfg = IMPConfig(iterations=1, conditions=("mask/weights",), exclude=("out",),
                    prune=PruneConfig(rate=0.5, scope="layerwise"))
    res = run_imp(DigitsTrainer(SMALL), cfg, tmp_path)
    assert "density/out" not in res.rows[0]
    assert res.rows[1]["density/fc1"] == pytest.approx(0.5) and res.rows[1]["density/fc2"] == pytest.approx(0.5)
    final = load_unit(tmp_path, 0, 1)["final"]
    assert torch.all(final["out.weight"] != 0)  # never pruned


@pytest.mark.parametrize("kwargs, match", [
    (dict(iterations=-1), "iterations"),
    (dict(seeds=()), "seeds"),
    (dict(seeds=(1, 1)), "duplicates"),
    (dict(conditions=("mask/permuted",)), "mask/weights"),
    (dict(conditions=("mask/weights", "nope")), "unknown"),
    (dict(rewind_step=-2), "rewind_step"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        IMPConfig(**kwargs)


def test_rejects_non_trainer(tmp_path):
    with pytest.raises(TypeError, match="Trainer protocol"):
        run_imp(object(), IMPConfig(iterations=0), tmp_path)


def test_init_rescaling_applies_to_the_init_and_to_fresh_weights(tmp_path):
    trainer = DigitsTrainer(SMALL)  # fan-ins 64, 24, 16: fan_in rescaling to the widest gives these factors
    scale = {"fc1": 1.0, "fc2": (24 / 64) ** 0.5, "out": (16 / 64) ** 0.5}
    run_imp(trainer, IMPConfig(iterations=1, rescale="fan_in", conditions=("mask/weights", "random/reinit")), tmp_path)
    init = trainer.build_model(0).state_dict()
    fresh = trainer.build_model(derive_seed(0, "random/reinit", 1, "init")).state_dict()
    start = load_unit(tmp_path, 0, 0)["start"]
    rr = load_unit(tmp_path, 0, 1, "random/reinit")
    for n in LAYERS:
        w = f"{n}.weight"
        assert torch.allclose(start[w], init[w] * scale[n], rtol=1e-6, atol=0)
        assert torch.equal(start[f"{n}.bias"], init[f"{n}.bias"])
        m = rr["masks"][n]
        assert torch.allclose(rr["start"][w][m], (fresh[w] * scale[n])[m], rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="rescale"):
        IMPConfig(rescale="bogus")


def test_output_layers_pruned_at_reduced_rate(tmp_path):
    trainer = DigitsTrainer(SMALL)
    trainer.output_layers = ("out",)  # as PPO/BC declare their actor head
    cfg = IMPConfig(iterations=2, seeds=(0,), conditions=("mask/weights",), prune=PruneConfig(rate=0.4))
    rows = run_imp(trainer, cfg, tmp_path / "half").rows
    n_out = trainer.build_model(0).out.weight.numel()
    kept = n_out
    for row in rows[1:]:
        kept -= math.floor(0.2 * kept + 0.5)  # rate 0.4 * factor 0.5, rounded half up, of what remains
        assert row["density/out"] == pytest.approx(kept / n_out)
    # the factor can be switched off: the head then joins the global ranking
    plain = run_imp(trainer, IMPConfig(iterations=1, seeds=(0,), conditions=("mask/weights",),
                                       prune=PruneConfig(rate=0.4), output_rate_factor=None), tmp_path / "plain").rows
    assert plain[1]["density"] == pytest.approx(0.6, abs=1e-3)


def test_random_reinit_keeps_the_protected_heads_count(tmp_path):
    trainer = DigitsTrainer(SMALL)
    trainer.output_layers = ("out",)
    conditions = ("mask/weights", "random/reinit")
    for pool, head_kept_equal in (("groups", True), ("all", False)):
        cfg = IMPConfig(iterations=3, seeds=(0,), conditions=conditions, prune=PruneConfig(rate=0.6),
                        random_pool=pool)
        rows = run_imp(trainer, cfg, tmp_path / pool).rows
        ticket = {r["iteration"]: r for r in rows if r["condition"] == "mask/weights"}
        random = [r for r in rows if r["condition"] == "random/reinit"]
        same = [r["density/out"] == ticket[r["iteration"]]["density/out"] for r in random]
        assert all(same) if head_kept_equal else not all(same)
        for r in random:
            assert r["density"] == pytest.approx(ticket[r["iteration"]]["density"])


def test_excluded_output_layer_gets_no_rate():
    cfg = IMPConfig(prune=PruneConfig(rate=0.2)).resolved(("critic*",), ("actor.head", "critic.head"))
    assert cfg.prune.layer_rates == (("actor.head", pytest.approx(0.1)),)
    assert cfg.prune.exclude == ("critic*",)


def test_loading_units_that_never_ran(run, tmp_path):
    out = run[0]
    with pytest.raises(FileNotFoundError, match="has not finished"):
        load_unit(out, 3, ITERS + 5)
    with pytest.raises(FileNotFoundError, match="has not finished round 0"):
        load_rewind(out, 99)
