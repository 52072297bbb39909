"""Retraining finished IMP units under another trainer config (claim 1's capacity control)."""
from __future__ import annotations

import pytest
import torch

from lottery_fast.imp import ConfigMismatchError, IMPConfig, load_results, run_imp
from lottery_fast.imp.retrain import load_retrain, retrain
from lottery_fast.train import DigitsConfig, DigitsTrainer

SMALL = DigitsConfig(hidden=(24, 16), epochs=2, batch_size=128, lr=1e-2)
LONGER = DigitsConfig(hidden=(24, 16), epochs=4, batch_size=128, lr=1e-2)
UNITS = [(0, 2, "mask/weights"), (0, 1, "random/reinit")]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def imp_run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("imp")
    run_imp(DigitsTrainer(SMALL), IMPConfig(iterations=2, seeds=(0,), conditions=("mask/weights", "random/reinit")), out)
    return out


def _key(row):
    return row["seed"], row["iteration"], row["condition"]


def test_same_config_reproduces_the_imp_results(imp_run, tmp_path):
    source = {_key(r): r for r in load_results(imp_run)}
    rows = retrain(imp_run, DigitsTrainer(SMALL), UNITS, tmp_path / "same")
    assert [_key(r) for r in rows] == UNITS
    for r in rows:
        for col in ("metric", "best_metric", "steps", "density", "density/fc1", "density/out"):
            assert r[col] == source[_key(r)][col], col


def test_a_larger_budget_trains_the_saved_ticket_and_resumes(imp_run, tmp_path):
    out = tmp_path / "longer"
    rows = retrain(imp_run, DigitsTrainer(LONGER), UNITS, out)
    source = {_key(r): r for r in load_results(imp_run)}
    assert all(r["steps"] == 2 * source[_key(r)]["steps"] for r in rows)
    assert all(r["density"] == source[_key(r)]["density"] for r in rows)
    assert load_retrain(out)["units"] == [list(u) for u in UNITS]
    before = (out / "units").stat().st_mtime_ns, sorted(p.stat().st_mtime_ns for p in (out / "units").iterdir())
    assert retrain(imp_run, DigitsTrainer(LONGER), UNITS, out) == rows  # resumed: nothing trained again
    assert sorted(p.stat().st_mtime_ns for p in (out / "units").iterdir()) == before[1]
    with pytest.raises(ConfigMismatchError, match="retrain.json"):
        retrain(imp_run, DigitsTrainer(SMALL), UNITS, out)


def test_units_must_exist(imp_run, tmp_path):
    with pytest.raises(ValueError, match="has not finished"):
        retrain(imp_run, DigitsTrainer(SMALL), [(0, 5, "mask/weights")], tmp_path / "x")
    with pytest.raises(ValueError, match="non-empty"):
        retrain(imp_run, DigitsTrainer(SMALL), [], tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_cli_retrains_named_units_with_a_changed_budget(imp_run, tmp_path, capsys):
    from lottery_fast import cli

    out = tmp_path / "cli"
    code = cli.main(["retrain", str(imp_run), "--units", "0:2,0:1:random/reinit", "--set", "digits.epochs=4",
                     "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    rows = load_results(out)
    assert [_key(r) for r in rows] == UNITS
    assert load_retrain(out)["trainer"]["config"]["epochs"] == 4
    # bad input: one line, nothing written
    assert cli.main(["retrain", str(imp_run), "--units", "zero", "--out", str(tmp_path / "bad")]) == 2
    assert cli.main(["retrain", str(imp_run), "--set", "ppo.total_steps=5", "--out", str(tmp_path / "bad")]) == 2
    assert "SEED:ITERATION" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_cli_break_units_come_from_the_per_seed_break_level(imp_run, tmp_path, capsys):
    from lottery_fast import cli

    # digits accuracy barely moves at these densities: nothing breaks at 0.5; at 1.5 the first pruned level breaks
    assert cli.main(["retrain", str(imp_run), "--threshold", "0.5", "--out", str(tmp_path / "none")]) == 2
    assert "no seed's ticket falls below" in capsys.readouterr().err
    assert cli.main(["retrain", str(imp_run), "--threshold", "1.5", "--out", str(tmp_path / "b")]) == 0
    assert [_key(r) for r in load_results(tmp_path / "b")] == [(0, 1, "mask/weights"), (0, 2, "mask/weights")]
