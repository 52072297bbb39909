"""The run folder on disk: config.json, results.csv, and one checkpoint per finished unit.

Layout (``<c>`` is a condition with "/" written as "-", e.g. ``mask-weights``)::

    config.json                           resolved experiment + library versions
    results.csv                           rebuilt from the unit records after every unit
    seed_<s>/rewind.pt                    {"state": state_dict, "step": k}: what IMP rewinds to
    seed_<s>/iter_<iii>/<c>.pt            {"masks", "start"[, "final"]}: the unit's masks (prunable
                                          layers), weights it started from, weights it ended with
    seed_<s>/iter_<iii>/<c>.json          the unit's results record, written last: its presence
                                          marks the unit finished

Everything is written atomically, so a killed run leaves finished units intact and nothing
half-written; a resumed run validates every finished unit first and refuses (naming the file)
rather than redo or overwrite finished work it cannot read.
"""
from __future__ import annotations

import json
import platform
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from .._atomic import atomic_write, atomic_write_text, exclusive
from .._version import __version__
from .results import RESULTS_FILE, flat_row, write_results_csv

CONFIG_FILE = "config.json"
FORMAT_VERSION = 1
_SEED_DIR = re.compile(r"^seed_(\d+)$")
_ITER_DIR = re.compile(r"^iter_(\d{3,})$")

UnitKey = Tuple[int, int, str]  # (run seed, iteration, condition)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(path: Path, obj: Mapping[str, Any]) -> None:
    """``torch.save`` of tensors and plain containers, loadable with ``weights_only=True``."""
    atomic_write(path, lambda tmp: torch.save(dict(obj), tmp))


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


class ConfigMismatchError(RunFolderError):
    pass


def condition_slug(condition: str) -> str:
    return condition.replace("/", "-")


def versions() -> Dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "lottery_fast": __version__}


def _diff(old: Any, new: Any, prefix: str = "") -> List[str]:
    """Dotted paths where two JSON values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: List[str] = []
        for key in sorted(set(old) | set(new)):
            out += _diff(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix[:-1] or '<root>'}: {old!r} -> {new!r}"]


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling raises many types; all mean the same thing here
        raise CorruptCheckpointError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); delete it to redo that unit, "
            f"or rerun with overwrite=True to start the whole run over") from None


def _check_tensor_dict(obj: Any, path: Path, key: str) -> Dict[str, torch.Tensor]:
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CorruptCheckpointError(f"checkpoint {path}: {key!r} is not a dict of tensors")
    return obj


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
            self.clear()
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
                f"{self.config_path} cannot be read ({type(e).__name__}: {e}); rerun with "
                f"overwrite=True to start over") from None
        return experiment

    def clear(self) -> None:
        """Remove what a run writes (and nothing else a user may keep in the folder)."""
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
        atomic_torch_save(stem.with_suffix(".pt"), payload)
        atomic_write_json(stem.with_suffix(".json"), {"format": FORMAT_VERSION, "record": dict(record)})

    def load_unit(self, key: UnitKey, need_final: bool = False) -> Dict[str, Dict[str, torch.Tensor]]:
        """The tensors of a finished unit: ``masks``, ``start`` and (when saved) ``final``."""
        path = self.unit_stem(*key).with_suffix(".pt")
        if not path.is_file():
            raise CorruptCheckpointError(
                f"checkpoint {path} is missing although its unit record exists; delete "
                f"{path.with_suffix('.json')} to redo that unit, or rerun with overwrite=True")
        obj = _torch_load(path)
        if not isinstance(obj, dict) or "masks" not in obj or "start" not in obj:
            raise CorruptCheckpointError(f"checkpoint {path} lacks 'masks'/'start'")
        if need_final and "final" not in obj:
            raise CorruptCheckpointError(f"checkpoint {path} lacks the trained weights ('final') IMP needs")
        out = {k: _check_tensor_dict(obj[k], path, k) for k in ("masks", "start", "final") if k in obj}
        if any(m.dtype != torch.bool for m in out["masks"].values()):
            raise CorruptCheckpointError(f"checkpoint {path}: masks are not bool tensors")
        return out

    def save_rewind(self, seed: int, state: Mapping[str, torch.Tensor], step: int) -> None:
        atomic_torch_save(self.rewind_path(seed), {"state": dict(state), "step": torch.tensor(step)})

    def load_rewind(self, seed: int) -> Tuple[Dict[str, torch.Tensor], int]:
        path = self.rewind_path(seed)
        if not path.is_file():
            raise CorruptCheckpointError(
                f"rewind checkpoint {path} is missing although round 0 of seed {seed} is finished; "
                f"rerun with overwrite=True to start over")
        obj = _torch_load(path)
        if not isinstance(obj, dict) or "state" not in obj or "step" not in obj:
            raise CorruptCheckpointError(f"checkpoint {path} lacks 'state'/'step'")
        return _check_tensor_dict(obj["state"], path, "state"), int(obj["step"])

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
                f"conditions={sorted(slugs.values())}); rerun with overwrite=True to start over")
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
                f"unit record {jpath} cannot be read ({type(e).__name__}: {e}); delete it to redo "
                f"that unit, or rerun with overwrite=True") from None
        if not ok:
            raise CorruptCheckpointError(f"unit record {jpath} describes another unit than its path ({key})")
        return record

    # -- results -----------------------------------------------------------------------------
    def write_results(self, records: List[Mapping[str, Any]]) -> None:
        write_results_csv(self.results_path, [flat_row(r) for r in records])
