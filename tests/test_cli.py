"""Subprocess smoke tests of the command line on tiny budgets (CleanRL-style)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import lottery_fast

# the folder this test imported lottery_fast from (site-packages when installed, the checkout in development)
PACKAGE_ROOT = str(Path(lottery_fast.__file__).resolve().parents[1])


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in (PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", PYTHONPATH=path)
    return subprocess.run([sys.executable, "-m", "lottery_fast.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_imp_digits_then_plot(tmp_path):
    out = tmp_path / "run"
    r = run_cli("imp", "--paradigm", "digits", "--iterations", "2", "--conditions", "mask/weights,random/reinit",
                "--set", "digits.epochs=2", "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "done" in r.stderr and "density" in r.stderr  # progress was shown
    with open(out / "digits" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(row["condition"], row["iteration"]) for row in rows] == [
        ("mask/weights", "0"), ("mask/weights", "1"), ("random/reinit", "1"),
        ("mask/weights", "2"), ("random/reinit", "2")]
    # re-running the same command resumes: nothing left to train, same results
    again = run_cli("imp", "--paradigm", "digits", "--iterations", "2", "--conditions", "mask/weights,random/reinit",
                    "--set", "digits.epochs=2", "--out", str(out), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stderr
    p = run_cli("plot", str(out), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    png = out / "performance.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_config_file_and_set(tmp_path):
    cfg = tmp_path / "exp.toml"
    cfg.write_text('paradigm = "digits"\n[imp]\niterations = 1\nconditions = "ticket"\n[digits]\nepochs = 1\n')
    out = tmp_path / "r"
    r = run_cli("imp", "--config", str(cfg), "--set", "digits.hidden=[16]", "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    config = json.loads((out / "digits" / "config.json").read_text())
    config = config["experiment"]
    assert config["imp"]["iterations"] == 1
    assert config["trainer"]["config"]["hidden"] == [16] and config["trainer"]["config"]["epochs"] == 1


@pytest.mark.parametrize("args, message", [
    (["--env", "NoSuchEnv-v9", "--paradigm", "ppo"], "NoSuchEnv-v9"),
    (["--paradigm", "digits", "--rate", "1.5"], "rate"),
    (["--paradigm", "digits", "--rate", "-0.1"], "rate"),
    (["--paradigm", "tetris"], "paradigm"),
    (["--paradigm", "digits", "--conditions", "mask/weights,lucky"], "lucky"),
    (["--paradigm", "digits", "--set", "digits.no_such_option=1"], "no_such_option"),
])
@pytest.mark.slow
def test_bad_input_fails_before_training(tmp_path, args, message):
    out = tmp_path / "never"
    r = run_cli("imp", *args, "--out", str(out), cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "error" in r.stderr and message in r.stderr
    assert not out.exists()  # nothing written


@pytest.mark.slow
def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    r = run_cli("imp", "--paradigm", "digits", "--out", str(blocker / "run"), cwd=tmp_path)
    assert r.returncode == 2
    assert "not writable" in r.stderr


@pytest.mark.parametrize("assignment, message", [
    ("digits.hidden=16", "expected a list"),
    ("digits.epochs=abc", "expected int"),
])
@pytest.mark.slow
def test_typed_overrides(tmp_path, assignment, message):
    r = run_cli("imp", "--paradigm", "digits", "--set", assignment, "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr, r.stderr


@pytest.mark.slow
def test_imp_ppo_and_bc_tiny(tmp_path):
    """The README's main command, on a budget of seconds: both paradigms, resumable folders, a plot."""
    out = tmp_path / "both"
    r = run_cli("imp", "--env", "CartPole-v1", "--paradigm", "both", "--preset", "quick", "--iterations", "1",
                "--conditions", "mask/weights,random/reinit", "--set", "ppo.total_steps=4096",
                "--set", "bc.expert.total_steps=4096", "--set", "bc.steps=50", "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for paradigm in ("ppo", "bc"):
        with open(out / paradigm / "results.csv") as f:
            rows = list(csv.DictReader(f))
        assert [row["condition"] for row in rows] == ["mask/weights", "mask/weights", "random/reinit"]
        # the actor head is pruned at half the rate, the critic not at all
        assert float(rows[1]["density/actor.head"]) > float(rows[1]["density/actor.body.0"])
        assert not any(k.startswith("density/critic") for k in rows[0])
    p = run_cli("plot", str(out), cwd=tmp_path)
    assert p.returncode == 0, p.stderr


def _rows_without_timing(path: Path):
    """Rows without the columns that depend on how the work was laid out (time, population size)."""
    with open(path) as f:
        return [{k: v for k, v in row.items() if "seconds" not in k and "per_s" not in k and "population_size" not in k}
                for row in csv.DictReader(f)]


@pytest.mark.slow
def test_imp_jobs_runs_seeds_in_parallel_with_the_same_results(tmp_path):
    common = ("imp", "--env", "CartPole-v1", "--paradigm", "both", "--preset", "quick", "--iterations", "1",
              "--seeds", "2", "--conditions", "mask/weights,random/reinit", "--set", "ppo.total_steps=2048",
              "--set", "bc.expert.total_steps=2048", "--set", "bc.steps=20")
    one = run_cli(*common, "--out", str(tmp_path / "one"), cwd=tmp_path)
    two = run_cli(*common, "--jobs", "2", "--out", str(tmp_path / "two"), cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert "[ppo seed 1]" in two.stderr and "[bc seed 0]" in two.stderr  # the workers' progress
    for paradigm in ("ppo", "bc"):
        rows = _rows_without_timing(tmp_path / "two" / paradigm / "results.csv")
        assert [(r["seed"], r["iteration"]) for r in rows] == [("0", "0"), ("0", "1"), ("0", "1"),
                                                                ("1", "0"), ("1", "1"), ("1", "1")]
        assert rows == _rows_without_timing(tmp_path / "one" / paradigm / "results.csv")
    # the BC expert is a file of the run: trained once, loaded by both seeds and on resume
    assert (tmp_path / "two" / "bc" / "expert.pt").is_file()


@pytest.mark.slow
def test_imp_digits_then_masks(tmp_path):
    out = tmp_path / "run"
    r = run_cli("imp", "--paradigm", "digits", "--iterations", "2", "--conditions", "ticket", "--rate", "0.5",
                "--set", "digits.epochs=1", "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = run_cli("masks", str(out), "--out", str(tmp_path / "masks"), cwd=tmp_path)
    assert m.returncode == 0, m.stderr
    assert "layer fc1" in m.stdout and "pixels fully pruned at iter 2" in m.stdout
    with open(tmp_path / "masks" / "input_channels_seed0.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == [0, 1, 2]
    kept = [float(r["surviving_fraction"]) for r in rows]
    assert kept[0] == 1.0 and kept[2] < kept[1] < 1.0  # the input layer loses weights each round
    for name in ("input_pixels_seed0.png", "input_masks_seed0.png"):
        assert (tmp_path / "masks" / name).read_bytes()[:4] == b"\x89PNG"
    bad = run_cli("masks", str(out), "--layer", "no.such.layer", cwd=tmp_path)
    assert bad.returncode == 2 and "no.such.layer" in bad.stderr


@pytest.mark.slow
def test_ppo_with_distractors_then_masks(tmp_path):
    out = tmp_path / "cp"
    r = run_cli("imp", "--env", "CartPole-v1", "--paradigm", "ppo", "--iterations", "1", "--conditions", "ticket",
                "--rate", "0.5", "--set", 'ppo.distractors=["gaussian","copy:2"]', "--set", "ppo.total_steps=2048",
                "--set", "ppo.num_evals=1", "--set", "ppo.eval_episodes=2", "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    config = json.loads((out / "ppo" / "config.json").read_text())["experiment"]["trainer"]
    assert config["env_id"] == "CartPole-v1" and config["config"]["distractors"] == ["gaussian", "copy:2"]
    m = run_cli("masks", str(out), cwd=tmp_path)  # the parent folder: finds ppo/
    assert m.returncode == 0, m.stderr
    assert "layer actor.body.0" in m.stdout
    for name in ("pole angle", "gaussian noise 0", "copy of pole angle"):
        assert name in m.stdout
    with open(out / "ppo" / "input_dims_seed0.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["dim_name"] for r in rows if r["iteration"] == "0"] == [
        "cart position", "cart velocity", "pole angle", "pole angular velocity", "gaussian noise 0",
        "copy of pole angle"]
    assert all(r["surviving_fraction"] == "1.0" for r in rows if r["iteration"] == "0")
    assert (out / "ppo" / "input_dims_seed0.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_imp_dqn_with_distractors(tmp_path):
    out = tmp_path / "dqn"
    r = run_cli("imp", "--env", "CartPole-v1", "--paradigm", "dqn", "--iterations", "1", "--conditions", "ticket",
                "--set", "dqn.total_steps=400", "--set", "dqn.learning_starts=100", "--set", "dqn.eval_episodes=2",
                "--set", 'dqn.distractors=["constant:1"]', "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with open(out / "dqn" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["iteration"] for row in rows] == ["0", "1"] and float(rows[1]["density"]) < 1.0
    config = json.loads((out / "dqn" / "config.json").read_text())["experiment"]["trainer"]
    assert config["env_id"] == "CartPole-v1" and config["config"]["total_steps"] == 400
    m = run_cli("masks", str(out), cwd=tmp_path)
    assert m.returncode == 0 and "constant 1" in m.stdout, m.stderr
