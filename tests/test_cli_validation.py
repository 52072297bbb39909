"""Bad input to the command line: one clear line (exit 2) naming the option or path, before any file
is written; advice that keeps finished work; failures of the environment (a full disk) as one line,
bugs with their traceback (issue #19, items 2, 5, 6, 7 and 13)."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch

from lottery_fast import cli
from lottery_fast.imp import IMPConfig, run_imp
from lottery_fast.report import ReportConfig, run_report
from lottery_fast.train.digits import DigitsConfig, DigitsTrainer

#: a digits run of a few seconds: the dense round and one pruned round of the ticket
DIGITS = ("imp", "--paradigm", "digits", "--iterations", "1", "--conditions", "ticket", "--set", "digits.epochs=1")
#: PPO on CartPole for a few seconds
TINY_PPO = ("--set", "ppo.total_steps=1024", "--set", "ppo.num_evals=1", "--set", "ppo.eval_episodes=2")


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    # cli.main sets torch's thread count for the whole process
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def main(capsys, *argv: str):
    """``cli.main(argv)``: (exit code, stderr)."""
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def assert_one_line_error(err: str, *names: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("lottery-fast: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for name in names:
        assert name in lines[0], (name, lines[0])


# -- item 2: unknown sections and keys ---------------------------------------------------------
@pytest.mark.parametrize("toml, name", [
    ('[impp]\nrate = 0.9\n', "'impp'"),
    ('seeds = 3\n', "'seeds'"),  # an [imp] option at the top level
    ('[imp]\nprune = {rate = 0.9}\n', "'prune'"),  # IMPConfig's field, not an [imp] option
])
def test_unknown_config_file_sections_and_keys_are_errors(tmp_path, capsys, toml, name):
    cfg = tmp_path / "exp.toml"
    cfg.write_text('paradigm = "digits"\n' + toml)
    out = tmp_path / "never"
    code, err = main(capsys, "imp", "--config", str(cfg), "--out", str(out))
    assert code == 2
    assert_one_line_error(err, name)
    assert "valid" in err and ("[imp]" in err or "'rate'" in err)  # the valid ones are listed
    assert not out.exists()


def test_unknown_set_section_is_an_error(tmp_path, capsys):
    out = tmp_path / "never"
    code, err = main(capsys, *DIGITS, "--set", "foo.bar=5", "--out", str(out))
    assert code == 2
    assert_one_line_error(err, "--set 'foo.bar=5'", "'foo'", "[imp]", "[digits]")
    assert not out.exists()


def test_report_overrides_of_unknown_sections_are_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown section 'foo'.*\[imp\], \[ppo\], \[bc\]"):
        ReportConfig(out=tmp_path, overrides=("foo.bar=5",))
    with pytest.raises(ValueError, match="ppo is a section"):
        ReportConfig(out=tmp_path, overrides=("ppo=5",))


# -- item 5: clear one-line errors --------------------------------------------------------------
@pytest.mark.parametrize("args, names", [
    (("--set", "digits=5"), ("--set 'digits=5'", "section")),
    (("--set", "imp.seeds=abc"), ("imp.seeds", "'abc'")),
    (("--set", "imp.seeds=1.7"), ("imp.seeds", "1.7")),
    (("--set", "imp.layer_rates=5"), ("imp.layer_rates",)),
    (("--set", 'imp.layer_rates=[["fc1", "x"]]'), ("imp.layer_rates[0][1]", "'x'")),
    (("--layer-rate", "fc1=abc"), ("--layer-rate 'fc1=abc'", "'abc'")),
    (("--paradigm", "ppo", "--env", "CartPole-v1", "--set", "ppo.network=5"), ("ppo.network",)),
    (("--paradigm", "bc", "--env", "CartPole-v1", "--set", "bc.expert=3"), ("bc.expert",)),
])
def test_bad_values_give_one_line_naming_the_option(tmp_path, capsys, args, names):
    out = tmp_path / "never"
    code, err = main(capsys, *DIGITS, *args, "--out", str(out))
    assert code == 2
    assert_one_line_error(err, *names)
    assert not out.exists()


@pytest.mark.slow
def test_plot_out_in_an_unwritable_place(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(capsys, *DIGITS, "--out", str(run))[0] == 0
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, err = main(capsys, "plot", str(run), "--out", str(blocker / "fig.png"))
    assert code == 2
    assert_one_line_error(err, "--out", str(blocker))


def _write_to_dev_full(real_save):
    def save(obj, f, *args, **kwargs):
        return real_save(obj, "/dev/full", *args, **kwargs)  # a real torch.save on a device that is always full
    return save


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_disk_during_a_checkpoint_save(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(torch, "save", _write_to_dev_full(torch.save))
    code, err = main(capsys, *DIGITS, "--out", str(out))
    assert code == 2
    assert_one_line_error(err, str(out), "disk full", "rerun the same command")
    monkeypatch.undo()
    assert main(capsys, *DIGITS, "--out", str(out))[0] == 0  # and the rerun resumes


def test_full_disk_as_an_oserror(tmp_path, capsys, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    out = tmp_path / "run"
    monkeypatch.setattr(os, "fsync", full)  # every run file is made durable before it is published
    code, err = main(capsys, *DIGITS, "--out", str(out))
    assert code == 2
    assert_one_line_error(err, str(out), "No space left on device", "disk full")


@pytest.mark.parametrize("env", ["CartPole-v1", "lottery_fast/PatrolGridDistractors-v0"])
def test_env_kwargs_an_env_does_not_take_are_bad_input(tmp_path, capsys, env):
    # env creators say so with a TypeError, which the CLI no longer takes for bad input in general
    out = tmp_path / "never"
    code, err = main(capsys, "imp", "--env", env, "--paradigm", "ppo", "--set", 'ppo.env_kwargs={"nope": 1}',
                     "--out", str(out))
    assert code == 2
    assert_one_line_error(err, "env_kwargs", "nope")
    assert not out.exists()


def test_a_bug_keeps_its_traceback(tmp_path, capsys, monkeypatch):
    import lottery_fast.experiments as experiments

    def buggy(*args, **kwargs):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(experiments, "run_experiments", buggy)
    with pytest.raises(TypeError, match="unsupported operand"):
        cli.main([*DIGITS, "--out", str(tmp_path / "run")])


# -- item 6: everything checked before the first file ------------------------------------------
@pytest.mark.parametrize("bad, names", [
    (("--layer-rate", "nomatch=0.1"), ("'nomatch'", "fc1")),
    (("--exclude", "nomatch"), ("'nomatch'", "fc1")),
    (("--exclude", "*"), ("no prunable",)),
    (("--rewind-step", "100000"), ("rewind_step", "100000")),
])
def test_checks_against_the_model_run_before_anything_is_written(tmp_path, capsys, bad, names):
    out = tmp_path / "run"
    code, err = main(capsys, *DIGITS, *bad, "--out", str(out))
    assert code == 2
    assert_one_line_error(err, *names)
    assert not out.exists()
    # so the corrected command runs in that folder (it would refuse a folder the bad one had started)
    assert main(capsys, *DIGITS, "--out", str(out))[0] == 0


def test_run_imp_checks_before_it_writes(tmp_path):
    trainer = DigitsTrainer(DigitsConfig(epochs=1))
    with pytest.raises(ValueError, match="nomatch"):
        run_imp(trainer, IMPConfig(iterations=1, conditions=("mask/weights",), exclude=("nomatch",)), tmp_path / "r")
    with pytest.raises(ValueError, match="rewind_step"):
        run_imp(trainer, IMPConfig(iterations=1, conditions=("mask/weights",), rewind_step=10 ** 6), tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_preflight_checks_the_config_run_imp_runs():
    # run_imp resolves the config and preflight resolves it again: that must change nothing
    from lottery_fast.imp.preflight import resolved_for
    from lottery_fast.train.ppo import PPOTrainer

    from lottery_fast.prune import PruneConfig

    trainer = PPOTrainer("CartPole-v1")
    cfg = resolved_for(trainer, IMPConfig(prune=PruneConfig(rate=0.4, layer_rates=(("actor.body.*", 0.1),))))
    assert cfg.prune.layer_rates == (("actor.body.*", 0.1), ("actor.head", 0.2)) and cfg.exclude == ("critic*",)
    assert resolved_for(trainer, cfg) == cfg


def test_report_checks_every_experiment_before_the_first_trains(tmp_path):
    # the PPO run comes first in the plan; the bad BC option must stop the report before it trains
    out = tmp_path / "rep"
    tiny = ("imp.iterations=1", "ppo.total_steps=1024", "ppo.num_evals=1", "bc.expert.total_steps=1024",
            "bc.steps=20", "bc.dataset_steps=256", "bc.no_such_option=1")
    cfg = ReportConfig(out=out, seeds=1, envs=("CartPole-v1",), parts=("performance",), overrides=tiny)
    with pytest.raises(ValueError, match="no_such_option"):
        run_report(cfg, log=lambda line: None)
    assert not out.exists()


# -- item 7: advice that keeps finished work -----------------------------------------------------
@pytest.mark.parametrize("command", ["plot", "masks"])
def test_a_folder_without_config_json_is_not_told_to_start_over(tmp_path, capsys, command):
    run = tmp_path / "run"
    assert main(capsys, *DIGITS, "--out", str(run))[0] == 0
    (run / "digits" / "config.json").rename(tmp_path / "config.json.moved")
    code, err = main(capsys, command, str(run / "digits"))
    assert code == 2
    assert_one_line_error(err, str(run / "digits" / "config.json"), "missing")
    assert "overwrite" not in err and "start over" not in err


def test_cli_names_its_flag_and_what_it_deletes(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(capsys, *DIGITS, "--out", str(run))[0] == 0
    code, err = main(capsys, *DIGITS, "--rate", "0.5", "--out", str(run))  # another experiment
    assert code == 2
    assert_one_line_error(err, "--overwrite", "deletes every finished unit")
    assert "overwrite=True" not in err


# -- item 13 ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_threads_reach_the_trainers(tmp_path, capsys):
    out = tmp_path / "both"
    code, err = main(capsys, "imp", "--env", "CartPole-v1", "--paradigm", "both", "--iterations", "0",
                     "--threads", "2", *TINY_PPO, "--set", "bc.expert.total_steps=1024", "--set", "bc.steps=10",
                     "--set", "bc.num_evals=1", "--set", "bc.eval_episodes=2", "--set", "bc.dataset_steps=256",
                     "--set", "bc.num_threads=3", "--out", str(out))
    assert code == 0, err
    ppo = json.loads((out / "ppo" / "config.json").read_text())["experiment"]["trainer"]["config"]
    bc = json.loads((out / "bc" / "config.json").read_text())["experiment"]["trainer"]["config"]
    assert ppo["num_threads"] == 2 and bc["expert"]["num_threads"] == 2
    assert bc["num_threads"] == 3  # --set wins over the flag


@pytest.mark.slow
def test_plot_format_follows_the_suffix(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(capsys, *DIGITS, "--out", str(run))[0] == 0
    assert main(capsys, "plot", str(run), "--out", str(tmp_path / "fig.pdf"))[0] == 0
    assert (tmp_path / "fig.pdf").read_bytes()[:5] == b"%PDF-"
    code, err = main(capsys, "plot", str(run), "--out", str(tmp_path / "fig.pgn"))
    assert code == 2
    assert_one_line_error(err, "--out", "'.pgn'", ".png")
    assert not (tmp_path / "fig.pgn").exists()


@pytest.mark.parametrize("argv, names", [
    # --seeds 0 is refused too, later: so that the old behaviour (running every part, writing to
    # runs/report-quick) fails at once instead of running a report
    (("report", "--parts", "", "--seeds", "0"), ("--parts", "performance")),
    (("report", "--out", "", "--seeds", "0"), ("--out",)),
    ((*DIGITS, "--out", ""), ("--out",)),
    (("plot", "somewhere", "--out", ""), ("--out",)),
])
def test_empty_values_are_errors(tmp_path, capsys, monkeypatch, argv, names):
    monkeypatch.chdir(tmp_path)
    code, err = main(capsys, *argv)
    assert code == 2
    assert_one_line_error(err, *names)
    assert list(Path(tmp_path).iterdir()) == []  # nothing written in the working folder either
