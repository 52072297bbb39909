"""The run folder on disk: config.json, results.csv, and one checkpoint per finished unit.

Layout (``<c>`` is a condition with "/" written as "-", e.g. ``mask-weights``)::

    config.json                           resolved experiment + library versions
    results.csv                           rebuilt from the unit records after every unit
    seed_<s>/rewind.pt                    {"state": state_dict, "step": k}: what IMP rewinds to
    seed_<s>/iter_<iii>/<c>.pt            {"masks", "start"[, "final"]}: the unit's masks (prunable
                                          layers), weights it started from, weights it ended with
    seed_<s>/iter_<iii>/<c>.json          the unit's results record and the sha256 of its .pt,
                                          written last: its presence marks the unit finished
    seed_<s>/rewind.json                  the sha256 of rewind.pt
    .seed_<s>.lock                        held (flock) by the process running seed s; names it

Everything is written atomically, so a killed run leaves finished units intact and nothing
half-written; a resumed run validates every finished unit first (its checksum too) and refuses,
naming the file and how to redo just that unit, rather than redo or overwrite finished work it cannot
read. A process running a seed holds that seed's lock for the whole run, so a second command on the
same folder stops at once instead of redoing (and overwriting) the first one's work.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from .._atomic import atomic_write, atomic_write_text, exclusive
from .._version import __version__
from .results import RESULTS_FILE, flat_row, write_results_csv

CONFIG_FILE = "config.json"
FORMAT_VERSION = 1
_SEED_DIR = re.compile(r"^seed_(\d+)$")
_ITER_DIR = re.compile(r"^iter_(\d{3,})$")
_LOCK_FILE = re.compile(r"^\.seed_(\d+)\.lock$")

UnitKey = Tuple[int, int, str]  # (run seed, iteration, condition)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(path: Path, obj: Mapping[str, Any]) -> str:
    """``torch.save`` of tensors and plain containers, loadable with ``weights_only=True``; returns
    the sha256 of the bytes written (taken from the file before it is renamed into place)."""
    digest = {}

    def write(tmp: Path) -> None:
        torch.save(dict(obj), tmp)
        digest["sha256"] = file_sha256(tmp)

    atomic_write(path, write)
    return digest["sha256"]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def remove_stale_temp_files(root: Path, seeds: Optional[Sequence[int]] = None) -> None:
    """Delete the temp files a killed writer left (``_atomic`` names them ``.<name>.<random>.tmp``).

    With ``seeds``, only in those seeds' folders: other processes may be writing the rest.
    """
    if seeds is None:
        for name in (CONFIG_FILE, RESULTS_FILE):
            for tmp in root.glob(f".{name}.*.tmp"):
                tmp.unlink()
    for sdir in root.iterdir():
        m = _SEED_DIR.match(sdir.name)
        if m and sdir.is_dir() and (seeds is None or int(m.group(1)) in seeds):
            for tmp in sdir.rglob(".*.tmp"):
                if tmp.is_file():
                    tmp.unlink()


class RunFolderError(RuntimeError):
    """A run folder cannot be used as asked; the message names the file and what to do."""


class CorruptCheckpointError(RunFolderError):
    pass


class FolderBusyError(RunFolderError):
    """Another process is running (some of) the same seeds in this run folder."""


class ConfigMismatchError(RunFolderError):
    pass


def condition_slug(condition: str) -> str:
    return condition.replace("/", "-")


def versions() -> Dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "lottery_fast": __version__}


#: Options added after run folders were first written, by the trailing part of their dotted path,
#: with the value that names what runs made before the option existed did. A stored config without
#: the key matches a new config holding exactly that value (so an older folder resumes), and nothing
#: else: when a new default changes behaviour (random/reinit's pool), old folders are refused.
LEGACY_VALUES: Dict[str, Any] = {
    "imp.random_pool": "all",
    "network.init": "orthogonal",
    "network.image_torso": "conv",
}


def _legacy_match(path: str, new: Any) -> bool:
    return any((path == k or path.endswith("." + k)) and new == v for k, v in LEGACY_VALUES.items())


def _diff(old: Any, new: Any, prefix: str = "") -> List[str]:
    """Dotted paths where two JSON values differ (keys the stored side lacks: see LEGACY_VALUES)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: List[str] = []
        for key in sorted(set(old) | set(new)):
            path = f"{prefix}{key}"
            if key not in old and _legacy_match(path, new[key]):
                continue
            out += _diff(old.get(key), new.get(key), path + ".")
        return out
    return [] if old == new else [f"{prefix[:-1] or '<root>'}: {old!r} -> {new!r}"]


