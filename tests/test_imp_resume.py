"""Crash safety of IMP run folders: resume after SIGKILL equals an uninterrupted run; corrupt or
mismatched folders fail loudly, naming the file; overwrite starts over."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import lottery_fast
from lottery_fast.imp import (ConfigMismatchError, CorruptCheckpointError, IMPConfig, RunFolderError,
                              load_results, run_imp)
from lottery_fast.train import DigitsConfig, DigitsTrainer

# the child imports the same lottery_fast as this process (the source tree, or an installed copy)
PACKAGE_PARENT = Path(lottery_fast.__file__).resolve().parents[1]
SMALL = DigitsConfig(hidden=(24, 16), epochs=2, batch_size=128, lr=1e-2)
CFG = IMPConfig(iterations=2, seeds=(0, 1))

# The child pauses inside the training of a unit (seed 0, round 1, mask/permuted) once it is
# told to, so the kill lands mid-unit, after round 1's ticket checkpoint, every time; with a
# population trainer it pauses inside round 1's population, after round 0 of both seeds.
CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from lottery_fast.imp import IMPConfig, run_imp
    from lottery_fast.train import DigitsConfig, DigitsTrainer
    out, marker = Path(sys.argv[1]), sys.argv[2]
    seeds = None if sys.argv[3] == "-" else [int(s) for s in sys.argv[3].split(",")]
    population = len(sys.argv) > 4 and sys.argv[4] == "population"

    class PopulationDigits(DigitsTrainer):
        # the engine's population path with a trainer that trains its members one by one
        def train_population(self, models, seeds, rewind_step=None, on_progress=None):
            return [self.train(m, s, rewind_step=rewind_step, on_progress=on_progress)
                    for m, s in zip(models, seeds)]

    def on_progress(ev):
        pause = ev.kind == "train" and ev.iteration == 1 and (
            ev.condition.startswith("population") if population
            else ev.seed == 0 and ev.condition == "mask/permuted")
        if marker != "-" and pause:
            Path(marker).write_text("paused")
            time.sleep(600)
    cls = PopulationDigits if population else DigitsTrainer
    run_imp(cls(DigitsConfig(hidden=(24, 16), epochs=2, batch_size=128, lr=1e-2)),
            IMPConfig(iterations=2, seeds=(0, 1)), out, on_progress=on_progress, seeds=seeds)
""")


pytestmark = pytest.mark.usefixtures("one_thread")


def _child(out: Path, marker: str, seeds: str = "-", mode: str = "single") -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(PACKAGE_PARENT), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", CHILD, str(out), marker, seeds, mode], env=env, cwd=str(out.parent),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _deterministic(rows):
    return [{k: v for k, v in r.items() if k != "train_seconds"} for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["single", "population"])
def test_resume_after_sigkill_equals_uninterrupted(tmp_path, mode):
    killed, marker = tmp_path / "killed", tmp_path / "paused"
    proc = _child(killed, str(marker), mode=mode)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "child never reached the pause point"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    partial = load_results(killed)
    # level-major: round 0 of both seeds, then (per-agent) seed 0's round-1 ticket
    assert [(r["seed"], r["iteration"], r["condition"]) for r in partial] == [
        (0, 0, "mask/weights")] + ([(0, 1, "mask/weights")] if mode == "single" else []) + [(1, 0, "mask/weights")]
    finished = {p: p.stat().st_mtime_ns for p in killed.rglob("*.json")}

    resumed = _child(killed, "-", mode=mode)
    output = resumed.communicate(timeout=300)[0].decode()
    assert resumed.returncode == 0, output
    reference = run_imp(DigitsTrainer(SMALL), CFG, tmp_path / "reference")

    rows = load_results(killed)
    assert len(rows) == 2 * (1 + 2 * 4)
    assert _deterministic(rows) == _deterministic(reference.rows)
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items())  # finished units were not redone
    assert not list(killed.rglob("*.tmp"))
    # rerunning a finished run trains nothing and changes nothing
    before = (killed / "results.csv").read_text()
    finished = {p: p.stat().st_mtime_ns for p in killed.rglob("*.json")}
    again = _child(killed, "-", mode=mode)
    output = again.communicate(timeout=300)[0].decode()
    assert again.returncode == 0, output
    assert (killed / "results.csv").read_text() == before
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items())


@pytest.mark.slow
def test_one_process_per_seed_equals_one_run(tmp_path):
    shared = tmp_path / "shared"
    procs = [_child(shared, "-", seeds) for seeds in ("0", "1")]  # at the same time, one folder
    for proc in procs:
        output = proc.communicate(timeout=300)[0].decode()
        assert proc.returncode == 0, output
    assert not (shared / "results.csv").exists()  # left to the call that runs every seed
    events = []
    rows = run_imp(DigitsTrainer(SMALL), CFG, shared, on_progress=events.append).rows
    assert not [e for e in events if e.kind == "unit_start"]
    reference = run_imp(DigitsTrainer(SMALL), CFG, tmp_path / "reference")
    assert _deterministic(rows) == _deterministic(reference.rows)
    assert _deterministic(load_results(shared)) == _deterministic(reference.rows)


