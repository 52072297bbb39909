"""Scale-out: the Ray backend runs the local pool's tasks with the same results and survives a killed
worker; tracking writes CleanRL-named scalars without changing results; Ctrl-C and SIGTERM leave a
resumable folder; the live display and the plain lines."""
from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import lottery_fast
from lottery_fast.experiments import Experiment, run_experiment, run_experiments
from lottery_fast.imp.progress import IMPEvent, ProgressLines

PACKAGE_ROOT = str(Path(lottery_fast.__file__).resolve().parents[1])
# 2 seeds x (1 + 2 rounds x 2 conditions) = 10 digits units of about half a second each
IMP = {"iterations": 2, "seeds": 2, "conditions": "mask/weights,random/reinit"}
DIGITS = Experiment("digits", "", None, "digits", {"imp": IMP, "digits": {"epochs": 2}})
CLI_ARGS = ["imp", "--paradigm", "digits", "--iterations", "2", "--seeds", "2", "--conditions",
            "mask/weights,random/reinit", "--set", "digits.epochs=2"]
CLEANRL = ("charts/episodic_return", "charts/learning_rate", "losses/value_loss", "losses/policy_loss",
           "losses/entropy", "losses/approx_kl", "charts/SPS")

#: wall-clock columns of results.csv (the rest is deterministic)
TIMINGS = ("train_seconds", "extra/seconds", "extra/steps_per_s")

pytestmark = pytest.mark.usefixtures("one_thread")


def _rows(folder: Path):
    with open(folder / "results.csv") as f:
        return [{k: v for k, v in r.items() if k not in TIMINGS} for r in csv.DictReader(f)]


def _quiet(line: str) -> None:
    pass