def _torch_load(path: Path, redo: str, sha256: Optional[str] = None) -> Any:
    """``torch.load`` of a checkpoint, checked against its recorded ``sha256`` when there is one;
    ``redo`` is the advice (which keeps every other finished unit) when it cannot be used."""
    if sha256 is not None and file_sha256(path) != sha256:
        raise CorruptCheckpointError(f"checkpoint {path} does not match the checksum recorded when it was "
                                     f"written (its bytes changed); {redo}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling raises many types; all mean the same thing here
        raise CorruptCheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); {redo}") from None


def _check_tensor_dict(obj: Any, path: Path, key: str) -> Dict[str, torch.Tensor]:
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CorruptCheckpointError(f"checkpoint {path}: {key!r} is not a dict of tensors")
    return obj


def _recorded_sha256(marker: Path) -> Optional[str]:
    """The checksum a unit record or rewind marker holds (None: none, as in folders written before
    checksums were recorded, or a rewind written just before a crash)."""
    try:
        value = json.loads(marker.read_text(encoding="utf-8")).get("sha256")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


class RunFolder:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- paths -------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def results_path(self) -> Path:
        return self.root / RESULTS_FILE

    def seed_dir(self, seed: int) -> Path:
        return self.root / f"seed_{seed}"

    def rewind_path(self, seed: int) -> Path:
        return self.seed_dir(seed) / "rewind.pt"

    def unit_stem(self, seed: int, iteration: int, condition: str) -> Path:
        return self.seed_dir(seed) / f"iter_{iteration:03d}" / condition_slug(condition)

    # -- config ------------------------------------------------------------------------------
    def prepare(self, experiment: Mapping[str, Any], overwrite: bool,
                seeds: Optional[Sequence[int]] = None, inputs: Optional[Mapping[str, Any]] = None) -> bool:
        """Make the folder ready for ``experiment``; True when it resumes an existing run.

        ``seeds``: this process runs only those seeds and leaves the other seeds' files alone.
        ``inputs``: the trainer's observation/channel names, recorded beside the experiment (not
        compared on resume: folders written before they were recorded resume as they are).

        Raises :class:`ConfigMismatchError` if the folder holds another experiment, and
        :class:`RunFolderError` if it holds run files without a readable config.
        """
        if self.root.exists() and not self.root.is_dir():
            raise RunFolderError(f"run folder {self.root} exists and is not a directory")
        if overwrite:
            self._clear()  # run_imp holds this run's seeds already
        self.root.mkdir(parents=True, exist_ok=True)
        # processes starting other seeds of this run at the same moment: one writes config.json,
        # the others check against it (without the lock one could see another's seed folder first)
        with exclusive(self.config_path):
            return self._check_or_write_config(experiment, seeds, inputs)

    def _check_or_write_config(self, experiment: Mapping[str, Any], seeds: Optional[Sequence[int]],
                               inputs: Optional[Mapping[str, Any]] = None) -> bool:
        remove_stale_temp_files(self.root, seeds)
        if self.config_path.exists():
            stored_exp = self.read_experiment()
            diffs = _diff(stored_exp, dict(experiment))
            if diffs:
                raise ConfigMismatchError(
                    f"{self.config_path} was written for a different experiment; differences: "
                    + "; ".join(diffs) + ". Use another output folder, or overwrite=True to start over")
            return True
        leftovers = [p.name for p in self.root.iterdir() if p.name == RESULTS_FILE or _SEED_DIR.match(p.name)]
        if leftovers:
            raise RunFolderError(
                f"{self.root} holds run files {sorted(leftovers)} but no {CONFIG_FILE}, so they cannot be "
                f"checked against this experiment; use another folder or overwrite=True")
        record: Dict[str, Any] = {"format": FORMAT_VERSION, "experiment": dict(experiment)}
        if inputs:
            record["inputs"] = dict(inputs)
        atomic_write_json(self.config_path, {**record, "versions": versions()})
        return False

    def read_inputs(self) -> Optional[Dict[str, Any]]:
        """The observation/channel names config.json recorded (None for folders written before they were)."""
        try:
            inputs = json.loads(self.config_path.read_text(encoding="utf-8")).get("inputs")
        except (OSError, ValueError, AttributeError):
            return None
        return inputs if isinstance(inputs, dict) else None

    def read_experiment(self) -> Dict[str, Any]:
        """The experiment (resolved IMP config and trainer) recorded in config.json."""
        try:
            stored = json.loads(self.config_path.read_text(encoding="utf-8"))
            experiment = stored["experiment"]
            if not isinstance(experiment, dict):
                raise TypeError("'experiment' is not an object")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CorruptCheckpointError(
                f"{self.config_path} cannot be read ({type(e).__name__}: {e}); restore it (a copy of the "
                f"config.json of another run of the same command will do) to resume, or use another output "
                f"folder; overwrite=True would delete every finished unit") from None
        return experiment

    def clear(self) -> None:
        """Remove what a run writes (and nothing else a user may keep in the folder); refuses with
        :class:`FolderBusyError` while another process runs one of the folder's seeds."""
        if not self.root.is_dir():
            return
        seeds = sorted({int(m.group(1)) for p in self.root.iterdir()
                        for m in [_SEED_DIR.match(p.name) or _LOCK_FILE.match(p.name)] if m})
        with self.hold(seeds):
            self._clear()

    def _clear(self) -> None:
        if not self.root.is_dir():
            return
        for p in self.root.iterdir():
            if p.name in (CONFIG_FILE, RESULTS_FILE) and p.is_file():
                p.unlink()
            elif _SEED_DIR.match(p.name) and p.is_dir():
                shutil.rmtree(p)

    # -- units -------------------------------------------------------------------------------
    def save_unit(self, key: UnitKey, masks: Mapping[str, torch.Tensor], start: Mapping[str, torch.Tensor],
                  final: Optional[Mapping[str, torch.Tensor]], record: Mapping[str, Any]) -> None:
        stem = self.unit_stem(*key)
        payload: Dict[str, Any] = {"masks": dict(masks), "start": dict(start)}
        if final is not None:
            payload["final"] = dict(final)
        digest = atomic_torch_save(stem.with_suffix(".pt"), payload)
        atomic_write_json(stem.with_suffix(".json"), {"format": FORMAT_VERSION, "record": dict(record),
                                                      "sha256": digest})

    def _redo_unit(self, key: UnitKey) -> str:
        stem = self.unit_stem(*key)
        return (f"delete {stem.with_suffix('.json')} and {stem.with_suffix('.pt')} to redo just that unit "
                f"(the same command then retrains it, bit for bit, and keeps every other finished unit)")

    def load_unit(self, key: UnitKey, need_final: bool = False) -> Dict[str, Dict[str, torch.Tensor]]:
        """The tensors of a finished unit: ``masks``, ``start`` and (when saved) ``final``."""
        stem = self.unit_stem(*key)
        path = stem.with_suffix(".pt")
        if not path.is_file():
            raise CorruptCheckpointError(f"checkpoint {path} is missing although its unit record exists; "
                                         f"{self._redo_unit(key)}")
        obj = _torch_load(path, self._redo_unit(key), _recorded_sha256(stem.with_suffix(".json")))
        if not isinstance(obj, dict) or "masks" not in obj or "start" not in obj:
            raise CorruptCheckpointError(f"checkpoint {path} lacks 'masks'/'start'; {self._redo_unit(key)}")
        if need_final and "final" not in obj:
            raise CorruptCheckpointError(f"checkpoint {path} lacks the trained weights ('final') IMP needs; "
                                         f"{self._redo_unit(key)}")
        out = {k: _check_tensor_dict(obj[k], path, k) for k in ("masks", "start", "final") if k in obj}
        if any(m.dtype != torch.bool for m in out["masks"].values()):
            raise CorruptCheckpointError(f"checkpoint {path}: masks are not bool tensors; {self._redo_unit(key)}")
        return out

    def save_rewind(self, seed: int, state: Mapping[str, torch.Tensor], step: int) -> None:
        digest = atomic_torch_save(self.rewind_path(seed), {"state": dict(state), "step": torch.tensor(step)})
        atomic_write_json(self.rewind_path(seed).with_suffix(".json"), {"format": FORMAT_VERSION, "sha256": digest})

    def load_rewind(self, seed: int) -> Tuple[Dict[str, torch.Tensor], int]:
        path = self.rewind_path(seed)
        # round 0 writes the rewind point, so redoing round 0 of this seed alone rewrites it
        redo = self._redo_unit((seed, 0, "mask/weights")).replace("redo just that unit", f"redo round 0 of seed {seed}, which rewrites it")
        if not path.is_file():
            raise CorruptCheckpointError(f"rewind checkpoint {path} is missing although round 0 of seed {seed} "
                                         f"is finished; {redo}")
        obj = _torch_load(path, redo, _recorded_sha256(path.with_suffix(".json")))
        if not isinstance(obj, dict) or "state" not in obj or "step" not in obj:
            raise CorruptCheckpointError(f"checkpoint {path} lacks 'state'/'step'; {redo}")
        return _check_tensor_dict(obj["state"], path, "state"), int(obj["step"])

    # -- who runs which seed -----------------------------------------------------------------
    def lock_path(self, seed: int) -> Path:
        return self.root / f".seed_{seed}.lock"

    @contextlib.contextmanager
    def hold(self, seeds: Sequence[int]) -> Iterator[None]:
        """Hold every seed's lock while inside, or raise :class:`FolderBusyError` naming the process
        that runs one of them. Locks are ``flock``s on ``.seed_<s>.lock``, released by the kernel when
        the holder dies, so a killed run never leaves its folder locked; the file only says who holds it."""
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; concurrent runs there duplicate work
            yield
            return
        if self.root.exists() and not self.root.is_dir():
            raise RunFolderError(f"run folder {self.root} exists and is not a directory")
        self.root.mkdir(parents=True, exist_ok=True)
        fds: List[int] = []
        try:
            for seed in seeds:
                path = self.lock_path(seed)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "another process"
                    os.close(fd)
                    raise FolderBusyError(
                        f"seed {seed} of run folder {self.root} is being run by {holder}; wait for it to finish "
                        f"(or stop it) and run the command again, which then resumes, or use another "
                        f"output folder") from None
                fds.append(fd)
                os.ftruncate(fd, 0)
                os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                             f"{time.strftime('%Y-%m-%d %H:%M:%S')} ({' '.join(sys.argv)[:200]})\n".encode())
            yield
        finally:
            for fd in fds:
                os.close(fd)  # releases the lock

    def finished_units(self, seeds, iterations: int, conditions) -> Dict[UnitKey, Dict[str, Any]]:
        """Records of every finished unit, each checked (readable, where it belongs, tensors loadable)."""
        done: Dict[UnitKey, Dict[str, Any]] = {}
        slugs = {condition_slug(c): c for c in conditions}
        for seed in seeds:
            sdir = self.seed_dir(seed)
            if not sdir.is_dir():
                continue
            for idir in sorted(sdir.iterdir()):
                m = _ITER_DIR.match(idir.name)
                if not idir.is_dir() or m is None:
                    continue
                iteration = int(m.group(1))
                for jpath in sorted(idir.glob("*.json")):
                    key = self._check_record_path(jpath, seed, iteration, iterations, slugs)
                    record = self._read_record(jpath, key)
                    self.load_unit(key, need_final=key[2] == "mask/weights")
                    done[key] = record
            if (seed, 0, "mask/weights") in done:
                self.load_rewind(seed)  # written before round 0's record, so it must be readable
        return done

    def _check_record_path(self, jpath: Path, seed: int, iteration: int, iterations: int,
                           slugs: Mapping[str, str]) -> UnitKey:
        condition = slugs.get(jpath.stem)
        if condition is None or iteration > iterations or (iteration == 0 and condition != "mask/weights"):
            raise ConfigMismatchError(
                f"unit record {jpath} does not belong to this experiment (iterations={iterations}, "
                f"conditions={sorted(slugs.values())}); move it out of the run folder, or use another output folder")
        return seed, iteration, condition

    @staticmethod
    def _read_record(jpath: Path, key: UnitKey) -> Dict[str, Any]:
        try:
            record = json.loads(jpath.read_text(encoding="utf-8"))["record"]
            ok = (record["seed"], record["iteration"], record["condition"]) == key
            for name in ("density", "metric", "best_metric", "train_seconds"):
                float(record[name])
            int(record["steps"])
            dict(record["layer_density"]), dict(record["extra"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CorruptCheckpointError(
                f"unit record {jpath} cannot be read ({type(e).__name__}: {e}); delete it and "
                f"{jpath.with_suffix('.pt')} to redo just that unit") from None
        if not ok:
            raise CorruptCheckpointError(f"unit record {jpath} describes another unit than its path ({key})")
        return record

    # -- results -----------------------------------------------------------------------------
    def write_results(self, records: List[Mapping[str, Any]]) -> None:
        write_results_csv(self.results_path, [flat_row(r) for r in records])