def test_seed_subset_is_checked(tmp_path):
    with pytest.raises(ValueError, match=r"not in it: \[7\]"):
        run_imp(DigitsTrainer(SMALL), CFG, tmp_path, seeds=[7])
    with pytest.raises(ValueError, match="overwrite"):
        run_imp(DigitsTrainer(SMALL), CFG, tmp_path, seeds=[0], overwrite=True)
    assert not (tmp_path / "config.json").exists()


@pytest.fixture
def finished(tmp_path):
    out = tmp_path / "run"
    run_imp(DigitsTrainer(SMALL), IMPConfig(iterations=1, conditions=("mask/weights", "random/reinit")), out)
    return out


def test_corrupt_unit_checkpoint_names_the_file(finished):
    pt = finished / "seed_0" / "iter_001" / "mask-weights.pt"
    pt.write_bytes(pt.read_bytes()[:100])
    with pytest.raises(CorruptCheckpointError, match="mask-weights.pt"):
        run_imp(DigitsTrainer(SMALL), IMPConfig(iterations=1, conditions=("mask/weights", "random/reinit")), finished)


def test_corrupt_unit_record_names_the_file(finished):
    js = finished / "seed_0" / "iter_001" / "random-reinit.json"
    js.write_text("{not json")
    with pytest.raises(CorruptCheckpointError, match="random-reinit.json"):
        run_imp(DigitsTrainer(SMALL), IMPConfig(iterations=1, conditions=("mask/weights", "random/reinit")), finished)


def test_corrupt_rewind_checkpoint_names_the_file(finished):
    (finished / "seed_0" / "rewind.pt").write_bytes(b"garbage")
    with pytest.raises(CorruptCheckpointError, match="rewind.pt"):
        run_imp(DigitsTrainer(SMALL), IMPConfig(iterations=1, conditions=("mask/weights", "random/reinit")), finished)


def test_changed_initialisation_is_refused(finished):
    (finished / "seed_0" / "iter_001" / "random-reinit.json").unlink()
    path = finished / "seed_0" / "iter_000" / "mask-weights.pt"
    saved = torch.load(path, weights_only=True)
    saved["start"]["fc1.weight"][0, 0] += 1.0
    torch.save(saved, path)
    from lottery_fast.imp.store import file_sha256

    marker = json.loads(path.with_suffix(".json").read_text())  # as if written so (the checksum agrees)
    marker["sha256"] = file_sha256(path)
    path.with_suffix(".json").write_text(json.dumps(marker))
    with pytest.raises(RunFolderError, match="mask-weights.pt starts from other weights than trainer.build_model"):
        run_imp(DigitsTrainer(SMALL), IMPConfig(iterations=1, conditions=("mask/weights", "random/reinit")), finished)


def test_corrupt_config_names_the_file(finished):
    (finished / "config.json").write_text("{")
    with pytest.raises(CorruptCheckpointError, match="config.json"):
        run_imp(DigitsTrainer(SMALL), IMPConfig(iterations=1, conditions=("mask/weights", "random/reinit")), finished)


@pytest.mark.parametrize("trainer_cfg, imp_cfg, key", [
    (SMALL, IMPConfig(iterations=2, conditions=("mask/weights", "random/reinit")), "imp.iterations"),
    (DigitsConfig(hidden=(24, 16), epochs=2, batch_size=128, lr=2e-2),
     IMPConfig(iterations=1, conditions=("mask/weights", "random/reinit")), "trainer.config.lr"),
    (SMALL, IMPConfig(iterations=1, conditions=("mask/weights", "random/reinit"), rewind_step=3), "imp.rewind_step"),
])
def test_mismatched_config_is_refused_then_overwrite_starts_over(finished, trainer_cfg, imp_cfg, key):
    before = sorted(p.name for p in finished.rglob("*"))
    with pytest.raises(ConfigMismatchError, match=f"config.json.*{key}"):
        run_imp(DigitsTrainer(trainer_cfg), imp_cfg, finished)
    assert sorted(p.name for p in finished.rglob("*")) == before  # nothing touched
    res = run_imp(DigitsTrainer(trainer_cfg), imp_cfg, finished, overwrite=True)
    stored = json.loads((finished / "config.json").read_text())["experiment"]
    assert stored["imp"]["iterations"] == imp_cfg.iterations and stored["trainer"]["config"]["lr"] == trainer_cfg.lr
    assert len(res.rows) == 1 + imp_cfg.iterations * 2


def test_run_files_without_config_are_refused(finished):
    (finished / "config.json").unlink()
    with pytest.raises(RunFolderError, match="no config.json"):
        run_imp(DigitsTrainer(SMALL), IMPConfig(iterations=1, conditions=("mask/weights", "random/reinit")), finished)


def test_overwrite_keeps_unrelated_files(finished):
    (finished / "notes.txt").write_text("mine")
    run_imp(DigitsTrainer(SMALL), IMPConfig(iterations=0), finished, overwrite=True)
    assert (finished / "notes.txt").read_text() == "mine"
    assert not (finished / "seed_0" / "iter_001").exists()