@pytest.fixture(scope="module")
def local_pool_rows(tmp_path_factory):
    """The digits study on the local backend (in this process; the SIGTERM test runs its pool)."""
    out = tmp_path_factory.mktemp("local")
    run_experiments([DIGITS], out, jobs=1, log=_quiet)
    return _rows(out / "digits")


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from lottery_fast.backends.ray_backend import connect

    connect(num_cpus=2, include_dashboard=False, log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": PACKAGE_ROOT, "OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_study_equals_local_pool(tmp_path, ray_instance, local_pool_rows):
    from lottery_fast.backends.ray_backend import RayBackend

    run_experiments([DIGITS], tmp_path, jobs=2, log=_quiet, backend=RayBackend())
    assert _rows(tmp_path / "digits") == local_pool_rows
    assert len(local_pool_rows) == 10


def _ray_task_pids():
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(b"ray::_run_task_in"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds Ray's workers through /proc")
def test_killed_ray_worker_loses_one_unit_and_rerun_finishes(tmp_path, ray_instance, local_pool_rows):
    from lottery_fast.backends.ray_backend import RayBackend

    failure = []

    def study():
        try:  # no retries: the killed task fails the study, as a Ray task out of retries would
            run_experiments([DIGITS], tmp_path, jobs=2, log=_quiet, backend=RayBackend(max_retries=0))
        except BaseException as e:  # noqa: B902 - recorded for the assertion below
            failure.append(e)

    thread = threading.Thread(target=study)
    thread.start()
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("digits/seed_*/iter_*/*.json")) or not _ray_task_pids():
        assert thread.is_alive() and time.monotonic() < deadline, f"no unit finished: {failure}"
        time.sleep(0.02)
    victim = _ray_task_pids()[0]
    os.kill(victim, signal.SIGKILL)
    thread.join(120)
    assert failure, "the study went on although a worker died and retries were off"
    kept = {p: p.stat().st_mtime_ns for p in tmp_path.glob("digits/seed_*/iter_*/*.json")}
    assert 0 < len(kept) < 10

    run_experiments([DIGITS], tmp_path, jobs=2, log=_quiet, backend=RayBackend())
    assert _rows(tmp_path / "digits") == local_pool_rows
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # finished units were not trained again
    assert not list(tmp_path.rglob("*.tmp"))


def _ppo(population: str = "on") -> Experiment:
    ppo = {"total_steps": 2048, "num_envs": 4, "num_steps": 128, "num_evals": 1, "eval_episodes": 2,
           "env_backend": "numpy"}
    imp = {"iterations": 1, "seeds": 1, "conditions": "mask/weights,random/reinit"}
    return Experiment("ppo", "", "CartPole-v1", "ppo", {"imp": imp, "ppo": ppo})


def _scalars(logdir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.parametrize("population", [True, False])
def test_tensorboard_tracking_writes_cleanrl_scalars_and_changes_nothing(tmp_path, population):
    pytest.importorskip("tensorboard")
    exp = _ppo()
    lines = []
    run_experiment(exp, tmp_path / "plain", _quiet, population=population)
    run_experiment(exp, tmp_path / "tracked", lines.append, every_s=0.0, population=population, track="tensorboard")
    assert _rows(tmp_path / "tracked" / "ppo") == _rows(tmp_path / "plain" / "ppo")  # bitwise the same results

    root = tmp_path / "tracked" / "tensorboard" / "ppo"
    runs = sorted(str(p.parent.relative_to(root)) for p in root.rglob("events.out.tfevents.*"))
    assert runs == ["seed0/iter00/mask-weights", "seed0/iter01/mask-weights", "seed0/iter01/random-reinit"]
    for run in runs:
        scalars = _scalars(root / run)
        assert set(CLEANRL) <= set(scalars), sorted(scalars)
        assert len(scalars["charts/SPS"]) == 4  # one per PPO update (2048 steps / 512)
        assert scalars["imp/density"][-1] == pytest.approx(1.0 if run.startswith("seed0/iter00") else 0.8, abs=0.01)
    # the learning rate anneals within each run, from the configured rate
    assert _scalars(root / runs[0])["charts/learning_rate"][0] == pytest.approx(2.5e-4)
    # tracking scalars stay out of the plain progress lines
    train_lines = [line for line in lines if "steps_per_s" in line]
    assert train_lines and not any("losses/" in line or "charts/" in line for line in train_lines)


def test_wandb_offline_tracking(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    from lottery_fast.tracking import Tracker

    tracker = Tracker("wandb", tmp_path, "ppo")
    key = dict(seed=0, iteration=1, condition="mask/weights")
    tracker(IMPEvent("unit_start", 0, 1, 0.0, None, **key))
    tracker(IMPEvent("metrics", 0, 1, 0.0, None, info={"step": 512.0, "charts/SPS": 1e4, "loss": 1.0}, **key))
    tracker(IMPEvent("unit_done", 1, 1, 0.0, None, density=0.8, metric=1.0, best_metric=2.0, **key))
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def _cli(args, cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in (PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")) if p))
    return subprocess.Popen([sys.executable, "-m", "lottery_fast.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("sig, jobs", [(signal.SIGINT, "1"), (signal.SIGTERM, "2")])
def test_signal_leaves_a_resumable_folder(tmp_path, local_pool_rows, sig, jobs):
    args = [*CLI_ARGS, "--jobs", jobs, "--out", str(tmp_path / "run")]
    proc = _cli(args, tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("run/digits/seed_*/iter_*/*.json")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
            time.sleep(0.02)
        proc.send_signal(sig)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=30)
        stopped_s = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    # a couple of seconds on an idle machine; the bound leaves room for a loaded one
    assert stopped_s < 20, f"took {stopped_s:.1f} s to stop"
    assert "units finished" in err and "resume with: lottery-fast imp " in err, err
    assert not list(tmp_path.rglob("*.tmp"))
    assert not (tmp_path / "run" / "digits" / "results.csv").exists() or len(_rows(tmp_path / "run" / "digits")) < 10

    again = _cli(args, tmp_path)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert _rows(tmp_path / "run" / "digits") == local_pool_rows


def test_resume_command_drops_overwrite():
    from lottery_fast.cli import resume_command

    assert resume_command(["imp", "--overwrite", "--out", "a b"]) == "lottery-fast imp --out 'a b'"


def test_live_display_without_tqdm(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name == "tqdm":
            raise ImportError("no tqdm")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    from lottery_fast.live import LiveDisplay

    out = io.StringIO()
    display = LiveDisplay(out)
    display("ppo seed 0", IMPEvent("start", 1, 5, 0.0, None))
    display("ppo seed 1", IMPEvent("start", 0, 5, 0.0, None))
    display("ppo seed 0", IMPEvent("train", 1, 5, 1.0, None, iteration=1, condition="population of 4",
                                   info={"steps_per_s": 12345.0, "train_return": 87.5}))
    display("ppo seed 0", IMPEvent("unit_done", 2, 5, 2.0, 3.0, seed=0, iteration=1, condition="mask/weights",
                                   density=0.8, metric=90.0, best_metric=95.0))
    display.close()
    text = out.getvalue()
    assert "study 2/10 units" in text and "12.3k steps/s return 87.5" in text
    assert "[ppo seed 0] [2/5" in text and "mask/weights" in text


def test_plain_lines_leave_out_tracking_scalars():
    lines = []
    progress = ProgressLines("x", lines.append, every_s=0.0)
    progress(IMPEvent("train", 0, 1, 0.0, None, seed=0, iteration=0, condition="mask/weights",
                      info={"step": 1.0, "losses/value_loss": 2.0}))
    assert lines == ["[x] seed 0 iter 0 mask/weights: step 1"]


def _children(pid: int):
    """Pids whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_workers_die_with_a_killed_parent(tmp_path):
    # SIGKILL reaches no handler of the command: its workers must still go, within seconds
    proc = _cli([*CLI_ARGS, "--jobs", "2", "--set", "digits.epochs=60", "--out", str(tmp_path / "run")], tmp_path)
    try:
        deadline = time.monotonic() + 180
        # a finished unit of each seed: both workers are past their initializer and training
        while len({p.parts[-3] for p in tmp_path.glob("run/digits/seed_*/iter_*/*.json")}) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
            time.sleep(0.05)
        workers = [p for p in _children(proc.pid)
                   if "spawn_main" in (Path("/proc") / str(p) / "cmdline").read_text(errors="replace")]
        assert len(workers) == 2, workers
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 15
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in workers if _alive(p)], "workers outlived their killed parent"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # the killed workers' units are lost, never half-written: the same command finishes the study
    again = _cli([*CLI_ARGS, "--jobs", "2", "--set", "digits.epochs=60", "--out", str(tmp_path / "run")], tmp_path)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    assert len(_rows(tmp_path / "run" / "digits")) == 2 * (1 + 2 * 2)
    assert not list(tmp_path.rglob("*.tmp"))