def test_config_json_records_versions_and_resolved_exclude(finished):
    stored = json.loads((finished / "config.json").read_text())
    assert set(stored["versions"]) == {"python", "torch", "numpy", "lottery_fast"}
    assert stored["experiment"]["imp"]["exclude"] == [] and stored["experiment"]["imp"]["prune"]["exclude"] == []
    assert stored["experiment"]["trainer"]["name"] == "digits"


# -- issue 19 items 3, 7, 8: checksums, advice that keeps finished work, a held folder ----------
COND2 = IMPConfig(iterations=1, conditions=("mask/weights", "random/reinit"))


def _flip_tensor_bytes(pt: Path) -> None:
    """Change a float inside the checkpoint so that it still loads (a silent corruption)."""
    obj = torch.load(pt, weights_only=True)
    data = bytearray(pt.read_bytes())
    target = obj["start"]["fc1.weight"].reshape(-1)[:4].numpy().tobytes()
    at = bytes(data).find(target)
    assert at > 0
    data[at + 1] ^= 0xFF
    pt.write_bytes(bytes(data))
    torch.load(pt, weights_only=True)  # still readable: only the checksum can tell


def test_flipped_bytes_inside_a_tensor_are_caught_and_the_advice_redoes_one_unit(finished):
    reference = _deterministic(load_results(finished))
    pt = finished / "seed_0" / "iter_001" / "random-reinit.pt"
    _flip_tensor_bytes(pt)
    with pytest.raises(CorruptCheckpointError, match="random-reinit.pt does not match the checksum") as e:
        run_imp(DigitsTrainer(SMALL), COND2, finished)
    assert "overwrite" not in str(e.value) and "redo just that unit" in str(e.value)
    pt.with_suffix(".json").unlink()  # the advice: delete the record and the checkpoint
    pt.unlink()
    events = []
    rows = run_imp(DigitsTrainer(SMALL), COND2, finished, on_progress=events.append).rows
    assert len([e for e in events if e.kind == "unit_start"]) == 1
    assert _deterministic(rows) == reference


def test_corrupt_rewind_advice_redoes_round_zero_only(finished):
    reference = _deterministic(load_results(finished))
    rewind = finished / "seed_0" / "rewind.pt"
    rewind.write_bytes(b"garbage")
    with pytest.raises(CorruptCheckpointError, match="rewind.pt") as e:
        run_imp(DigitsTrainer(SMALL), COND2, finished)
    assert "overwrite" not in str(e.value) and "round 0 of seed 0" in str(e.value)
    for path in ("iter_000/mask-weights.json", "iter_000/mask-weights.pt"):
        (finished / "seed_0" / path).unlink()
    events = []
    rows = run_imp(DigitsTrainer(SMALL), COND2, finished, on_progress=events.append).rows
    assert len([e for e in events if e.kind == "unit_start"]) == 1
    assert _deterministic(rows) == reference


def test_a_second_run_on_a_held_folder_stops_before_touching_it(finished):
    from lottery_fast.imp import FolderBusyError
    from lottery_fast.imp.store import RunFolder

    (finished / "seed_0" / "iter_001" / "random-reinit.json").unlink()  # work left for a second command
    before = {p: p.stat().st_mtime_ns for p in finished.rglob("*") if not p.name.startswith(".seed_")}
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from lottery_fast.imp.store import RunFolder
        with RunFolder(Path(sys.argv[1])).hold([0]):
            print("held", flush=True)
            time.sleep(60)
    """), str(finished)], env={**os.environ, "PYTHONPATH": str(PACKAGE_PARENT)}, stdout=subprocess.PIPE,
        text=True, cwd=str(finished.parent))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusyError, match=f"seed 0 of run folder .* is being run by pid {holder.pid}"):
            run_imp(DigitsTrainer(SMALL), COND2, finished)
        with pytest.raises(FolderBusyError):
            RunFolder(finished).clear()  # --overwrite cannot delete a running seed's work either
        assert {p: p.stat().st_mtime_ns for p in finished.rglob("*") if not p.name.startswith(".seed_")} == before
    finally:
        holder.kill()
        holder.wait()
    # the holder died: the kernel released its lock, and the same command resumes
    assert len(run_imp(DigitsTrainer(SMALL), COND2, finished).rows) == 3


def test_an_option_added_later_resumes_older_folders_only_at_its_legacy_value(finished):
    stored = json.loads((finished / "config.json").read_text())
    del stored["experiment"]["imp"]["random_pool"]  # a folder written before the option existed
    (finished / "config.json").write_text(json.dumps(stored))
    with pytest.raises(ConfigMismatchError, match="imp.random_pool: None -> 'groups'"):
        run_imp(DigitsTrainer(SMALL), COND2, finished)  # the default changed what random/reinit does
    import dataclasses

    rows = run_imp(DigitsTrainer(SMALL), dataclasses.replace(COND2, random_pool="all"), finished).rows
    assert len(rows) == 3
